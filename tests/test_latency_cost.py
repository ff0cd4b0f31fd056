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
       "backend": "cpp", "kernels": "0123456789ab", "checkpoint_sha256": "ab" * 32, "threads": 1, "clock": "cpu",
       "statistic": "min",
       "repeats": 15, "grid": 10, "utterances": 40, "target_utterances": 8, "step_calls": 20, "step_repeats": 100,
       "sparse_min_sparsity": 0.5, "method": 2}


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


def mixed_table() -> LatencyTable:
    """``toy_table`` with ``a`` also measured at three options that are not a rank alone."""
    table = toy_table()
    table.targets["a"].options = {"s0.8": 0.8, "s0.8@4x1": 0.6, "r2+s0.5@4x1": 0.4}
    return table


def test_options_other_than_ranks_are_looked_up_exactly():
    table = mixed_table()
    a = table.targets["a"]
    assert a.seconds({"sparsity": 0.8}) == 0.8 and a.seconds({"sparsity": 0.8, "pattern": "unstructured"}) == 0.8
    assert a.seconds({"sparsity": 0.8, "pattern": "4x1"}) == 0.6
    assert a.seconds({"rank": 2, "sparsity": 0.5, "pattern": "4x1"}) == 0.4
    assert a.seconds({"rank": 2}) == a.seconds(2) == pytest.approx(0.75)  # a rank alone: interpolated, as before
    assert a.seconds({"sparsity": 0}) == 2.0  # no sparsity: dense
    settings = {"a": {"rank": 2, "sparsity": 0.5, "pattern": "4x1"}, "b": FULL}
    assert table.latency(settings) == pytest.approx(1.0 + 0.4 + 1.0)
    assert estimate_speedup(toy_targets(), settings, "latency", table) == pytest.approx(4.0 / 2.4)
    assert table.holds(settings) and table.holds({"a": 3}) and not table.holds({"a": {"sparsity": 0.9}})


def test_an_option_the_table_was_not_measured_at_is_an_error_naming_it():
    table = mixed_table()
    with pytest.raises(CostModelError, match=r"no time for target 'a' at option s0.9@4x1 \(it holds .*r2\+s0.5@4x1"):
        table.speedup({"a": {"sparsity": 0.9, "pattern": "4x1"}})
    with pytest.raises(CostModelError, match="no time for target 'a' at option r3\\+s0.5@4x1"):
        estimate_speedup(toy_targets(), {"a": {"rank": 3, "sparsity": 0.5, "pattern": "4x1"}}, "latency", table)
    with pytest.raises(CostModelError, match="no time for target 'b' at option s0.5 .*ranks only"):
        table.latency({"b": {"sparsity": 0.5}})


def test_scheme_build_fills_speedup_latency_for_mixed_settings_the_table_holds():
    targets = [Target("a", "linear", (8, 8)), Target("b", "linear", (4, 8))]
    table = mixed_table()
    table.targets["b"] = TargetLatency((4, 8), 1.0, [])
    mixed = Scheme.build(targets, {"a": {"sparsity": 0.8, "pattern": "4x1"}, "b": 1}, "test", latency_table=table)
    assert mixed.estimates["speedup/latency"] == pytest.approx(4.0 / (1.0 + 0.6 + 1.0))
    assert mixed.options == {"a": {"sparsity": 0.8, "pattern": "4x1"}}
    unmeasured = Scheme.build(targets, {"a": {"sparsity": 0.7}}, "test", latency_table=table)
    assert "speedup/latency" not in unmeasured.estimates and "speedup/params" in unmeasured.estimates
    ranks = Scheme.build(targets, {"a": 2}, "test", latency_table=table)  # rank-only schemes as before
    assert ranks.estimates["speedup/latency"] == pytest.approx(4.0 / 2.75)


def test_options_round_trip_and_an_older_format_is_not_used(tmp_path, caplog):
    table = mixed_table()
    path = table.save(table_path(tmp_path, KEY))
    assert LatencyTable.load(path).targets["a"].options == table.targets["a"].options
    assert LatencyTable.find(tmp_path, KEY).to_dict() == table.to_dict()
    old = table.to_dict()
    old["format"] = "shrinkml-latency/1"  # ranks only, under this key's name
    for entry in old["targets"].values():
        entry.pop("options")
    path.write_text(json.dumps(old))
    with caplog.at_level("WARNING"):
        assert LatencyTable.find(tmp_path, KEY) is None
    lines = [r.getMessage() for r in caplog.records if "format shrinkml-latency/1" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0] and "measured again" in lines[0]
    with pytest.raises(CostModelError, match="latency table of format 'shrinkml-latency/1', not 'shrinkml-latency/2'"):
        LatencyTable.load(path)
    assert key_hash({**KEY, "sparse_min_sparsity": 0.7}) != key_hash(KEY)
    assert LatencyTable.find(tmp_path, {**KEY, "sparse_min_sparsity": None}) is None


def test_the_decoder_steps_savings_are_scaled_together():
    table = mixed_table()
    table.step_scale, table.step_targets = 1.5, ["a"]
    assert table.seconds("a", 1) == pytest.approx(2.0 - 1.5 * (2.0 - 0.5))
    assert table.seconds("a", FULL) == 2.0 and table.seconds("b", FULL) == 1.0  # dense stays dense
    assert table.latency({"a": {"sparsity": 0.8}}) == pytest.approx(1.0 + 2.0 - 1.5 * 1.2 + 1.0)
    again = LatencyTable.from_dict(json.loads(json.dumps(table.to_dict())))
    assert again.step_scale == 1.5 and again.step_targets == ["a"]
    assert again.latency({"a": 2}) == table.latency({"a": 2})
