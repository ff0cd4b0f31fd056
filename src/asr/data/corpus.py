"""Reading any corpus in the LibriSpeech layout.

``ROOT/SPLIT/SPEAKER/CHAPTER/SPEAKER-CHAPTER-UTT.flac`` with one ``SPEAKER-CHAPTER.trans.txt``
per chapter holding ``UTT-ID TRANSCRIPT`` lines in UTF-8. Split names are free (``train-clean-100``,
``dev-clean``, ``test-other`` or the embedded corpus's ``train``/``dev``/``test``).
Reading a split checks the layout and the transcripts; decoding every file is left to
``scripts/check_corpus.py`` and to feature extraction, which both name a bad file.

Transcripts are brought into the LibriSpeech form (upper-case letters, apostrophes, single
spaces; see :func:`normalize_transcript`) here, where every consumer reads them: the tokenizer
is trained on, and WER is scored against, the same normalized text. A file with lines that
needed it gets one warning naming the file and how many lines changed.
"""

from __future__ import annotations

import logging
import os
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from asr.data.errors import DataError

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".flac", ".wav")
TRANSCRIPT_SUFFIX = ".trans.txt"
# The directory the embedded corpus's tokenizer is saved in (conf/data/synthetic.yaml: data.tokenizer.dir),
# beside the splits but not one of them.
TOKENIZER_DIR = "tokenizer"
_APOSTROPHES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u02bc": "'"})
_WORD = r"[A-Z0-9']*[A-Z0-9][A-Z0-9']*"
_NORMAL_FORM = re.compile(f"{_WORD}( {_WORD})*")  # what normalize_transcript leaves as it is (the fast path)
_warned: set[tuple[str, int, int]] = set()  # (file, size, mtime) already warned about in this process


@dataclass(frozen=True)
class Utterance:
    """One utterance: its id, speaker, chapter, audio file and normalized upper-case transcript."""

    utt_id: str
    speaker: str
    chapter: str
    audio_path: Path
    transcript: str


def normalize_transcript(text: str) -> str:
    """``text`` in the LibriSpeech form: upper case, typographic apostrophes made ``'``, every other
    character that is neither a letter nor a digit (punctuation, symbols, control characters) made a
    space, words of apostrophes only dropped, single spaces. Text already in that form comes back as it is.

    Digits are kept as written (LibriSpeech spells numbers out; a corpus with digits teaches them as such).
    """
    if _NORMAL_FORM.fullmatch(text):
        return text
    text = unicodedata.normalize("NFC", unicodedata.normalize("NFC", text).translate(_APOSTROPHES).upper())
    words = "".join(ch if ch.isalnum() or ch == "'" else " " for ch in text).split()
    return " ".join(w for w in words if w.strip("'"))


def split_list(splits: str | Sequence[str], key: str = "data.train_split") -> list[str]:
    """``splits`` (one name or a sequence of them, e.g. the data config's ``train_split``) as a list of names;
    an empty list or a name given twice raises :class:`DataError` naming ``key``."""
    if not isinstance(splits, str | Sequence) or not all(isinstance(s, str) for s in splits):
        raise DataError(f"{key}={splits!r} is neither a split name nor a list of them. Fix: give {key}=NAME or "
                        f"{key}=[NAME,NAME]")
    names = [splits] if isinstance(splits, str) else list(splits)
    if not names:
        raise DataError(f"{key} is an empty list. Fix: name at least one split")
    repeated = sorted({s for s in names if names.count(s) > 1})
    if repeated:
        raise DataError(f"{key} names {', '.join(repeated)} more than once. Fix: name each split once")
    return names


def check_root(root: str | Path) -> Path:
    """The corpus root as a ``Path``; a missing or empty root raises :class:`DataError`."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"corpus root {root} does not exist. Fix: build the embedded corpus with 'make data', "
                        "or point data.root at a LibriSpeech-layout directory")
    if not any(root.iterdir()):
        raise DataError(f"corpus root {root} is empty. Fix: build the embedded corpus with 'make data', "
                        "or point data.root at a LibriSpeech-layout directory")
    return root


def list_splits(root: str | Path) -> list[str]:
    """Names of the split directories under ``root`` that hold at least one transcript file."""
    root = check_root(root)
    return sorted(p.name for p in root.iterdir() if p.is_dir() and next(p.glob(f"*/*/*{TRANSCRIPT_SUFFIX}"), None))


def split_dirs(root: str | Path) -> list[str]:
    """Names of the directories under ``root`` meant as splits, whether or not they are usable.

    That is every directory except hidden ones, ``tokenizer`` and any that holds files of which none
    is audio or a transcript (a tokenizer or a cache saved beside the splits). An empty directory,
    or one with empty sub-directories, counts: :func:`read_split` then says what is missing.
    """
    root = check_root(root)
    return sorted(p.name for p in root.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and p.name != TOKENIZER_DIR and _may_be_split(p))


def _may_be_split(directory: Path) -> bool:
    any_file = False
    for _, _, files in os.walk(directory):
        for name in files:
            if name.endswith(TRANSCRIPT_SUFFIX) or os.path.splitext(name)[1].lower() in AUDIO_EXTENSIONS:
                return True
            any_file = True
    return not any_file


def read_split(root: str | Path, split: str) -> list[Utterance]:
    """All utterances of ``split``, sorted by id, after checking layout and transcripts.

    Raises :class:`DataError` naming the file for: a missing or empty split, a transcript file
    that is not UTF-8, a malformed or empty transcript line, a transcript line whose audio file
    is missing, and an audio file that no transcript line names.
    """
    root = check_root(root)
    split_dir = root / split
    if not split_dir.is_dir():
        available = list_splits(root)
        raise DataError(f"split directory {split_dir} not found (found: {', '.join(available) or 'none'}). "
                        f"Fix: put split '{split}' there in the LibriSpeech layout (data.download=true fetches "
                        "LibriSpeech's own splits), or correct the split names in the data config (data.train_split, "
                        "data.dev_splits, data.test_splits)")
    if not any(split_dir.iterdir()):
        raise DataError(f"split directory {split_dir} is empty. Fix: put the split's SPEAKER/CHAPTER directories "
                        "in it, or remove the directory (and the split from the data config)")
    utterances: list[Utterance] = []
    trans_files = sorted(split_dir.glob(f"*/*/*{TRANSCRIPT_SUFFIX}"))
    if not trans_files:
        raise DataError(f"split directory {split_dir} holds no SPEAKER/CHAPTER/*.trans.txt files. "
                        "Fix: check that it is in the LibriSpeech layout")
    for trans_file in trans_files:
        utterances.extend(_read_chapter(trans_file))
    return sorted(utterances, key=lambda u: u.utt_id)


def _read_lines(trans_file: Path) -> list[str]:
    """The lines of a UTF-8 transcript file (a byte-order mark is allowed); other bytes raise :class:`DataError`
    naming the line."""
    raw = trans_file.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line_no = raw.count(b"\n", 0, err.start) + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        raise DataError(f"{trans_file}:{line_no}: byte 0x{raw[err.start]:02x} (byte {column} of the line) is not "
                        "UTF-8. Fix: re-encode the file as UTF-8 (e.g. 'iconv -f LATIN1 -t UTF-8' for Latin-1 text)"
                        ) from None
    return text.removeprefix("\ufeff").split("\n")


def _read_chapter(trans_file: Path) -> list[Utterance]:
    chapter_dir = trans_file.parent
    speaker, chapter = chapter_dir.parent.name, chapter_dir.name
    audio = {p.stem: p for p in chapter_dir.iterdir() if p.suffix.lower() in AUDIO_EXTENSIONS}
    utterances = []
    seen: set[str] = set()
    changed: list[tuple[int, str, str]] = []  # (line number, as written, normalized)
    for line_no, line in enumerate(_read_lines(trans_file), start=1):
        if not line.strip():
            continue
        utt_id, *rest = line.split(None, 1)
        written = " ".join(rest[0].split()) if rest else ""
        where = f"{trans_file}:{line_no}"
        if not written:
            raise DataError(f"{where}: empty transcript for utterance '{utt_id}'. Fix: write its text after the id, "
                            "or remove the line and its audio file")
        transcript = normalize_transcript(written)
        if not transcript:
            raise DataError(f"{where}: transcript {written!r} of utterance '{utt_id}' has no letters or digits and "
                            "is empty once normalized. Fix: write its words after the id, or remove the line and "
                            "its audio file")
        if transcript != written:
            changed.append((line_no, written, transcript))
        if not utt_id.startswith(f"{speaker}-{chapter}-"):
            raise DataError(f"{where}: utterance id '{utt_id}' does not start with '{speaker}-{chapter}-' "
                            "as the LibriSpeech layout requires")
        if utt_id in seen:
            raise DataError(f"{where}: utterance id '{utt_id}' appears twice. Fix: keep one line per utterance")
        seen.add(utt_id)
        path = audio.pop(utt_id, None)
        if path is None:
            raise DataError(f"{where}: no audio file {chapter_dir / (utt_id + '.flac')} for utterance '{utt_id}'. "
                            "Fix: restore the audio or remove the transcript line")
        utterances.append(Utterance(utt_id, speaker, chapter, path, transcript))
    if audio:
        orphan = sorted(audio.values())[0]
        raise DataError(f"audio file {orphan} has no line in {trans_file}. "
                        "Fix: add its transcript line or remove the file")
    if changed:
        _warn_normalized(trans_file, changed, len(utterances))
    return utterances


def _warn_normalized(trans_file: Path, changed: list[tuple[int, str, str]], lines: int) -> None:
    """One warning per transcript file (and per version of it) in a process, however often it is read."""
    stat = trans_file.stat()
    key = (str(trans_file.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _warned:
        return
    _warned.add(key)
    line_no, written, transcript = changed[0]
    log.warning("%s: %d of %d transcript lines normalized to the LibriSpeech form (upper case, no punctuation but "
                "apostrophes), e.g. line %d %r -> %r; the tokenizer and the WER references use the normalized text. "
                "Fix: none needed; write the file in that form to silence this",
                trans_file, len(changed), lines, line_no, written, transcript)
