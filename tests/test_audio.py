"""load_audio: any rate and channel count in, mono float32 at the model's rate out; bad files named."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import soundfile as sf
import torch

from asr.data import audio
from asr.data.audio import load_audio
from asr.data.errors import DataError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def fresh_reports(monkeypatch):
    """load_audio reports each unusual rate / channel count once per process: start from none reported."""
    monkeypatch.setattr(audio, "_reported", set())


def tone(seconds: float, rate: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_16khz_mono_is_returned_as_is(tmp_path, caplog):
    path = tmp_path / "a.flac"
    samples = tone(0.5, 16000)
    sf.write(str(path), samples, 16000, subtype="PCM_16")
    with caplog.at_level(logging.WARNING, logger="asr.data.audio"):
        wave = load_audio(path, 16000)
    assert isinstance(wave, torch.Tensor) and wave.dtype == torch.float32 and wave.shape == (8000,)
    assert np.allclose(wave.numpy(), samples, atol=1 / 32768 + 1e-6)
    assert not caplog.records


def test_8khz_file_is_resampled_and_reported_once(tmp_path, caplog):
    paths = []
    for i, seconds in enumerate((0.5, 0.25, 1.0)):
        paths.append(tmp_path / f"low{i}.wav")
        sf.write(str(paths[-1]), tone(seconds, 8000), 8000)
    with caplog.at_level(logging.WARNING, logger="asr.data.audio"):
        waves = [load_audio(p, 16000) for p in paths]
    assert [w.shape[0] for w in waves] == [8000, 4000, 16000]
    assert all(w.dtype == torch.float32 for w in waves)
    spectrum = np.abs(np.fft.rfft(waves[2].numpy()))
    assert abs(np.argmax(spectrum) * 16000 / waves[2].shape[0] - 440) < 2  # still a 440 Hz tone
    rate_warnings = [r for r in caplog.records if "8000 Hz resampled to 16000 Hz" in r.getMessage()]
    assert len(rate_warnings) == 1 and str(paths[0]) in rate_warnings[0].getMessage()


def test_stereo_file_is_mixed_down_and_reported_once(tmp_path, caplog):
    left, right = tone(0.25, 16000, 300), tone(0.25, 16000, 500)
    paths = [tmp_path / "s1.wav", tmp_path / "s2.wav"]
    for p in paths:
        sf.write(str(p), np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    with caplog.at_level(logging.WARNING, logger="asr.data.audio"):
        waves = [load_audio(p, 16000) for p in paths]
    assert waves[0].shape == (4000,)
    assert np.allclose(waves[0].numpy(), (left + right) / 2, atol=1e-6)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "2 channels mixed down to mono" in messages[0]


def test_stereo_8khz_file_gets_both_reports(tmp_path, caplog):
    path = tmp_path / "both.wav"
    sf.write(str(path), np.stack([tone(0.5, 8000)] * 2, axis=1), 8000)
    with caplog.at_level(logging.WARNING, logger="asr.data.audio"):
        wave = load_audio(path, 16000)
    assert wave.shape == (8000,)
    assert len(caplog.records) == 2


def test_corrupt_file_names_the_path(tmp_path):
    path = tmp_path / "broken.flac"
    path.write_bytes(b"fLaC but not really" * 20)
    with pytest.raises(DataError, match=re.escape(f"cannot decode audio file {path}")):
        load_audio(path, 16000)


def test_missing_and_empty_files_name_the_path(tmp_path):
    with pytest.raises(DataError, match=re.escape(f"audio file {tmp_path / 'gone.flac'} not found")):
        load_audio(tmp_path / "gone.flac", 16000)
    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros(0, np.float32), 16000)
    with pytest.raises(DataError, match=re.escape(f"audio file {empty} holds no samples")):
        load_audio(empty, 16000)
