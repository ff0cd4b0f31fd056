"""Reading audio files as mono float waveforms at the model's sample rate."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

from asr.data.errors import DataError

log = logging.getLogger(__name__)
_reported: set[tuple[str, int]] = set()


def _once(kind: str, value: int, message: str) -> None:
    if (kind, value) not in _reported:
        _reported.add((kind, value))
        log.warning(message)


def load_audio(path: str | Path, sample_rate: int) -> torch.Tensor:
    """Decode ``path`` and return a float32 waveform of shape ``(num_samples,)`` at ``sample_rate``.

    Several channels are averaged to mono and another sample rate is resampled; each is
    reported once per process. A file that cannot be decoded or holds no samples raises
    :class:`DataError` naming the file.
    """
    if not Path(path).is_file():
        raise DataError(f"audio file {path} not found")
    try:
        samples, file_rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as err:
        raise DataError(f"cannot decode audio file {path}: {err}. Fix: re-create or remove it "
                        "(and its transcript line)") from err
    if samples.shape[0] == 0:
        raise DataError(f"audio file {path} holds no samples. Fix: re-create or remove it (and its transcript line)")
    if samples.shape[1] > 1:
        _once("channels", samples.shape[1], f"{path}: {samples.shape[1]} channels mixed down to mono "
              "(reported once for all such files)")
    wave = torch.from_numpy(np.ascontiguousarray(samples.mean(axis=1)))
    if file_rate != sample_rate:
        _once("rate", file_rate, f"{path}: sample rate {file_rate} Hz resampled to {sample_rate} Hz "
              f"(reported once for all {file_rate} Hz files)")
        wave = torchaudio.functional.resample(wave, file_rate, sample_rate)
    return wave
