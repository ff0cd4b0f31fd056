"""Corpus validation: every split read, every audio file decoded, statistics per split."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf

from asr.data.corpus import read_split, split_dirs
from asr.data.errors import DataError


@dataclass
class SplitStats:
    """What ``check_corpus`` prints for one split."""

    name: str
    utterances: int = 0
    seconds: float = 0.0
    speakers: set[str] = field(default_factory=set)
    vocabulary: set[str] = field(default_factory=set)
    sample_rates: set[int] = field(default_factory=set)

    @property
    def hours(self) -> float:
        return self.seconds / 3600


def validate_corpus(root: str | Path, splits: list[str] | None = None, decode: bool = True) -> list[SplitStats]:
    """Read ``splits`` (default: every directory under ``root`` meant as a split, see
    :func:`~asr.data.corpus.split_dirs`) and, with ``decode``, decode each file.

    Every split's layout and transcripts are read before any audio is decoded. Raises
    :class:`DataError` at the first problem, naming the file and what is wrong: an empty split
    directory is one, as it is for the data module.
    """
    splits = splits or split_dirs(root)
    if not splits:
        raise DataError(f"no split under {root} holds SPEAKER/CHAPTER/*.trans.txt files; "
                        "is it a LibriSpeech-layout root?")
    utterances = {split: read_split(root, split) for split in splits}
    report = []
    for split, utts in utterances.items():
        stats = SplitStats(split)
        for utt in utts:
            try:
                if decode:
                    samples, rate = sf.read(str(utt.audio_path), dtype="int16", always_2d=True)
                    frames = samples.shape[0]
                else:
                    info = sf.info(str(utt.audio_path))
                    frames, rate = info.frames, info.samplerate
            except (sf.LibsndfileError, RuntimeError, OSError) as err:
                raise DataError(f"cannot decode audio file {utt.audio_path}: {err}") from err
            if frames == 0:
                raise DataError(f"audio file {utt.audio_path} holds no samples")
            stats.utterances += 1
            stats.seconds += frames / rate
            stats.sample_rates.add(rate)
            stats.speakers.add(utt.speaker)
            stats.vocabulary.update(utt.transcript.split())
        report.append(stats)
    return report
