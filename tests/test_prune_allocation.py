"""Per-target sparsities from a sparsity-sensitivity table (compress.prune_allocation, compress.allocation)."""

from __future__ import annotations

import json
import random

import lightning as L
import pytest
from test_compress_callback import Regressor, pruning

from compress.prune import PruneError, prunable_matrices
from compress.prune_allocation import allocate_sparsities, lower_hull

LEVELS = (0.5, 0.7, 0.9)


def table_for(matrices, deltas: dict[str, list[float]]) -> dict:
    """A sparsity table as scripts/sensitivity.py writes it: ``deltas[target]`` is the WER rise at LEVELS."""
    rows = [{"target": m.target, "shape": list(m.shape), "sparsity": s, "delta": d}
            for m in matrices for s, d in zip(LEVELS, deltas[m.target], strict=True)]
    return {"kind": "sparsity", "sparsities": list(LEVELS), "rows": rows}


def pruned_fraction(matrices, finals: dict) -> float:
    sizes = {m.path: m.shape[0] * m.shape[1] for m in matrices}
    return sum(finals[p] * n for p, n in sizes.items()) / sum(sizes.values())


def cost(curve: list[tuple[float, float]], s: float) -> float:
    """The table's cost at sparsity ``s``, linear between the measured points (from (0, 0))."""
    for (s1, c1), (s2, c2) in zip(curve, curve[1:], strict=False):
        if s <= s2 + 1e-12:
            return c1 + (c2 - c1) * (s - s1) / (s2 - s1)
    raise AssertionError(s)


def test_lower_hull_drops_points_above_the_chords():
    assert lower_hull([(0, 0), (0.5, 2), (0.7, 1), (0.9, 5)]) == [(0, 0), (0.7, 1), (0.9, 5)]
    assert lower_hull([(0, 0), (0.5, 0), (0.7, 0)]) == [(0, 0), (0.7, 0)]   # collinear: the ends only


def test_the_tolerant_targets_take_more_and_the_total_is_met():
    matrices = prunable_matrices(Regressor().model)
    table = table_for(matrices, {"lstm": [0.0, 0.5, 3.0], "hidden": [2.0, 8.0, 30.0], "out": [1.0, 4.0, 20.0]})
    finals = allocate_sparsities(matrices, 0.6, table)
    assert pruned_fraction(matrices, finals) == pytest.approx(0.6)
    assert finals["lstm.kernel"] > 0.6 > finals["hidden.weight"]
    assert all(0.0 <= s <= 0.9 for s in finals.values())


def test_the_allocation_costs_no_more_than_uniform_on_random_tables():
    matrices = prunable_matrices(Regressor().model)
    rng = random.Random(0)
    for _ in range(50):
        deltas = {m.target: sorted(rng.uniform(-1, 20) for _ in LEVELS) for m in matrices}
        table = table_for(matrices, deltas)
        curves = {m.path: [(0.0, 0.0), *((s, max(0.0, d)) for s, d in zip(LEVELS, deltas[m.target], strict=True))]
                  for m in matrices}
        sparsity = rng.uniform(0.1, 0.85)
        finals = allocate_sparsities(matrices, sparsity, table)
        assert pruned_fraction(matrices, finals) == pytest.approx(sparsity)
        spent = sum(cost(curves[p], s) for p, s in finals.items())
        assert spent <= sum(cost(curve, sparsity) for curve in curves.values()) + 1e-9


def test_fixed_targets_keep_their_value_and_the_others_make_up_the_rest():
    matrices = prunable_matrices(Regressor().model)
    table = table_for(matrices, {"lstm": [0.0, 0.5, 3.0], "hidden": [2.0, 8.0, 30.0], "out": [1.0, 4.0, 20.0]})
    finals = allocate_sparsities(matrices, 0.3, table, {"lstm.kernel": 0.2})
    assert finals["lstm.kernel"] == 0.2 and pruned_fraction(matrices, finals) == pytest.approx(0.3)


def test_an_unreachable_sparsity_or_a_foreign_table_is_refused():
    matrices = prunable_matrices(Regressor().model)
    table = table_for(matrices, {m.target: [0.0, 1.0, 2.0] for m in matrices})
    with pytest.raises(PruneError, match=r"at most 0.9000 reachable"):
        allocate_sparsities(matrices, 0.95, table)
    other = {**table, "rows": [r for r in table["rows"] if r["target"] != "out"]}
    with pytest.raises(PruneError, match=r"no row of shape \[3, 24\] for target out"):
        allocate_sparsities(matrices, 0.5, other)
    with pytest.raises(PruneError, match="not a sparsity-sensitivity table"):
        allocate_sparsities(matrices, 0.5, {**table, "kind": "energy"})


def test_the_callback_prunes_each_target_to_its_allocated_sparsity(tmp_path):
    matrices = prunable_matrices(Regressor().model)
    path = tmp_path / "sensitivity_sparsity.json"
    path.write_text(json.dumps(table_for(matrices, {"lstm": [0.0, 0.5, 3.0], "hidden": [2.0, 8.0, 30.0],
                                                    "out": [1.0, 4.0, 20.0]})))
    callback = pruning(sparsity=0.6, start_step=1, frequency=2, updates=3, allocation="sensitivity",
                       sensitivity_table=path)
    trainer = L.Trainer(max_epochs=3, callbacks=[callback], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path,
                        accelerator="cpu")
    trainer.fit(Regressor())
    actual = {m.path: float((~m.mask).float().mean()) for m in callback.pruner.matrices}
    assert actual["lstm.kernel"] > 0.6 > actual["hidden.weight"]
    assert callback.pruner.sparsity() == pytest.approx(0.6, abs=0.01)
    with pytest.raises(FileNotFoundError, match="compress.sensitivity_table .* make sensitivity-sparsity"):
        pruning(allocation="sensitivity", sensitivity_table=tmp_path / "none.json")
    with pytest.raises(PruneError, match="compress.allocation='greedy' is unknown"):
        pruning(allocation="greedy")
