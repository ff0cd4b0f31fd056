"""Sentences for the embedded corpus: where the text comes from and how it is cleaned.

Two sources:

* the default, Jane Austen's six novels (public domain), taken from Debian's
  ``r-cran-janeaustenr`` package with ``apt-get download`` + ``dpkg-deb -x`` (no R, no
  root needed) and cached, so the project never commits the text itself;
* any plain-text file (``--text FILE``), for users elsewhere.

Cleaning gives LibriSpeech-style transcripts: upper case, letters and apostrophes only,
single spaces, common abbreviations spelled out as LibriSpeech spells them.
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

from asr.data.synthetic.rdata import read_lazyload_db
from common.errors import KnownError

DEBIAN_PACKAGE = "r-cran-janeaustenr"
_RDX_IN_PACKAGE = "usr/lib/R/site-library/janeaustenr/data/Rdata.rdx"

_ABBREVIATIONS = {"MR": "MISTER", "MRS": "MISSUS", "DR": "DOCTOR", "ST": "SAINT", "COL": "COLONEL"}
_ABBREV_RE = re.compile(r"\b(Mr|Mrs|Dr|St|Col)\b\.?", re.IGNORECASE)
_SENTENCE_END_RE = re.compile(r"(?<=[.!?])[\"'_)\]\u2019\u201d]*\s+")
_ALLOWED_RE = re.compile(r"^[A-Z' ]+$")


class TextSourceError(KnownError, RuntimeError):
    """The sentence source could not be obtained or held too little usable text."""


def fetch_austen(cache_dir: str | Path) -> Path:
    """Download and unpack Debian's ``r-cran-janeaustenr`` once; return its ``Rdata.rdx`` path.

    The package is fetched with ``apt-get download`` (works without root) into
    ``cache_dir`` and unpacked there with ``dpkg-deb -x``; later calls reuse it.
    """
    cache_dir = Path(cache_dir)
    rdx = cache_dir / DEBIAN_PACKAGE / _RDX_IN_PACKAGE
    if rdx.exists():
        return rdx
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise TextSourceError(
                f"'{tool}' is not available to fetch the default text ({DEBIAN_PACKAGE}); "
                "pass any plain-text file instead with --text FILE"
            )
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        result = subprocess.run(["apt-get", "download", DEBIAN_PACKAGE], cwd=tmp, capture_output=True, text=True)
        debs = list(Path(tmp).glob(f"{DEBIAN_PACKAGE}_*.deb"))
        if result.returncode != 0 or not debs:
            raise TextSourceError(
                f"'apt-get download {DEBIAN_PACKAGE}' failed: {result.stderr.strip()[-400:]}\n"
                "Fix: run 'sudo apt-get update' once (the package lists may be missing), "
                "or pass any plain-text file with --text FILE"
            )
        unpacked = Path(tmp) / "unpacked"
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(unpacked)], check=True)
        target = cache_dir / DEBIAN_PACKAGE
        shutil.rmtree(target, ignore_errors=True)
        unpacked.rename(target)
    return rdx


def austen_paragraphs(rdx_path: str | Path) -> list[str]:
    """The novels as paragraphs (blank-line separated lines joined), in book order."""
    books = read_lazyload_db(rdx_path)
    paragraphs: list[str] = []
    for name in sorted(books):
        paragraphs.extend(_join_paragraphs(line or "" for line in books[name]))
    return paragraphs


def text_file_paragraphs(path: str | Path) -> list[str]:
    """Paragraphs of a plain UTF-8 text file (blank lines separate paragraphs)."""
    path = Path(path)
    if not path.is_file():
        raise TextSourceError(f"--text {path}: no such file")
    return _join_paragraphs(path.read_text(encoding="utf-8", errors="replace").splitlines())


def _join_paragraphs(lines: Iterable[str]) -> list[str]:
    paragraphs, current = [], []
    for line in lines:
        if line.strip():
            current.append(line.strip())
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return paragraphs


def normalize(sentence: str) -> str | None:
    """LibriSpeech-style transcript of one sentence, or None if it cannot be spoken cleanly.

    Upper-cases, spells out ``Mr.``/``Mrs.``/``Dr.``/``St.``/``Col.``, turns dashes into
    spaces, drops quotes and punctuation; rejects sentences with digits or other symbols
    (numbers and symbols would be read differently from how they are written).
    """
    text = _ABBREV_RE.sub(lambda m: _ABBREVIATIONS[m.group(1).upper()], sentence)
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
    text = re.sub(r"[-\u2013\u2014]+", " ", text)  # hyphens, en and em dashes
    text = re.sub(r"[\"_,.;:!?()\[\]]", " ", text)
    text = re.sub(r"(^|\s)'+|'+(\s|$)", " ", text)  # quotes, not apostrophes inside words
    text = " ".join(text.upper().split())
    if not text or not _ALLOWED_RE.match(text):
        return None
    return text


def split_sentences(paragraphs: Iterable[str]) -> list[str]:
    """Normalized, de-duplicated sentences in order of first appearance."""
    seen: set[str] = set()
    sentences: list[str] = []
    for paragraph in paragraphs:
        protected = _ABBREV_RE.sub(lambda m: m.group(1), paragraph)  # keep "Mr. Knightley" in one sentence
        for raw in _SENTENCE_END_RE.split(protected):
            text = normalize(raw)
            if text and text not in seen:
                seen.add(text)
                sentences.append(text)
    return sentences


def restrict_vocabulary(sentences: list[str], top_words: int | None) -> tuple[list[str], list[str]]:
    """Keep the sentences whose every word is among the ``top_words`` most frequent words.

    Word counts are taken over all ``sentences``. ``top_words=None`` keeps everything.
    Returns the kept sentences and the allowed vocabulary (most frequent first).
    """
    counts = collections.Counter(word for sentence in sentences for word in sentence.split())
    vocab = [word for word, _ in counts.most_common(top_words)]
    if top_words is None:
        return sentences, vocab
    allowed = set(vocab)
    return [s for s in sentences if all(word in allowed for word in s.split())], vocab


def filter_length(sentences: list[str], min_words: int, max_words: int) -> list[str]:
    """Sentences with ``min_words <= words <= max_words``."""
    return [s for s in sentences if min_words <= len(s.split()) <= max_words]
