"""Single-target sensitivity analysis (paper Fig. 2): factorize one target at a time, measure WER.

The table says how much WER each target costs at each energy; the manual "guided" baseline
leaves the sensitive targets dense, and the search narrows each target's rank range with it.
:func:`sparsity_table` is the same analysis for pruning: each target alone magnitude-pruned (one-shot,
no retraining) at each sparsity, to choose per-target sparsities (``compress.overrides``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from compress.cost import matrix_speedup, pays
from compress.figures import pyplot, save_figure
from compress.prune import check_block, check_sparsity, magnitude_mask
from compress.scheme import Scheme, apply_scheme
from compress.svd import SvdCache
from compress.targets import Target


def sensitivity_table(model: nn.Module, targets: Sequence[Target], cache: SvdCache,
                      evaluate: Callable[[nn.Module], float], energies: Sequence[float],
                      progress: Callable[[str], None] | None = None) -> dict:
    """WER of ``model`` with each target alone factorized at each energy.

    Returns ``{"baseline_wer", "energies", "rows": [{target, energy, rank, speedup, wer, delta}]}``;
    a rank that does not pay leaves the target dense (its row repeats the baseline WER).
    """
    for energy in energies:
        if not 0.0 < energy <= 1.0:
            raise ValueError(f"sensitivity energies must lie in (0, 1], got {energy}")
    baseline = evaluate(model)
    rows = []
    for target in targets:
        spectrum = cache.get(target.name, target.weight(model))
        for energy in energies:
            rank = spectrum.rank_for_energy(energy, target.name)
            if pays(target.shape, rank):
                scheme = Scheme.build(targets, {target.name: rank}, "sensitivity")
                wer = evaluate(apply_scheme(model, scheme, targets, cache))
            else:
                wer = baseline
            rows.append({"target": target.name, "shape": list(target.shape), "energy": energy, "rank": rank,
                         "speedup": matrix_speedup(target.shape, rank), "wer": wer, "delta": wer - baseline})
            if progress is not None:
                progress(f"{target.name} energy {energy:.2f} rank {rank}: WER {wer:.2f} ({wer - baseline:+.2f})")
    return {"baseline_wer": baseline, "energies": list(energies), "rows": rows}


def sparsity_table(model: nn.Module, targets: Sequence[Target], evaluate: Callable[[nn.Module], float],
                   sparsities: Sequence[float], block: Sequence[int] = (1, 1),
                   progress: Callable[[str], None] | None = None) -> dict:
    """WER of ``model`` with each target alone magnitude-pruned (:func:`compress.prune.magnitude_mask`, one-shot)
    at each sparsity; the weights are restored after every point.

    Returns ``{"kind": "sparsity", "baseline_wer", "sparsities", "block", "rows": [{target, shape, sparsity,
    nonzero, wer, delta}]}``.
    """
    for value in sparsities:
        check_sparsity(value, "sparsities")
    block = check_block(block)
    baseline = evaluate(model)
    rows = []
    for target in targets:
        weight = target.weight(model)
        if any(size % step for size, step in zip(weight.shape, block, strict=True)):
            raise ValueError(f"block={list(block)} does not divide target {target.name} of shape "
                             f"{tuple(weight.shape)}; choose a block that divides every target")
        original = weight.detach().clone()
        try:
            for value in sparsities:
                with torch.no_grad():
                    weight.copy_(original * magnitude_mask(original, value, block))
                wer = evaluate(model)
                rows.append({"target": target.name, "shape": list(target.shape), "sparsity": value,
                             "nonzero": int(torch.count_nonzero(weight)), "wer": wer, "delta": wer - baseline})
                if progress is not None:
                    progress(f"{target.name} sparsity {value:.2f}: WER {wer:.2f} ({wer - baseline:+.2f})")
        finally:
            with torch.no_grad():
                weight.copy_(original)
    return {"kind": "sparsity", "baseline_wer": baseline, "sparsities": list(sparsities), "block": list(block),
            "rows": rows}


def sensitive_targets(table: dict, energy: float, max_delta: float) -> list[str]:
    """Targets whose WER rises by more than ``max_delta`` (absolute, in WER points) at ``energy``."""
    rows = [r for r in table["rows"] if abs(r["energy"] - energy) < 1e-9]
    if not rows:
        raise ValueError(f"the sensitivity table has no energy {energy}; it has {table['energies']}")
    return [r["target"] for r in rows if r["delta"] > max_delta]


def load_table(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sensitivity table {path} not found; run scripts/sensitivity.py first")
    return json.loads(path.read_text())


def plot_table(table: dict, path: str | Path) -> None:
    """Fig. 2: WER increase per target (x) for each energy, or each sparsity of a :func:`sparsity_table`."""
    plt = pyplot()
    level, levels = ("sparsity", table["sparsities"]) if table.get("kind") == "sparsity" else ("energy",
                                                                                                table["energies"])
    names = list(dict.fromkeys(r["target"] for r in table["rows"]))
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(names)), 4))
    for value in levels:
        deltas = [next(r["delta"] for r in table["rows"] if r["target"] == n and r[level] == value)
                  for n in names]
        ax.plot(range(len(names)), deltas, marker="o", label=f"{level} {value:.2f}")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("WER increase (points)")
    what = "magnitude pruning" if level == "sparsity" else "SVD"
    ax.set_title(f"Single-target {what} sensitivity (baseline WER {table['baseline_wer']:.2f}%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)
