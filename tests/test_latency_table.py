"""The measured-latency table (shrinkml.latency_table): a real build on a tiny recognizer (few repeats), the rank
grid, the cache and its key (another thread count or checkpoint is never reused), the settings' errors, and
search.py with by=latency end to end. No assertion compares speeds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from asr_helpers import VOCAB, corpus_copy_for_runs, shared_dir, tiny_model_config, trained_run
from hydra import compose, initialize_config_dir
from test_compress_scripts import run_script

from asr.model import lowrank_lstm
from asr.model import lstm as lstm_module
from asr.model.asr_model import AsrModel
from compress.cost import FULL, CostModelError, estimate_speedup
from compress.latency_cost import FORMAT, KEY_FIELDS, LatencyTable, TargetLatency, table_path
from compress.options import option_key
from compress.scheme import Scheme, current_ranks, file_fingerprint
from compress.targets import Target, discover_targets
from shrinkml import latency_table
from shrinkml.latency_table import (
    LatencySettings,
    build_table,
    ensure_table,
    isa_flags,
    largest_paying_rank,
    machine_key,
    rank_grid,
    sparse_threshold,
    split_options,
    stage_table,
)
from shrinkml.stage import load_recognizer

FEATS = 20


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def settings(tmp_path, **overrides) -> LatencySettings:
    values = dict(dir=str(tmp_path / "latency"), threads=1, repeats=2, grid=3, utterances=3, target_utterances=2,
                  step_calls=2, step_repeats=3, statistic="min", clock="cpu", rebuild=False)
    values.update(overrides)
    return LatencySettings(**values)


def tiny_model() -> AsrModel:
    torch.manual_seed(0)
    return AsrModel(VOCAB, FEATS, **tiny_model_config(init_r=-2.0)).eval()


def batches() -> list[dict]:
    torch.manual_seed(1)
    lengths = torch.tensor([48, 40, 32])
    return [{"features": torch.randn(3, 48, FEATS), "feature_lengths": lengths}]


def utterances() -> list[tuple[torch.Tensor, torch.Tensor]]:
    batch = batches()[0]
    return [(batch["features"][i : i + 1, : int(n)], batch["feature_lengths"][i : i + 1])
            for i, n in enumerate(batch["feature_lengths"])]


def test_rank_grid_spans_one_to_the_largest_rank_that_pays():
    assert largest_paying_rank((1024, 512)) == 341 and largest_paying_rank((8, 8)) == 3
    assert largest_paying_rank((1, 256)) == 0
    grid = rank_grid((1024, 512), 10)
    assert grid[0] == 1 and grid[-1] == 341 and grid == sorted(set(grid)) and 6 <= len(grid) <= 10
    assert rank_grid((1, 256), 10) == []  # no rank pays: never factorized
    assert rank_grid((16, 16), 3, [5, FULL, 99]) == [1, 3, 5, 7]  # asked ranks that pay join the grid


def test_settings_come_from_the_config_group_and_are_checked(tmp_path):
    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("search", overrides=[f"paths.root_dir={tmp_path}"])
    loaded = LatencySettings.from_config(cfg.latency)
    assert loaded.threads == 1 and loaded.dir == f"{tmp_path}/runs/latency" and cfg.by == "params"
    with pytest.raises(CostModelError, match="latency.repeats=0 must be >= 1"):
        LatencySettings.from_config({**cfg.latency, "repeats": 0})
    with pytest.raises(CostModelError, match="latency.statistic='mean'; choose one of median, min"):
        LatencySettings.from_config({**cfg.latency, "statistic": "mean"})
    with pytest.raises(CostModelError, match="use latency.clock=wall with latency.threads > 1"):
        LatencySettings.from_config({**cfg.latency, "threads": 2})
    assert LatencySettings.from_config({**cfg.latency, "threads": 2, "clock": "wall"}).threads == 2


def test_tiny_model_table_is_measured_for_every_target(tmp_path):
    if lowrank_lstm.backend() != "cpp":
        pytest.fail(f"the C++ extension must build on this machine: {lowrank_lstm.backend_info()['reason']}")
    model = tiny_model()
    targets = discover_targets(model, exclude=["ctc_head"])
    key = {"cpu": "test", "threads": 1, "torch": torch.__version__, "backend": "cpp", "checkpoint_sha256": "0" * 64}
    table = build_table(model, targets, utterances(), 10.0, key, settings(tmp_path),
                        extra_ranks={"decoder.output": [5]})
    assert table.key == key and torch.get_num_threads() == 1
    assert set(table.targets) == {t.name for t in targets}
    assert all(current_ranks(model, targets)[t.name] == FULL for t in targets)  # the model itself stays dense
    for target in targets:
        entry = table.targets[target.name]
        assert entry.shape == target.shape
        extra = [5] if target.name == "decoder.output" else []
        assert [rank for rank, _ in entry.points] == rank_grid(target.shape, 3, extra)
        seconds = [s for _, s in entry.points]
        assert seconds == sorted(seconds)  # made non-decreasing in rank
    contexts = {name: entry.info["context"].split()[0] for name, entry in table.targets.items()}
    assert contexts["encoder.layers.0"] == "encode" and contexts["decoder.attention.mono_key"] == "call"
    assert contexts["decoder.cell"] == "decode_step" and contexts["decoder.output"] == "decode_step"
    chunk_v = table.targets["decoder.attention.chunk_v"]  # 1 x 16: no rank pays
    assert chunk_v.points == [] and chunk_v.dense == 0.0 and contexts["decoder.attention.chunk_v"] == "none:"
    for name in ("encoder.layers.0", "encoder.layers.1", "decoder.attention.mono_key"):  # timed as modules: > 0
        entry = table.targets[name]
        assert entry.dense > 0 and all(s > 0 for _, s in entry.points) and entry.info["uses_per_second"] > 0
    whole = table.meta["whole_dense_seconds"]
    assert whole > 0 and table.fixed == pytest.approx(whole - sum(t.dense for t in table.targets.values()))
    assert table.dense_seconds == pytest.approx(whole) and table.speedup({}) == 1.0
    ranks = {t.name: entry.points[0][0] for t in targets if (entry := table.targets[t.name]).points}
    step = {"decoder.cell", "decoder.attention.mono_query", "decoder.attention.chunk_query", "decoder.pre_output",
            "decoder.output"}
    assert set(table.step_targets) == step and 0.5 <= table.step_scale <= 2.0  # measured by whole decodes
    assert set(table.meta["step_scale"]["measured"]) == {"q0.25", "q0.5", "q0.75", "q1.0"}
    scale = {n: table.step_scale if n in step else 1.0 for n in ranks}  # the step's savings scaled together
    assert table.speedup(ranks) == pytest.approx(whole / (whole + sum(
        scale[n] * (table.targets[n].points[0][1] - table.targets[n].dense) for n in ranks)))


def fake_build(calls: list):
    """A stand-in for build_table that records its calls and returns a table of dense 1.0 per target (and 0.5 at
    every option asked for that is not a rank alone)."""

    def build(model, targets, utterances, frame_shift_ms, key, settings, cache=None, extra_ranks=None,
              extra_options=None):
        calls.append((dict(key), len(utterances), extra_options))
        options = {name: {option_key(o): 0.5 for o in split_options(row)[1]} for name, row in
                   (extra_options or {}).items()}
        return LatencyTable(dict(key), 1.0, {t.name: TargetLatency(t.shape, 1.0, [], {}, options.get(t.name, {}))
                                             for t in targets}, {"build_seconds": 0.0})

    return build


def test_cached_table_is_reused_only_for_its_own_key(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(latency_table, "build_table", fake_build(calls))
    model = tiny_model()
    targets = discover_targets(model, exclude=["ctc_head"])
    ckpt, other = tmp_path / "a.ckpt", tmp_path / "b.ckpt"
    ckpt.write_bytes(b"baseline one")
    other.write_bytes(b"baseline two")
    one = settings(tmp_path)
    table, path = ensure_table(model, targets, batches(), 10.0, ckpt, one)
    assert len(calls) == 1 and calls[0][1] == 3 and path.is_file()
    stored = json.loads(path.read_text())["key"]
    assert stored == machine_key(ckpt, one, sparse_min_sparsity=None)
    assert stored["checkpoint_sha256"] == file_fingerprint(ckpt)
    assert set(stored) == set(KEY_FIELDS)
    assert path == table_path(one.dir, stored)
    again, again_path = ensure_table(model, targets, batches(), 10.0, ckpt, one)
    assert len(calls) == 1 and again_path == path and again.to_dict() == table.to_dict()  # reused
    _, two_threads = ensure_table(model, targets, batches(), 10.0, ckpt, settings(tmp_path, threads=2, clock="wall"))
    assert len(calls) == 2 and calls[1][0]["threads"] == 2 and two_threads != path  # another key: built
    _, other_path = ensure_table(model, targets, batches(), 10.0, other, one)
    assert len(calls) == 3 and calls[2][0]["checkpoint_sha256"] == file_fingerprint(other) and other_path != path
    ensure_table(model, targets, batches(), 10.0, ckpt, settings(tmp_path, rebuild=True))
    assert len(calls) == 4  # rebuild=true measures again
    # stages that only report: the table of this key when it exists, nothing measured
    latency_cfg = {name: getattr(one, name) for name in LatencySettings.__dataclass_fields__}
    reported, _ = stage_table("params", latency_cfg, ckpt, model, targets, batches, 10.0)
    assert reported is not None and reported.key["checkpoint_sha256"] == file_fingerprint(ckpt) and len(calls) == 4
    empty = {**latency_cfg, "dir": str(tmp_path / "none")}
    assert stage_table("macs", empty, ckpt, model, targets, batches, 10.0)[0] is None and len(calls) == 4
    built, _ = stage_table("latency", empty, ckpt, model, targets, batches, 10.0)
    assert built is not None and len(calls) == 5
    with pytest.raises(CostModelError, match="by='flops' is not a cost model"):
        stage_table("flops", latency_cfg, ckpt, model, targets, batches, 10.0)
    # a table of another target list is not reported, and refused for by=latency
    unknown = [*targets, Target("x", "linear", (4, 4))]
    assert stage_table("params", latency_cfg, ckpt, model, unknown, batches, 10.0)[0] is None
    with pytest.raises(CostModelError, match="target 'x' is not in latency table"):
        ensure_table(model, unknown, batches(), 10.0, ckpt, one)


JOINT_OPTIONS = {  # per target of the tiny model: sparsities, 4x1 blocks, ranks with pruned factors
    "encoder.layers.0": [FULL, 5, {"sparsity": 0.8}, {"sparsity": 0.8, "pattern": "4x1"},
                         {"rank": 4, "sparsity": 0.5, "pattern": "4x1"}],
    "encoder.layers.1": [{"sparsity": 0.9, "pattern": "4x1"}],
    "decoder.cell": [{"sparsity": 0.8, "pattern": "4x1"}, {"rank": 4, "sparsity": 0.75, "pattern": "4x1"}],
    "decoder.attention.mono_key": [{"sparsity": 0.75}],
    "decoder.output": [{"sparsity": 0.8, "pattern": "4x1"}],
    "decoder.attention.chunk_v": [{"sparsity": 0.5}],  # no rank pays: timed at its option all the same
}


def test_a_table_with_sparse_and_rank_plus_sparse_options_returns_their_times(tmp_path, monkeypatch):
    if lowrank_lstm.backend() != "cpp":
        pytest.fail(f"the C++ extension must build on this machine: {lowrank_lstm.backend_info()['reason']}")
    model = tiny_model()
    model.set_decoding(1.0, False, 0.5)  # pruned matrices with >= 50% zeros decode on the sparse kernels
    targets = discover_targets(model, exclude=["ctc_head"])
    sparse_runs = []

    def counted(*args, **kwargs):
        out = sparse_forward(*args, **kwargs)
        sparse_runs.append(out is not None)
        return out

    sparse_forward = lstm_module.sparse_layer_forward
    monkeypatch.setattr(lstm_module, "sparse_layer_forward", counted)
    key = {"cpu": "test", "sparse_min_sparsity": sparse_threshold(model)}
    table = build_table(model, targets, utterances(), 10.0, key, settings(tmp_path), extra_options=JOINT_OPTIONS)
    assert key["sparse_min_sparsity"] == 0.5 and any(sparse_runs)  # the pruned encoder layers ran the sparse kernel
    for name, options in JOINT_OPTIONS.items():
        entry = table.targets[name]
        expected = {option_key(o) for o in options if o != FULL and not isinstance(o, int)}
        assert set(entry.options) == expected, name
        for option in options:
            seconds = entry.seconds(option, name)
            if name.startswith("encoder.") or name == "decoder.attention.mono_key":  # timed as calls: > 0
                assert seconds > 0
            if isinstance(option, dict) and "sparsity" in option:
                assert seconds == entry.options[option_key(option)]
    assert 5 in [rank for rank, _ in table.targets["encoder.layers.0"].points]  # ranks still join the grid
    chunk_v = table.targets["decoder.attention.chunk_v"]
    assert chunk_v.points == [] and chunk_v.info["context"].startswith("decode_step")
    whole = table.meta["whole_dense_seconds"]
    assert table.fixed == pytest.approx(whole - sum(t.dense for t in table.targets.values()))
    mixed = {"encoder.layers.0": {"rank": 4, "sparsity": 0.5, "pattern": "4x1"}, "encoder.layers.1": 7,
             "decoder.cell": {"sparsity": 0.8, "pattern": "4x1"}, "decoder.output": FULL}
    expected = table.fixed + sum(table.seconds(name, mixed.get(name, FULL)) for name in table.targets)
    assert table.latency(mixed) == pytest.approx(expected)
    assert estimate_speedup(targets, mixed, "latency", table) == pytest.approx(whole / expected)
    scheme = Scheme.build(targets, mixed, "test", latency_table=table)
    assert scheme.estimates["speedup/latency"] == pytest.approx(whole / expected)
    unmeasured = {"encoder.layers.1": {"sparsity": 0.8, "pattern": "4x1"}}
    with pytest.raises(CostModelError, match="no time for target 'encoder.layers.1' at option s0.8@4x1"):
        estimate_speedup(targets, unmeasured, "latency", table)
    assert "speedup/latency" not in Scheme.build(targets, unmeasured, "test", latency_table=table).estimates


def test_a_table_of_another_sparse_threshold_or_older_format_is_not_reused(tmp_path, monkeypatch, caplog):
    calls, model, targets, ckpt, one = faked_measurement(tmp_path, monkeypatch)
    model.set_decoding(1.0, False, 0.5)
    options = {"decoder.output": [{"sparsity": 0.8, "pattern": "4x1"}]}
    table, path = ensure_table(model, targets, batches(), 10.0, ckpt, one, extra_options=options)
    assert len(calls) == 1 and table.key["sparse_min_sparsity"] == 0.5 and calls[0][2] == options
    assert table.targets["decoder.output"].options == {"s0.8@4x1": 0.5}
    ensure_table(model, targets, batches(), 10.0, ckpt, one, extra_options=options)
    assert len(calls) == 1  # reused
    model.set_decoding(1.0, False, 0.7)  # another threshold: another decoding path, another table
    _, other = ensure_table(model, targets, batches(), 10.0, ckpt, one, extra_options=options)
    assert len(calls) == 2 and calls[1][0]["sparse_min_sparsity"] == 0.7 and other != path
    model.set_decoding(1.0, False, None)
    ensure_table(model, targets, batches(), 10.0, ckpt, one, extra_options=options)
    assert len(calls) == 3 and calls[2][0]["sparse_min_sparsity"] is None
    # an option the cached table lacks: measured again, with the options it had
    model.set_decoding(1.0, False, 0.5)
    more = {"decoder.output": [{"sparsity": 0.9}]}
    table, again = ensure_table(model, targets, batches(), 10.0, ckpt, one, extra_options=more)
    assert len(calls) == 4 and again == path and set(table.targets["decoder.output"].options) == {"s0.8@4x1", "s0.9"}
    # a table of the older format under this key's name: not used, said in one line, measured again
    data = json.loads(path.read_text())
    data["format"] = "shrinkml-latency/1"
    path.write_text(json.dumps(data))
    with caplog.at_level("WARNING"):
        ensure_table(model, targets, batches(), 10.0, ckpt, one, extra_options=options)
    assert len(calls) == 5 and json.loads(path.read_text())["format"] == FORMAT
    assert any("format shrinkml-latency/1" in r.getMessage() for r in caplog.records)


ZEN3_FLAGS = "fpu sse2 ssse3 sse4_1 sse4_2 popcnt aes avx f16c rdrand lahf_lm fma bmi1 avx2 bmi2 sha_ni vaes"
ZEN4_FLAGS = ZEN3_FLAGS + " avx512f avx512dq avx512cd avx512bw avx512vl avx512_bf16 avx512vbmi avx512_vnni"


def cpuinfo(flags: str) -> str:
    return f"processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n"


def test_the_instruction_set_flags_tell_the_two_epyc_generations_apart():
    zen3, zen4 = isa_flags(cpuinfo(ZEN3_FLAGS)), isa_flags(cpuinfo(ZEN4_FLAGS))
    assert zen3 == ["avx", "avx2", "f16c", "fma", "sse4_1", "sse4_2"]  # sorted; aes, sha_ni, ... left out
    assert zen4 == sorted([*zen3, "avx512_bf16", "avx512_vnni", "avx512bw", "avx512cd", "avx512dq", "avx512f",
                           "avx512vbmi", "avx512vl"])
    assert isa_flags("model name\t: unknown\n") == []


def faked_measurement(tmp_path, monkeypatch):
    """A tiny model, its targets, a checkpoint file and default settings, with table building faked: the list
    of ``build_table`` calls (one per table measured), model, targets, checkpoint, settings."""
    calls: list = []
    monkeypatch.setattr(latency_table, "build_table", fake_build(calls))
    model = tiny_model()
    ckpt = tmp_path / "a.ckpt"
    ckpt.write_bytes(b"baseline")
    return calls, model, discover_targets(model, exclude=["ctc_head"]), ckpt, settings(tmp_path)


def test_a_table_of_another_instruction_set_or_measurement_setting_is_not_reused(tmp_path, monkeypatch):
    calls, model, targets, ckpt, one = faked_measurement(tmp_path, monkeypatch)
    monkeypatch.setattr(latency_table, "isa_flags", lambda: isa_flags(cpuinfo(ZEN3_FLAGS)))
    monkeypatch.setattr(latency_table, "cpu_capability", lambda: "AVX2")
    _, zen3_path = ensure_table(model, targets, batches(), 10.0, ckpt, one)
    assert calls[-1][0]["cpu_flags"] == isa_flags(cpuinfo(ZEN3_FLAGS)) and calls[-1][0]["cpu_capability"] == "AVX2"
    ensure_table(model, targets, batches(), 10.0, ckpt, one)
    assert len(calls) == 1  # the same machine and settings: reused
    monkeypatch.setattr(latency_table, "isa_flags", lambda: isa_flags(cpuinfo(ZEN4_FLAGS)))  # same name, AVX-512
    _, zen4_path = ensure_table(model, targets, batches(), 10.0, ckpt, one)
    assert len(calls) == 2 and zen4_path != zen3_path
    monkeypatch.setattr(latency_table, "cpu_capability", lambda: "AVX512")
    ensure_table(model, targets, batches(), 10.0, ckpt, one)
    assert len(calls) == 3
    paths = {zen3_path, zen4_path}
    for change in ({"clock": "wall"}, {"statistic": "median"}, {"grid": 4}, {"repeats": 3}, {"utterances": 2},
                   {"target_utterances": 1}, {"step_calls": 3}, {"step_repeats": 2}):
        before = len(calls)
        _, path = ensure_table(model, targets, batches(), 10.0, ckpt, settings(tmp_path, **change))
        assert len(calls) == before + 1 and path not in paths, change  # measured again, into another file
        paths.add(path)
        assert calls[-1][0][next(iter(change))] == next(iter(change.values()))


def test_a_table_of_the_older_key_is_measured_again(tmp_path, monkeypatch):
    """A table keyed only by CPU name, threads, torch, backend and checkpoint (before the instruction sets and
    measurement settings joined the key) is stale: measured again, never an error."""
    calls, model, targets, ckpt, one = faked_measurement(tmp_path, monkeypatch)
    key = machine_key(ckpt, one, sparse_min_sparsity=None)
    old_key = {name: key[name] for name in ("cpu", "threads", "torch", "backend", "checkpoint_sha256")}
    old = LatencyTable(old_key, 1.0, {t.name: TargetLatency(t.shape, 1.0, []) for t in targets}, {})
    old.save(table_path(one.dir, old_key))     # where the older code wrote it
    old.save(table_path(one.dir, key))         # and copied under this key's name
    latency_cfg = {name: getattr(one, name) for name in LatencySettings.__dataclass_fields__}
    assert stage_table("params", latency_cfg, ckpt, model, targets, batches, 10.0)[0] is None  # not reported
    table, path = ensure_table(model, targets, batches(), 10.0, ckpt, one)
    assert len(calls) == 1 and table.key == key and json.loads(path.read_text())["key"] == key


def default_settings(directory: Path) -> LatencySettings:
    """conf/latency/default.yaml's settings (as search.py reads them) with ``dir`` at ``directory``."""
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base=None):
        cfg = compose("search", overrides=[f"latency.dir={directory}"])
    return LatencySettings.from_config(cfg.latency)


def search_decoding():
    """conf/decoding/default.yaml as search.py reads it (the model it measures decodes with it)."""
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base=None):
        return compose("search").decoding


@pytest.fixture(scope="module")
def search_setup(tiny_corpus, tmp_path_factory):
    base = shared_dir(tmp_path_factory)
    run_dir, _ = trained_run(tiny_corpus, base)
    corpus = corpus_copy_for_runs(tiny_corpus, base)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    common = [f"ckpt={ckpt}", f"data.root={corpus}", f"data.cache_dir={base / 'features'}",
              f"data.tokenizer.vocab_size={VOCAB}", f"data.tokenizer.dir={base / 'tokenizer'}", "data.feature_jobs=1",
              "data.progress=false", "logger=csv", "proxy=random", "proxy_size=6",
              "search.space.kind=uniform", "search.space.options=4", "report.curve_speedups=[1.5]"]
    return ckpt, common


def test_search_by_latency_end_to_end(search_setup, tmp_path):
    """search.py by=latency reuses the table of this machine and checkpoint (written here by hand, so the test does
    not depend on timing), estimates with it everywhere and reports speedup/latency."""
    ckpt, common = search_setup
    targets = discover_targets(load_recognizer(ckpt).model, exclude=["ctc_head"])
    key = machine_key(ckpt, default_settings(tmp_path / "latency"),  # the key search.py computes
                      sparse_min_sparsity=search_decoding().sparse_min_sparsity)
    entries = {}
    for t in targets:
        top = largest_paying_rank(t.shape)
        entries[t.name] = TargetLatency(t.shape, 1.0, [(1, 0.1), (top, 0.9)] if top > 1 else [])
    table = LatencyTable(key, 1.0, entries, {"created": "2026-12-03", "build_seconds": 0.0})
    table.save(table_path(tmp_path / "latency", key))
    sensitivity = tmp_path / "sensitivity.json"  # the guided manual baseline keeps decoder.output dense
    sensitivity.write_text(json.dumps({"baseline_wer": 50.0, "energies": [0.7], "rows": [
        {"target": t.name, "energy": 0.7, "delta": 10.0 if t.name == "decoder.output" else 0.0} for t in targets]}))
    out = tmp_path / "search"
    result = run_script("../search", *common, "by=latency", f"latency.dir={tmp_path / 'latency'}", "search.steps=3",
                        "search.target_speedup=1.5", f"sensitivity_table={sensitivity}", f"output_dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reused" in result.stderr + result.stdout
    points = [json.loads(line) for line in (out / "explored-rank0.jsonl").open()]
    assert points and all(p["speedup"] == pytest.approx(table.speedup(p["ranks"])) for p in points)
    assert all(p["speedup"] >= 1.5 for p in points)
    best = Scheme.load(out / "best_scheme.json")
    assert best.estimates["speedup/latency"] == pytest.approx(table.speedup(best.ranks))
    assert best.estimates["speedup/latency"] >= 1.5
    report = json.loads((out / "report.json").read_text())
    assert all("speedup/latency" in row for row in report["rows"])
    guided = next(row for row in report["rows"] if row["model"] == "manual guided")
    assert guided["speedup/latency"] >= 1.5 and report["curves"]["guided"]  # estimated by latency, too
    assert report["summary"]["speedup/latency"] == best.estimates["speedup/latency"]
    assert "speedup/latency" in (out / "report.md").read_text()
    # by=params still reports speedup/latency beside it, from the same table
    params = run_script("../search", *common, "by=params", f"latency.dir={tmp_path / 'latency'}", "search.steps=2",
                        "search.target_speedup=1.5", f"sensitivity_table={tmp_path / 'none.json'}",
                        f"output_dir={tmp_path / 'params'}")
    assert params.returncode == 0, params.stderr[-3000:]
    best = Scheme.load(tmp_path / "params" / "best_scheme.json")
    assert best.estimates["speedup/latency"] == pytest.approx(table.speedup(best.ranks))
    bad = run_script("../search", *common, "by=flops", f"output_dir={tmp_path / 'bad'}")
    assert not (tmp_path / "bad" / "source.json").exists()  # refused before anything is written
    assert bad.returncode == 2 and "by='flops' is not a cost model; choose one of params, macs, latency" in bad.stderr
