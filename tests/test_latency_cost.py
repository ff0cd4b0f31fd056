"""The measured-latency cost model's arithmetic (compress.latency_cost): interpolation in rank, the speed-up
formula, the table file and its key, and the errors of by=latency; no timing."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from compress.cost import FULL, CostModelError, estimate_speedup
from compress.latency_cost import KEY_FIELDS, LatencyTable, TargetLatency, isotonic, key_hash, table_path
from compress.manual import uniform_energy_scheme
from compress.scheme import Scheme
from compress.svd import SvdCache
from compress.targets import Target, discover_targets
from rl.space import SearchSpace, SearchSpaceError

KEY = {"cpu": "Test CPU", "cpu_capability": "AVX2", "cpu_flags": ["avx", "avx2", "fma"], "torch": "0.0",
       "backend": "cpp", "checkpoint_sha256": "ab" * 32, "threads": 1, "clock": "cpu", "statistic": "min",
       "repeats": 15, "grid": 10, "utterances": 40, "target_utterances": 8, "step_calls": 20, "step_repeats": 100,
       "sparse_min_sparsity": 0.5}


def toy_table(key: dict | None = None) -> LatencyTable:
    """``a`` (8 x 8, break-even 4): dense 2.0, rank 1 -> 0.5, rank 3 -> 1.0; ``b`` (1 x 8, no rank pays): 1.0."""
    return LatencyTable(dict(key or KEY), fixed=1.0, targets={
        "a": TargetLatency((8, 8), 2.0, [(3, 1.0), (1, 0.5)]),
        "b": TargetLatency((1, 8), 1.0, [])})


def toy_targets() -> list[Target]:
    return [Target("a", "linear", (8, 8)), Target("b", "linear", (1, 8))]


def test_seconds_interpolate_linearly_in_rank_and_fall_back_to_dense():
    a = toy_table().targets["a"]
    assert a.points == [(1, 0.5), (3, 1.0)]  # sorted by rank
    assert a.seconds(1) == 0.5 and a.seconds(3) == 1.0
    assert a.seconds(2) == pytest.approx(0.75)  # halfway between the grid points
    assert a.seconds(FULL) == 2.0
    assert a.seconds(4) == 2.0  # 4 * 16 = 64 = 8 * 8 does not pay: the scheme keeps it dense
    beyond = TargetLatency((8, 16), 3.0, [(2, 1.0), (4, 2.0)])  # break-even 5.33: ranks 1 and 5 pay
    assert beyond.seconds(1) == 1.0 and beyond.seconds(5) == 2.0  # clamped to the first and last grid point
    assert toy_table().targets["b"].seconds(FULL) == 1.0


def test_speedup_is_fixed_plus_dense_over_fixed_plus_chosen():
    table = toy_table()
    assert table.dense_seconds == pytest.approx(1.0 + 2.0 + 1.0)
    assert table.latency({"a": 2}) == pytest.approx(1.0 + 0.75 + 1.0)
    assert table.speedup({"a": 2}) == pytest.approx(4.0 / 2.75)
    assert table.speedup({}) == 1.0 and table.speedup({"a": FULL, "b": FULL}) == 1.0
    assert estimate_speedup(toy_targets(), {"a": 1}, "latency", table) == pytest.approx(4.0 / 2.5)
    with pytest.raises(CostModelError, match=r"ranks name targets \['c'\]"):
        table.latency({"c": 1})


def test_isotonic_pools_adjacent_violators():
    assert isotonic([1.0, 3.0, 2.0, 4.0]) == pytest.approx([1.0, 2.5, 2.5, 4.0])
    assert isotonic([3.0, 2.0, 1.0]) == pytest.approx([2.0, 2.0, 2.0])
    assert isotonic([1.0, 2.0]) == [1.0, 2.0] and isotonic([]) == []


def test_points_must_be_distinct_paying_ranks():
    with pytest.raises(CostModelError, match="must be distinct ranks that pay"):
        TargetLatency((8, 8), 1.0, [(4, 0.5)])
    with pytest.raises(CostModelError, match="must be distinct ranks that pay"):
        TargetLatency((8, 8), 1.0, [(2, 0.5), (2, 0.6)])


def test_by_latency_errors_are_clear():
    targets = toy_targets()
    with pytest.raises(CostModelError, match="by=latency needs a measured latency table"):
        estimate_speedup(targets, {"a": 1}, "latency")
    with pytest.raises(CostModelError, match="by='flops' is not a cost model; choose one of params, macs, latency"):
        estimate_speedup(targets, {"a": 1}, "flops")
    with pytest.raises(CostModelError, match="target 'c' is not in the latency table"):
        estimate_speedup([*targets, Target("c", "linear", (4, 4))], {}, "latency", toy_table())
    with pytest.raises(CostModelError, match=r"measured 'a' as \(8, 8\), but the model's is \(8, 9\)"):
        estimate_speedup([Target("a", "linear", (8, 9))], {}, "latency", toy_table())


def test_scheme_carries_speedup_latency_whenever_a_table_is_given():
    targets = toy_targets()
    with_table = Scheme.build(targets, {"a": 2}, "test", latency_table=toy_table(), note="x")
    assert with_table.estimates["speedup/latency"] == pytest.approx(4.0 / 2.75) and with_table.meta == {"note": "x"}
    assert "speedup/latency" not in Scheme.build(targets, {"a": 2}, "test").estimates


def test_table_file_round_trip_and_key(tmp_path):
    table = toy_table()
    path = table.save(table_path(tmp_path, KEY))
    assert path == tmp_path / f"{key_hash(KEY)}.json" and len(path.stem) == 16
    again = LatencyTable.load(path)
    assert again.to_dict() == table.to_dict()
    assert json.loads(path.read_text())["key"] == KEY  # the key fields are inside the file
    assert LatencyTable.find(tmp_path, KEY).to_dict() == table.to_dict()
    assert set(KEY) == set(KEY_FIELDS)
    for field, other in (("threads", 2), ("checkpoint_sha256", "cd" * 32), ("cpu", "Other CPU"), ("torch", "9.9"),
                         ("cpu_capability", "AVX512"), ("cpu_flags", ["avx", "avx2", "avx512f", "fma"]),
                         ("clock", "wall"), ("statistic", "median"), ("grid", 5), ("repeats", 7)):
        assert key_hash({**KEY, field: other}) != key_hash(KEY)
        assert LatencyTable.find(tmp_path, {**KEY, field: other}) is None  # another key: another file, none
    # a table written before the key held the instruction sets and measurement settings is stale, even under the
    # name of a key that lacks them too
    old = {name: KEY[name] for name in ("cpu", "threads", "torch", "backend", "checkpoint_sha256")}
    toy_table(old).save(table_path(tmp_path, old))
    assert LatencyTable.find(tmp_path, old) is None
    # a file under this key's name that records another key (copied, edited) is not used either
    toy_table({**KEY, "threads": 4}).save(path)
    assert LatencyTable.find(tmp_path, KEY) is None
    path.write_text("{}")
    with pytest.raises(CostModelError, match="not a latency table"):
        LatencyTable.load(path)
    with pytest.raises(CostModelError, match="not found"):
        LatencyTable.load(tmp_path / "none.json")


def test_check_reachable_and_manual_baseline_by_latency():
    targets = toy_targets()
    space = SearchSpace(["a", "b"], [[1, 3, FULL], [FULL, FULL, FULL]])
    assert space.check_reachable(targets, 1.5, "latency", toy_table()) == pytest.approx(4.0 / 2.5)
    with pytest.raises(SearchSpaceError, match="estimated at 1.60x"):
        space.check_reachable(targets, 2.0, "latency", toy_table())
    with pytest.raises(CostModelError, match="needs a measured latency table"):
        space.check_reachable(targets, 1.5, "latency")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 16))
    real = discover_targets(model)
    table = LatencyTable(dict(KEY), 0.5, {t.name: TargetLatency(t.shape, 1.0, [(1, 0.1), (7, 0.7)]) for t in real})
    weights = {t.name: t.weight(model) for t in real}
    scheme = uniform_energy_scheme(real, weights, SvdCache(), 1.5, "latency", latency_table=table)
    assert scheme.estimates["speedup/latency"] >= 1.5 and scheme.meta["by"] == "latency"
    assert table.speedup(scheme.ranks) == scheme.estimates["speedup/latency"]
