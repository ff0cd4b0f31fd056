"""Log-mel features, their on-disk cache, global CMVN and SpecAugment."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from asr.data import features
from asr.data.audio import load_audio
from asr.data.errors import DataError
from asr.data.features import FeatureCache, FeatureConfig, GlobalCMVN, SpecAugment, log_mel

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def audio_files(tiny_corpus, tmp_path) -> list[Path]:
    """Private copies of three corpus files (so their mtime may be changed)."""
    out = []
    for src in sorted((tiny_corpus / "dev").rglob("*.flac"))[:3]:
        out.append(tmp_path / "audio" / src.name)
        out[-1].parent.mkdir(exist_ok=True)
        shutil.copy2(src, out[-1])
    return out


def no_audio_decoding(monkeypatch):
    """From here on, computing features fails: whatever get() returns must come from the cache."""
    def fail(*args, **kwargs):
        raise AssertionError("features were recomputed instead of read from the cache")
    monkeypatch.setattr(features, "load_audio", fail)


def test_log_mel_shape_and_values():
    cfg = FeatureConfig()
    wave = torch.from_numpy(np.random.default_rng(0).uniform(-0.3, 0.3, 16000).astype(np.float32))
    feats = log_mel(wave, cfg)
    assert feats.shape == (1 + (16000 - 400) // 160, 80) and feats.dtype == torch.float32
    assert torch.isfinite(feats).all()
    assert torch.equal(log_mel(wave, cfg), feats)  # no dither: deterministic
    assert log_mel(wave, FeatureConfig(n_mels=40, frame_shift_ms=20.0)).shape == (1 + (16000 - 400) // 320, 40)
    louder = log_mel(wave * 2, cfg)
    assert torch.allclose(louder - feats, torch.full_like(feats, 2 * np.log(2)), atol=1e-3)  # log power


def test_cache_computes_once_then_reads(audio_files, tmp_path, monkeypatch):
    cfg = FeatureConfig()
    cache = FeatureCache(tmp_path / "cache", cfg)
    assert cache.dir == tmp_path / "cache" / cfg.key()
    assert json.loads((cache.dir / "config.json").read_text()) == asdict(cfg)
    first = cache.get(audio_files[0])
    entry = cache.path_for(audio_files[0])
    assert entry.is_file() and entry.parent.parent == cache.dir
    expected = log_mel(load_audio(audio_files[0], 16000), cfg).numpy()
    assert first.dtype == np.float32 and np.array_equal(first, expected)
    assert cache.num_frames(audio_files[0]) == first.shape[0]
    no_audio_decoding(monkeypatch)
    assert np.array_equal(cache.get(audio_files[0]), first)


def test_changed_config_never_reuses_the_cache(audio_files, tmp_path, monkeypatch):
    base = FeatureCache(tmp_path / "cache", FeatureConfig())
    base.get(audio_files[0])
    for change in ({"n_mels": 40}, {"frame_shift_ms": 12.5}, {"preemphasis": 0.0}, {"low_freq": 40.0}):
        cfg = FeatureConfig(**change)
        assert cfg.key() != FeatureConfig().key(), change
        other = FeatureCache(tmp_path / "cache", cfg)
        assert other.dir != base.dir and not other.path_for(audio_files[0]).exists()
    feats = FeatureCache(tmp_path / "cache", FeatureConfig(n_mels=40)).get(audio_files[0])
    assert feats.shape[1] == 40
    assert FeatureConfig(n_mels=80).key() == FeatureConfig().key()  # equal settings, equal key


def test_touched_or_edited_audio_is_recomputed(audio_files, tmp_path):
    cache = FeatureCache(tmp_path / "cache", FeatureConfig())
    path = audio_files[0]
    old_entry, old = cache.path_for(path), cache.get(path)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    touched_entry = cache.path_for(path)
    assert touched_entry != old_entry and not touched_entry.exists()
    # overwrite the file with other audio (here: the second file's)
    samples, rate = sf.read(str(audio_files[1]), dtype="int16")
    sf.write(str(path), samples, rate, subtype="PCM_16")
    new = cache.get(path)
    assert cache.path_for(path) not in (old_entry, touched_entry)
    assert not (new.shape == old.shape and np.array_equal(new, old))
    assert np.array_equal(new, cache.get(audio_files[1]))


def test_missing_audio_file_raises(tmp_path):
    cache = FeatureCache(tmp_path / "cache", FeatureConfig())
    with pytest.raises(DataError, match="gone.flac is missing"):
        cache.get(tmp_path / "gone.flac")


def test_too_short_audio_raises(tmp_path):
    path = tmp_path / "blip.wav"
    sf.write(str(path), np.full(100, 0.1, np.float32), 16000)  # shorter than one 25 ms frame
    with pytest.raises(DataError, match="shorter than one 25.0 ms frame"):
        FeatureCache(tmp_path / "cache", FeatureConfig()).get(path)
    one_frame = tmp_path / "one.wav"
    sf.write(str(one_frame), np.full(400, 0.1, np.float32), 16000)
    assert FeatureCache(tmp_path / "cache", FeatureConfig()).get(one_frame).shape == (1, 80)


def test_precompute_counts_only_what_is_missing(audio_files, tmp_path):
    cache = FeatureCache(tmp_path / "cache", FeatureConfig())
    assert cache.precompute(audio_files, jobs=1, progress=False) == 3
    assert all(cache.path_for(p).exists() for p in audio_files)
    assert cache.precompute(audio_files, jobs=1, progress=False) == 0
    st = audio_files[2].stat()
    os.utime(audio_files[2], ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert cache.precompute(audio_files, jobs=1, progress=False) == 1


def test_precompute_in_worker_processes_matches_serial(tiny_corpus, tmp_path):
    paths = sorted(tiny_corpus.rglob("*.flac"))
    assert len(paths) >= 32  # below 32 files precompute stays in-process
    parallel = FeatureCache(tmp_path / "parallel", FeatureConfig())
    assert parallel.precompute(paths, jobs=2, progress=False) == len(paths)
    serial = FeatureCache(tmp_path / "serial", FeatureConfig())
    for p in paths[::7]:
        assert parallel.path_for(p).exists()
        assert np.array_equal(np.load(parallel.path_for(p)), serial.get(p))


def test_global_cmvn_normalizes_the_fitted_data(tmp_path):
    rng = np.random.default_rng(1)
    scale, offset = rng.uniform(0.5, 5, 80), rng.uniform(-10, 10, 80)
    feats = [(rng.standard_normal((n, 80)) * scale + offset).astype(np.float32) for n in (50, 120, 77)]
    cmvn = GlobalCMVN.fit(feats)
    assert np.allclose(cmvn.mean.numpy(), np.concatenate(feats).mean(axis=0), atol=1e-4)
    normed = torch.cat([cmvn(torch.from_numpy(f)) for f in feats])
    assert torch.allclose(normed.mean(dim=0), torch.zeros(80), atol=1e-4)
    assert torch.allclose(normed.std(dim=0, unbiased=False), torch.ones(80), atol=1e-3)
    cmvn.save(tmp_path / "cmvn.npy")
    loaded = GlobalCMVN.load(tmp_path / "cmvn.npy")
    assert torch.equal(loaded.mean, cmvn.mean) and torch.equal(loaded.std, cmvn.std)
    constant = GlobalCMVN.fit([np.ones((10, 80), np.float32)])
    assert torch.isfinite(constant(torch.ones(3, 80))).all()  # variance floor: no division by zero


def test_spec_augment_masks_time_and_frequency_and_keeps_shape():
    torch.manual_seed(0)
    augment = SpecAugment(freq_masks=2, freq_width=15, time_masks=2, time_width=40, time_ratio=0.05)
    feats = torch.randn(300, 80) + 5.0  # no zeros before masking
    original = feats.clone()
    masked_bins = masked_frames = 0
    for _ in range(5):
        out = augment(feats)
        assert out.shape == feats.shape
        zero = out == 0
        assert zero.any()
        assert torch.equal(out[~zero], feats[~zero])  # masking only zeroes, never alters other cells
        masked_bins += int(zero.all(dim=0).sum())  # whole frequency bins
        masked_frames += int(zero.all(dim=1).sum())  # whole frames
        assert zero.all(dim=1).sum() <= 2 * 0.05 * 300  # time masks capped at 5% of the utterance each
    assert masked_bins > 0 and masked_frames > 0
    assert torch.equal(feats, original)  # the input is not modified in place
