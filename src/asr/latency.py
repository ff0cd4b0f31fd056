"""Measured decoding latency: the ``speedup/measured`` of the comparison table (any model with ``decode``).

Every model decodes the same utterances one at a time (batch 1, the on-device case) with greedy
hard-attention decoding, on a fixed number of threads; latency is the real-time factor (decode
seconds per audio second). ``benchmarks/measured_speedup.py`` splits the same into encoder,
attention and decoder with streaming chunks; this is the end-to-end number per stage.

Timing is alternating (:func:`alternate`): after a warm-up, each repeat times one pass of every model
over the utterances, in an order that rotates between repeats (:func:`rotation`), so that load from
other processes and slow drifts of it hit every model alike. A model's speed-up is the median over
repeats of the per-repeat ratio ``reference seconds / model seconds`` (two passes of the same repeat,
close in time, so a drift common to both cancels), and its spread is the lowest and highest of those
ratios (:func:`ratio_summary`).

On one thread the clock is the thread's CPU time (:class:`DecodeClock`): the time the decoding ran, without
the time the system gave other processes meanwhile, which on a shared machine is the largest and least
repeatable part of wall time (the contention for caches and memory that remains is what alternating is for).
With more threads it is wall time.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TypeVar

import torch
from torch import nn

from asr.data.datamodule import AsrDataModule

T = TypeVar("T")
log = logging.getLogger(__name__)


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


class DecodeClock:
    """Seconds for timing decoding on ``threads`` threads: the calling thread's CPU time
    (``time.thread_time``) on one thread, where torch computes in the calling thread, else wall time
    (``time.perf_counter``). ``kind`` names it (``"thread CPU"`` or ``"wall"``)."""

    def __init__(self, threads: int, wall: bool = False):
        self.cpu = threads == 1 and not wall
        self.kind = "thread CPU" if self.cpu else "wall"

    def __call__(self) -> float:
        return time.thread_time() if self.cpu else time.perf_counter()

    @contextmanager
    def checked(self) -> Iterator[None]:
        """On the CPU clock, warns when the process spent clearly more CPU time than this thread inside the
        block: other threads of the process ran meanwhile (a logger's, or torch computing on more than one
        thread, whose share thread CPU time leaves out). Does not raise: a stage at its end keeps its result."""
        if not self.cpu:
            yield
            return
        thread, process = time.thread_time(), time.process_time()
        yield
        thread, process = time.thread_time() - thread, time.process_time() - process
        if process > 1.1 * thread + 0.05:
            log.warning("latency timed on this thread's CPU time (%.2f s) while the process used %.2f s: other "
                        "threads ran meanwhile; if torch computed on them the timing undercounts it (set "
                        "OMP_NUM_THREADS=1, or time on wall time)", thread, process)


def rotation(names: Sequence[str], repeat: int) -> list[str]:
    """The order of ``names`` in repeat ``repeat``: as given in repeat 0, then started one name later each
    repeat (``a b c``, ``b c a``, ``c a b``, ``a b c``, ...), so no model is always timed first or last."""
    if not names:
        return []
    shift = repeat % len(names)
    return [*names[shift:], *names[:shift]]


def alternate(runs: Mapping[str, Callable[[], T]], repeats: int, warmup: int = 0) -> dict[str, list[T]]:
    """``{name: [result of repeat 0, repeat 1, ...]}``: every run called ``warmup`` times (results dropped),
    then once per repeat, all runs in :func:`rotation` order within each repeat (warm-up in that order too)."""
    if repeats < 1:
        raise ValueError(f"repeats={repeats}: timing needs at least one repeat")
    names = list(runs)
    for i in range(warmup):
        for name in rotation(names, i):
            runs[name]()
    results: dict[str, list[T]] = {name: [] for name in names}
    for repeat in range(repeats):
        for name in rotation(names, repeat):
            results[name].append(runs[name]())
    return results


def spread(values: Sequence[float]) -> tuple[float, float]:
    """``(lowest, highest)`` of ``values``."""
    return min(values), max(values)


def ratio_summary(reference: Sequence[float], values: Sequence[float]) -> dict[str, float | tuple[float, float]]:
    """The per-repeat ratios ``reference[r] / values[r]`` (seconds of the same repeat: a speed-up) as
    ``{"median": ..., "spread": (lowest, highest), "ratios": [...]}``."""
    if len(reference) != len(values) or not values:
        raise ValueError(f"ratio_summary needs one reference timing per timing ({len(reference)} and {len(values)})")
    ratios = [ref / value for ref, value in zip(reference, values, strict=True)]
    return {"median": statistics.median(ratios), "spread": spread(ratios), "ratios": ratios}


def _pass(model: nn.Module, utterances: Sequence[tuple[torch.Tensor, torch.Tensor]],
          clock: Callable[[], float]) -> Callable[[], float]:
    def timed() -> float:
        start = clock()
        for features, lengths in utterances:
            model.decode(features, lengths, 0)
        return clock() - start

    return timed


def _audio_seconds(utterances: Sequence[tuple[torch.Tensor, torch.Tensor]], frame_shift_ms: float) -> float:
    if not utterances:
        raise ValueError("latency needs at least one utterance")
    return sum(float(lengths.sum()) for _, lengths in utterances) * frame_shift_ms / 1000.0


@torch.no_grad()
def real_time_factor(model: nn.Module, utterances: Sequence[tuple[torch.Tensor, torch.Tensor]],
                     frame_shift_ms: float, repeats: int = 1) -> float:
    """Decode seconds per audio second of ``model.decode`` (greedy) over ``utterances``: the median of
    ``repeats`` passes after one warm-up utterance (the first call builds caches and extensions), on the
    :class:`DecodeClock` of the current thread count."""
    audio = _audio_seconds(utterances, frame_shift_ms)
    clock = DecodeClock(torch.get_num_threads())
    model.eval()
    model.decode(*utterances[0], 0)
    with clock.checked():
        passes = alternate({"model": _pass(model, utterances, clock)}, repeats)["model"]
    return statistics.median(passes) / audio


@torch.no_grad()
def measured_speedups(models: Mapping[str, nn.Module], reference: str, utterances: Sequence, frame_shift_ms: float,
                      threads: int, repeats: int) -> dict[str, dict]:
    """``{name: {"rtf", "speedup", "speedup_spread", "rtf_spread"}}`` for every model, timed alternating on
    ``threads`` threads (restored afterwards): one warm-up utterance per model in turn, then ``repeats``
    passes of every model over ``utterances`` in rotating order (:func:`alternate`), on :class:`DecodeClock`.

    ``rtf``: the median over repeats of the model's real-time factor; ``speedup``: the median over repeats of
    ``reference pass seconds / model pass seconds`` of the same repeat; ``speedup_spread`` and ``rtf_spread``:
    ``(lowest, highest)`` of those per-repeat values (the reference's own speed-up is 1 with spread (1, 1))."""
    if reference not in models:
        raise ValueError(f"reference {reference!r} is not one of the timed models {list(models)}")
    audio = _audio_seconds(utterances, frame_shift_ms)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for name in models:
            models[name].eval()
            models[name].decode(*utterances[0], 0)  # the first call builds caches and extensions
        clock = DecodeClock(threads)
        with clock.checked():
            seconds = alternate({name: _pass(model, utterances, clock) for name, model in models.items()}, repeats)
    finally:
        torch.set_num_threads(previous)
    out = {}
    for name, passes in seconds.items():
        ratio = ratio_summary(seconds[reference], passes)
        rtfs = [s / audio for s in passes]
        out[name] = {"rtf": statistics.median(rtfs), "speedup": ratio["median"], "speedup_spread": ratio["spread"],
                     "rtf_spread": spread(rtfs)}
    return out


def measure_against(module_model: nn.Module, reference_model: nn.Module, datamodule: AsrDataModule, split: str,
                    frame_shift_ms: float, utterances: int, threads: int, repeats: int) -> dict[str, float]:
    """Summary entries ``speedup/measured`` (median of the per-repeat reference / model decoding time), its
    spread over repeats ``speedup/measured_min`` and ``speedup/measured_max``, and both RTFs (medians), on
    the first ``utterances`` utterances of ``split`` decoded one at a time (:func:`measured_speedups`)."""
    items = single_utterances(list(datamodule.eval_dataloader(split)), utterances)
    timed = measured_speedups({"reference": reference_model, "model": module_model}, "reference", items,
                              frame_shift_ms, threads, repeats)
    low, high = timed["model"]["speedup_spread"]
    return {"speedup/measured": timed["model"]["speedup"], "speedup/measured_min": low,
            "speedup/measured_max": high, "rtf/model": timed["model"]["rtf"],
            "rtf/reference": timed["reference"]["rtf"]}


def deployment_speedups(decoders: Mapping[str, Callable[[torch.Tensor], object]], features: Sequence[torch.Tensor],
                        frame_shift_ms: float, references: Sequence[str], repeats: int, threads: int = 1
                        ) -> dict[str, dict[str, float]]:
    """Time every ``decoders[name](features (T, F))`` (batch 1) over all ``features``, alternating
    (:func:`alternate`, one warm-up pass); returns per name ``ms_per_audio_second`` (median over repeats, on
    :class:`DecodeClock`), ``wall_ms_per_audio_second`` and, for every name in ``references``, ``vs_<reference>``:
    the median over repeats of the ratio of the reference's time to this one's (the speed-up against it)."""
    clock = DecodeClock(threads)

    def timed(decode):
        def run() -> tuple[float, float]:
            wall, start = time.perf_counter(), clock()
            for f in features:
                decode(f)
            return clock() - start, time.perf_counter() - wall
        return run

    with clock.checked():
        results = alternate({name: timed(decode) for name, decode in decoders.items()}, repeats, warmup=1)
    audio_seconds = sum(f.shape[0] for f in features) * frame_shift_ms / 1000
    table = {}
    for name, values in results.items():
        row = {"ms_per_audio_second": 1000 * statistics.median(v[0] for v in values) / audio_seconds,
               "wall_ms_per_audio_second": 1000 * statistics.median(v[1] for v in values) / audio_seconds}
        for reference in references:
            row[f"vs_{reference}"] = statistics.median(r[0] / v[0] for r, v in zip(results[reference], values,
                                                                                  strict=True))
        table[name] = row
    return table
