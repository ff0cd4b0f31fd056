"""Corpus validation: every split read, every audio file decoded, statistics per split."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf

from asr.data.corpus import Utterance, read_split, split_dirs
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


def validate_corpus(root: str | Path, splits: list[str] | None = None, decode: bool = True,
                    lhotse_prefix: str | None = None, lhotse_suffix: str = "jsonl.gz") -> list[SplitStats]:
    """Read ``splits`` (default: every directory under ``root`` meant as a split, see
    :func:`~asr.data.corpus.split_dirs`) and, with ``decode``, decode each file.

    With ``lhotse_prefix``, ``root`` is a directory of Lhotse manifests named with that prefix and suffix
    (:mod:`asr.data.lhotse_manifests`), and the default splits are those it holds manifests of.
    Every split's layout (or manifests) and transcripts are read before any audio is decoded. Raises
    :class:`DataError` at the first problem, naming the file and what is wrong: an empty split
    directory is one, as it is for the data module.
    """
    if lhotse_prefix is not None:
        from asr.data.lhotse_manifests import lhotse_splits, read_lhotse_split

        splits = splits or lhotse_splits(root, lhotse_prefix, lhotse_suffix)
        if not splits:
            raise DataError(f"no Lhotse manifests named {lhotse_prefix}_{{recordings,supervisions,cuts}}_SPLIT."
                            f"{lhotse_suffix} in {root}. Fix: check the directory, the prefix and the suffix")
        utterances = {split: read_lhotse_split(root, split, lhotse_prefix, lhotse_suffix) for split in splits}
        return _statistics(utterances, decode)
    splits = splits or split_dirs(root)
    if not splits:
        raise DataError(f"no split under {root} holds SPEAKER/CHAPTER/*.trans.txt files; "
                        "is it a LibriSpeech-layout root?")
    return _statistics({split: read_split(root, split) for split in splits}, decode)


def _statistics(utterances: dict[str, list[Utterance]], decode: bool) -> list[SplitStats]:
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
