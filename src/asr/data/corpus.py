"""Reading any corpus in the LibriSpeech layout.

``ROOT/SPLIT/SPEAKER/CHAPTER/SPEAKER-CHAPTER-UTT.flac`` with one ``SPEAKER-CHAPTER.trans.txt``
per chapter holding ``UTT-ID TRANSCRIPT`` lines. Split names are free (``train-clean-100``,
``dev-clean``, ``test-other`` or the embedded corpus's ``train``/``dev``/``test``).
Reading a split checks the layout and the transcripts; decoding every file is left to
``scripts/check_corpus.py`` and to feature extraction, which both name a bad file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from asr.data.errors import DataError

AUDIO_EXTENSIONS = (".flac", ".wav")


@dataclass(frozen=True)
class Utterance:
    """One utterance: its id, speaker, chapter, audio file and upper-case transcript."""

    utt_id: str
    speaker: str
    chapter: str
    audio_path: Path
    transcript: str


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
    return sorted(p.name for p in root.iterdir() if p.is_dir() and next(p.glob("*/*/*.trans.txt"), None))


def read_split(root: str | Path, split: str) -> list[Utterance]:
    """All utterances of ``split``, sorted by id, after checking layout and transcripts.

    Raises :class:`DataError` naming the file for: a missing split, a malformed or empty
    transcript line, a transcript line whose audio file is missing, and an audio file that
    no transcript line names.
    """
    root = check_root(root)
    split_dir = root / split
    if not split_dir.is_dir():
        available = list_splits(root)
        raise DataError(f"split '{split}' not found under {root} (found: {', '.join(available) or 'none'}). "
                        "Fix: correct the split names in the data config (data.train_split, data.dev_splits, "
                        "data.test_splits)")
    utterances: list[Utterance] = []
    trans_files = sorted(split_dir.glob("*/*/*.trans.txt"))
    if not trans_files:
        raise DataError(f"split directory {split_dir} holds no SPEAKER/CHAPTER/*.trans.txt files. "
                        "Fix: check that it is in the LibriSpeech layout")
    for trans_file in trans_files:
        utterances.extend(_read_chapter(trans_file))
    return sorted(utterances, key=lambda u: u.utt_id)


def _read_chapter(trans_file: Path) -> list[Utterance]:
    chapter_dir = trans_file.parent
    speaker, chapter = chapter_dir.parent.name, chapter_dir.name
    audio = {p.stem: p for p in chapter_dir.iterdir() if p.suffix.lower() in AUDIO_EXTENSIONS}
    utterances = []
    seen: set[str] = set()
    for line_no, line in enumerate(trans_file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        utt_id, _, transcript = line.strip().partition(" ")
        transcript = " ".join(transcript.split())
        where = f"{trans_file}:{line_no}"
        if not transcript:
            raise DataError(f"{where}: empty transcript for utterance '{utt_id}'. Fix: write its text after the id, "
                            "or remove the line and its audio file")
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
        utterances.append(Utterance(utt_id, speaker, chapter, path, transcript.upper()))
    if audio:
        orphan = sorted(audio.values())[0]
        raise DataError(f"audio file {orphan} has no line in {trans_file}. "
                        "Fix: add its transcript line or remove the file")
    return utterances
