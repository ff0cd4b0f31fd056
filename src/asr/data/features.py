"""Acoustic features: log-mel filterbanks, their on-disk cache, global CMVN and SpecAugment.

The cache is keyed twice: a directory per feature configuration (a hash of every setting,
so a changed config never reuses a stale cache) and a file per audio file (a hash of its
resolved path, size and modification time, so an edited file is recomputed).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torchaudio
from tqdm import tqdm

from asr.data.audio import load_audio
from asr.data.errors import DataError
from common.atomic import save_atomic, write_text_atomic


@dataclass(frozen=True)
class FeatureConfig:
    """Kaldi-compatible log-mel filterbank settings (``conf/data/*.yaml``, key ``features``)."""

    sample_rate: int = 16000
    n_mels: int = 80
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    low_freq: float = 20.0
    high_freq: float = 0.0  # 0 = Nyquist; negative = offset from Nyquist (Kaldi convention)
    preemphasis: float = 0.97

    def key(self) -> str:
        """A short hash of every setting; names the cache directory of this configuration."""
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def log_mel(wave: torch.Tensor, cfg: FeatureConfig) -> torch.Tensor:
    """Log-mel filterbank of a waveform.

    Args:
        wave: float waveform in [-1, 1], shape ``(num_samples,)``, at ``cfg.sample_rate``.
    Returns:
        float32 features, shape ``(num_frames, cfg.n_mels)`` (one frame per ``frame_shift_ms``).
    """
    return torchaudio.compliance.kaldi.fbank(
        wave.unsqueeze(0) * 32768.0,  # Kaldi's int16 scale
        sample_frequency=cfg.sample_rate,
        num_mel_bins=cfg.n_mels,
        frame_length=cfg.frame_length_ms,
        frame_shift=cfg.frame_shift_ms,
        low_freq=cfg.low_freq,
        high_freq=cfg.high_freq,
        preemphasis_coefficient=cfg.preemphasis,
        dither=0.0,  # deterministic, so the cache equals a fresh computation
        energy_floor=0.0,
    )


class StreamingFeatures:
    """Log-mel features of audio that arrives in pieces, per whole frame as soon as its window is complete.

    Kaldi frames each window independently, so the frames equal :func:`log_mel` of the whole waveform. Samples no
    later frame needs are dropped.
    """

    def __init__(self, cfg: FeatureConfig):
        self.cfg = cfg
        self.window = int(cfg.sample_rate * cfg.frame_length_ms / 1000)
        self.shift = int(cfg.sample_rate * cfg.frame_shift_ms / 1000)
        self.audio = torch.zeros(0)  # samples from the next frame's start on

    def push(self, samples: torch.Tensor) -> torch.Tensor | None:
        """Float samples ``(n,)`` -> the features ``(t, n_mels)`` of the frames they completed (None: none)."""
        self.audio = torch.cat([self.audio, samples.float()])
        frames = 0 if self.audio.numel() < self.window else 1 + (self.audio.numel() - self.window) // self.shift
        if frames == 0:
            return None
        features = log_mel(self.audio[: (frames - 1) * self.shift + self.window], self.cfg)
        self.audio = self.audio[frames * self.shift :]
        return features


def atomic_save_npy(path: Path, array: np.ndarray, fsync: bool = True) -> None:
    """Write ``array`` to ``path`` atomically (:func:`common.atomic.save_atomic`). Cache entries skip the
    flushes to disk (``fsync=False``, thousands of files): a killed process never leaves half an entry,
    a power loss may (remove the cache directory then)."""

    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:
            np.save(f, array)

    save_atomic(path, write, fsync=fsync)


class FeatureCache:
    """Log-mel features of audio files, computed once and kept under ``cache_dir/<config key>/``."""

    def __init__(self, cache_dir: str | Path, cfg: FeatureConfig):
        self.cfg = cfg
        self.dir = Path(cache_dir) / cfg.key()
        self.dir.mkdir(parents=True, exist_ok=True)
        config_file = self.dir / "config.json"
        if not config_file.exists():
            write_text_atomic(config_file, json.dumps(asdict(cfg), indent=2, sort_keys=True) + "\n")

    def path_for(self, audio_path: str | Path) -> Path:
        """Cache file of ``audio_path``: changes whenever the file's path, size or mtime change."""
        audio_path = Path(audio_path).resolve()
        try:
            st = audio_path.stat()
        except FileNotFoundError as err:
            raise DataError(f"audio file {audio_path} is missing") from err
        digest = hashlib.sha1(f"{audio_path}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()
        return self.dir / digest[:2] / f"{digest[2:20]}.npy"

    def get(self, audio_path: str | Path) -> np.ndarray:
        """Features of ``audio_path``, shape ``(num_frames, n_mels)``, float32; computed on a miss."""
        path = self.path_for(audio_path)
        if path.exists():
            return np.load(path)
        return self._compute(audio_path, path)

    def num_frames(self, audio_path: str | Path) -> int:
        """Frame count of a cached entry without reading its data (the entry must exist)."""
        return int(np.load(self.path_for(audio_path), mmap_mode="r").shape[0])

    def _compute(self, audio_path: str | Path, path: Path) -> np.ndarray:
        wave = load_audio(audio_path, self.cfg.sample_rate)
        if wave.shape[0] < int(self.cfg.sample_rate * self.cfg.frame_length_ms * 0.001):  # as Kaldi sizes a frame
            raise DataError(f"audio file {audio_path} is shorter than one {self.cfg.frame_length_ms} ms frame")
        feats = log_mel(wave, self.cfg).numpy()
        atomic_save_npy(path, feats, fsync=False)
        return feats

    def precompute(self, audio_paths: Sequence[str | Path], jobs: int = 0, progress: bool = True,
                   desc: str = "features") -> int:
        """Fill the cache for ``audio_paths`` over ``jobs`` processes (0 = all cores).

        Returns how many entries were computed (the rest were already cached).
        """
        missing = [str(p) for p in audio_paths if not self.path_for(p).exists()]
        if not missing:
            return 0
        jobs = jobs or os.cpu_count() or 1
        if jobs == 1 or len(missing) < 32:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # per-utterance fbanks are too small for threads; they only add contention
            try:
                for audio_path in tqdm(missing, desc=desc, unit="utt", disable=not progress):
                    self.get(audio_path)
            finally:
                torch.set_num_threads(threads)
            return len(missing)
        ctx = mp.get_context("spawn")
        with ctx.Pool(jobs, initializer=_init_worker, initargs=(str(self.dir.parent), asdict(self.cfg))) as pool:
            for _ in tqdm(pool.imap_unordered(_worker_get, missing, chunksize=16), total=len(missing),
                          desc=desc, unit="utt", disable=not progress):
                pass
        return len(missing)


_WORKER_CACHE: list[FeatureCache] = []


def _init_worker(cache_dir: str, cfg: dict) -> None:
    torch.set_num_threads(1)
    _WORKER_CACHE.append(FeatureCache(cache_dir, FeatureConfig(**cfg)))


def _worker_get(audio_path: str) -> None:
    _WORKER_CACHE[0].get(audio_path)


class GlobalCMVN:
    """Global mean and variance normalization, with statistics computed on the training split."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        self.mean = mean
        self.std = std

    @classmethod
    def fit(cls, features: Sequence[np.ndarray], floor: float = 1e-5) -> GlobalCMVN:
        """Per-dimension mean and standard deviation over every frame of ``features``."""
        total = np.zeros(features[0].shape[1], np.float64)
        squares = np.zeros_like(total)
        frames = 0
        for feats in features:
            total += feats.sum(axis=0, dtype=np.float64)
            squares += np.square(feats, dtype=np.float64).sum(axis=0)
            frames += feats.shape[0]
        mean = total / frames
        std = np.sqrt(np.maximum(squares / frames - mean**2, floor))
        return cls(torch.from_numpy(mean.astype(np.float32)), torch.from_numpy(std.astype(np.float32)))

    def __call__(self, feats: torch.Tensor) -> torch.Tensor:
        """Normalize ``feats`` of shape ``(..., num_frames, n_mels)``."""
        return (feats - self.mean) / self.std

    def save(self, path: Path) -> None:
        atomic_save_npy(path, np.stack([self.mean.numpy(), self.std.numpy()]))

    @classmethod
    def load(cls, path: Path) -> GlobalCMVN:
        stats = torch.from_numpy(np.load(path))
        return cls(stats[0], stats[1])


class SpecAugment(torch.nn.Module):
    """SpecAugment (Park et al., 2019) without time warping: frequency and time masks.

    ``time_ratio`` caps each time mask at that fraction of the utterance, so short
    utterances are not wiped out. Used for training batches only.
    """

    def __init__(self, freq_masks: int = 2, freq_width: int = 15, time_masks: int = 2, time_width: int = 40,
                 time_ratio: float = 0.05):
        super().__init__()
        self.freq_masks, self.time_masks = freq_masks, time_masks
        self.freq = torchaudio.transforms.FrequencyMasking(freq_width)
        self.time = torchaudio.transforms.TimeMasking(time_width, p=time_ratio)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """Mask ``feats`` of shape ``(num_frames, n_mels)``; masked cells become 0 (the mean after CMVN)."""
        spec = feats.t().unsqueeze(0)  # (1, n_mels, num_frames) as torchaudio expects
        for _ in range(self.freq_masks):
            spec = self.freq(spec)
        for _ in range(self.time_masks):
            spec = self.time(spec)
        return spec.squeeze(0).t()
