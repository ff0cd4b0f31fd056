"""Measured decoding latency: the ``speedup/measured`` of the comparison table (any model with ``decode``).

Every model decodes the same utterances one at a time (batch 1, the on-device case) with greedy
hard-attention decoding, on a fixed number of threads; latency is the real-time factor (decode
seconds per audio second). ``benchmarks/measured_speedup.py`` splits the same into encoder,
attention and decoder with streaming chunks; this is the end-to-end number per stage.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from asr.data.datamodule import AsrDataModule


def single_utterances(batches: Sequence[dict], count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``count`` utterances of ``batches`` as batch-1 ``(features (1, T, F), lengths (1,))`` pairs."""
    items = []
    for batch in batches:
        for row in range(len(batch["feature_lengths"])):
            length = int(batch["feature_lengths"][row])
            items.append((batch["features"][row : row + 1, :length], batch["feature_lengths"][row : row + 1]))
            if len(items) == count:
                return items
    return items


@torch.no_grad()
def real_time_factor(model: nn.Module, utterances: Sequence[tuple[torch.Tensor, torch.Tensor]],
                     frame_shift_ms: float, repeats: int = 1) -> float:
    """Decode seconds per audio second of ``model.decode`` (greedy) over ``utterances``; the best of
    ``repeats`` passes after one warm-up utterance (the first call builds caches and extensions)."""
    if not utterances:
        raise ValueError("latency needs at least one utterance")
    model.eval()
    model.decode(*utterances[0], 0)
    audio = sum(float(lengths.sum()) for _, lengths in utterances) * frame_shift_ms / 1000.0
    best = float("inf")
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        for features, lengths in utterances:
            model.decode(features, lengths, 0)
        best = min(best, time.perf_counter() - start)
    return best / audio


def measured_speedups(models: Mapping[str, nn.Module], reference: str, utterances: Sequence, frame_shift_ms: float,
                      threads: int = 1, repeats: int = 2) -> dict[str, dict[str, float]]:
    """``{name: {"rtf": ..., "speedup": rtf(reference) / rtf(name)}}`` for every model, measured one
    model after the other on ``threads`` threads (restored afterwards)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rtf = {name: real_time_factor(model, utterances, frame_shift_ms, repeats) for name, model in models.items()}
    finally:
        torch.set_num_threads(previous)
    return {name: {"rtf": value, "speedup": rtf[reference] / value} for name, value in rtf.items()}


def measure_against(module_model: nn.Module, reference_model: nn.Module, datamodule: AsrDataModule, split: str,
                    frame_shift_ms: float, utterances: int = 40, threads: int = 1, repeats: int = 2
                    ) -> dict[str, float]:
    """Summary entries ``speedup/measured`` (reference RTF / model RTF) and both RTFs, on the first
    ``utterances`` utterances of ``split`` decoded one at a time."""
    items = single_utterances(list(datamodule.eval_dataloader(split)), utterances)
    timed = measured_speedups({"reference": reference_model, "model": module_model}, "reference", items,
                              frame_shift_ms, threads, repeats)
    return {"speedup/measured": timed["model"]["speedup"], "rtf/model": timed["model"]["rtf"],
            "rtf/reference": timed["reference"]["rtf"]}
