"""Batch-1 decoding speed of trained checkpoints against a baseline, all timed in one alternating run.

Used by the reports that compare many finished runs (``scripts/budget.py``, ``scripts/prune_report.py``): every
model is timed in the same measurement (:func:`asr.latency.measured_speedups`: each repeat decodes the
utterances one at a time with every model in rotating order, on one thread's CPU time), so the load of other
processes hits all alike. Results are cached in a JSON file while the checkpoints (path, size, modification
time) and the settings are unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from common.atomic import write_json_atomic

DENSE_KERNELS = ":dense_kernels"  # suffix of the name of a model timed without the sparse kernels


def fingerprints(checkpoints: Mapping[str, str]) -> dict[str, list]:
    out = {}
    for name, path in checkpoints.items():
        stat = Path(path).stat()
        out[name] = [str(path), stat.st_size, stat.st_mtime_ns]
    return out


def measure_checkpoints(baseline: str, checkpoints: Mapping[str, str], decoding: DictConfig, data: DictConfig,
                        latency: DictConfig, cache_file: Path, dense_kernels: Sequence[str] = ()) -> dict[str, dict]:
    """``{name: {"speedup", "rtf", "speedup_spread", "rtf_spread"}}`` of every checkpoint against ``baseline``
    (which is in the result as ``baseline``), batch 1 on the first ``latency.utterances`` utterances of the first
    test split, ``latency.threads`` threads, ``latency.repeats`` repeats; each name in ``dense_kernels`` also as
    ``<name>:dense_kernels``, decoded without the sparse kernels (``decoding.sparse_min_sparsity=null``)."""
    key = {"checkpoints": fingerprints({"baseline": baseline, **checkpoints}),
           "settings": OmegaConf.to_container(latency, resolve=True), "dense_kernels": sorted(dense_kernels)}
    if cache_file.is_file():
        cached = json.loads(cache_file.read_text())
        if cached.get("key") == key:
            return cached["measured"]
    from asr.latency import measured_speedups, single_utterances
    from shrinkml.stage import eval_batches, load_recognizer

    settings = OmegaConf.to_container(decoding, resolve=True)
    reference = load_recognizer(baseline, settings)
    models = {"baseline": reference.model}
    for name, path in checkpoints.items():
        models[name] = load_recognizer(path, settings).model
        if name in dense_kernels:
            models[name + DENSE_KERNELS] = load_recognizer(path, {**settings, "sparse_min_sparsity": None}).model
    utterances = single_utterances(eval_batches(data, data.test_splits[0]), latency.utterances)
    print(f"timing {len(models)} models on {len(utterances)} utterances, batch 1, {latency.threads} thread(s), "
          f"{latency.repeats} repeats")
    measured = measured_speedups(models, "baseline", utterances, reference.assets.features.frame_shift_ms,
                                 latency.threads, latency.repeats)
    write_json_atomic(cache_file, {"key": key, "measured": measured})
    return measured
