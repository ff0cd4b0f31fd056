"""search.py end to end on a tiny trained checkpoint: Algorithm 1 through the real Hydra entry point,
its result files, resuming by running the same command again, and bad input."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest
import torch
from asr_helpers import corpus_copy_for_runs, search_overrides, shared_dir, trained_run
from omegaconf import OmegaConf
from test_compress_scripts import run_script
from torch import nn

from compress.scheme import Scheme, current_ranks, file_fingerprint
from compress.svd import SvdCache
from compress.targets import discover_targets
from rl.explored import ExploredSet
from rl.loop import StaleSearchError, guard_state
from shrinkml import search


@pytest.fixture(scope="module")
def setup(tiny_corpus, tmp_path_factory):
    base = shared_dir(tmp_path_factory)
    run_dir, _ = trained_run(tiny_corpus, base)
    corpus = corpus_copy_for_runs(tiny_corpus, base)
    common = search_overrides(base, corpus, run_dir / "checkpoints" / "last.ckpt")
    return common, base


def read_points(out) -> list[dict]:
    return [json.loads(line) for line in (out / "explored-rank0.jsonl").open()]


def test_search_runs_resumes_and_reports(setup):
    common, base = setup
    out = base / "search"
    first = run_script("../search", *common, "search.steps=4", f"output_dir={out}")
    assert first.returncode == 0, first.stderr[-3000:]
    first_seconds = json.loads((out / "wall_time.json").read_text())["attempt_seconds"]
    assert len(first_seconds) == 1 and first_seconds[0] > 0
    points = read_points(out)
    assert points and all(p["speedup"] >= 1.5 for p in points)
    resumed = run_script("../search", *common, "search.steps=8", f"output_dir={out}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = read_points(out)
    assert again[: len(points)] == points  # nothing lost or rewritten
    keys = [json.dumps(p["ranks"], sort_keys=True) for p in again]
    assert len(keys) == len(set(keys))  # no scheme evaluated twice
    assert max(p["step"] for p in again) <= 7 and max(p["step"] for p in again) >= 4
    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["steps"] == 8 and report["summary"]["explored"] == len(again)
    attempts = json.loads((out / "wall_time.json").read_text())["attempt_seconds"]
    assert len(attempts) == 2 and attempts[0] == first_seconds[0]  # the first attempt is kept, the resume added
    wall = report["summary"]["search_wall_seconds"]
    assert report["summary"]["search_attempts"] == 2 and first_seconds[0] < wall <= sum(attempts) + 0.1
    models = [r["model"] for r in report["rows"]]
    assert models[0] == "baseline" and "manual naive" in models and "rl #1" in models
    best = Scheme.load(out / "best_scheme.json")
    assert best.provenance == "automl" and best.estimates["speedup/params"] >= 1.5
    assert "wer/test" in best.metrics and best.meta["found_at_step"] is not None
    assert best.meta["selected_on"] == "dev" and best.metrics["wer/dev"] == report["summary"]["wer/dev"]
    assert (out / "explored.png").stat().st_size > 1000 and "| baseline |" in (out / "report.md").read_text()
    # a report made from more of the shared explored set (another worker's, written first) is kept, not overwritten
    fuller = {**report, "summary": {**report["summary"], "explored": report["summary"]["explored"] + 5}}
    (out / "report.json").write_text(json.dumps(fuller))
    rerun = run_script("../search", *common, "search.steps=8", f"output_dir={out}")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert json.loads((out / "report.json").read_text()) == fuller


def test_only_a_report_of_more_explored_schemes_is_kept(tmp_path):
    path = tmp_path / "report.json"
    assert search.fuller_report(path, 3) is None  # none yet
    path.write_text(json.dumps({"summary": {"explored": 4}, "rows": []}))
    assert search.fuller_report(path, 3) == {"summary": {"explored": 4}, "rows": []}
    assert search.fuller_report(path, 4) is None and search.fuller_report(path, 5) is None
    path.write_text("{not json")
    assert search.fuller_report(path, 0) is None


def test_search_bad_input(setup, tmp_path):
    common, base = setup
    result = run_script("../search", *common, "search.target_speedup=50", f"output_dir={tmp_path / 'a'}")
    assert result.returncode == 2 and "out of reach" in result.stderr
    result = run_script("../search", *common, "proxy=condensed", f"condensed_list={tmp_path / 'none.txt'}",
                        f"output_dir={tmp_path / 'b'}")
    assert result.returncode == 2 and "run scripts/condense.py first" in result.stderr
    (tmp_path / "bad.txt").write_text("no-such-utterance\n")
    result = run_script("../search", *common, "proxy=condensed", f"condensed_list={tmp_path / 'bad.txt'}",
                        f"output_dir={tmp_path / 'c'}")
    assert result.returncode == 2 and "no-such-utterance" in result.stderr


def guard_search_state(out, ckpt, on_stale: str) -> None:
    """The search loop's one guard with the stage's signature of checkpoint ``ckpt`` (the searcher's part fixed)."""
    sha = file_fingerprint(ckpt)
    guard_state(out, {"checkpoint_sha256": sha, "baseline_proxy_wer": 20.0, "searcher": "rl", "settings": {}},
                on_stale, note={"checkpoint": str(ckpt), "checkpoint_sha256": sha})


def test_search_state_of_another_checkpoint_is_not_resumed(tmp_path):
    ckpt, other = tmp_path / "a.ckpt", tmp_path / "b.ckpt"
    ckpt.write_bytes(b"baseline one")
    other.write_bytes(b"baseline two")
    out = tmp_path / "search"
    out.mkdir()
    guard_search_state(out, ckpt, "error")  # a fresh directory: the source is recorded
    (out / "explored-rank0.jsonl").write_text('{"ranks": {}}\n')
    guard_search_state(out, ckpt, "error")  # same checkpoint: the state is resumed as it is
    assert (out / "explored-rank0.jsonl").is_file()
    with pytest.raises(StaleSearchError, match="another baseline checkpoint.*on_stale=restart"):
        guard_search_state(out, other, "error")
    guard_search_state(out, other, "restart")
    assert not (out / "explored-rank0.jsonl").exists()
    kept = list(out.glob("stale-*/explored-rank0.jsonl"))
    assert len(kept) == 1 and kept[0].read_text() == '{"ranks": {}}\n'  # nothing lost
    assert json.loads((out / "source.json").read_text())["checkpoint_sha256"] == file_fingerprint(other)


def test_result_scheme_is_chosen_on_the_whole_dev_split_not_on_test(tmp_path, monkeypatch):
    """finalize with a stub scorer: the proxy prefers A, test prefers A too, the whole dev split prefers B.
    The result must be B, the top-k scheme with the lowest whole-dev WER; test is only reported."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 60), nn.Linear(60, 30), nn.Linear(30, 10))
    targets = discover_targets(model)
    schemes = {"A": {"0": 4, "1": 4, "2": 2}, "B": {"0": 6, "1": 4, "2": 2}, "C": {"0": 4, "1": 6, "2": 2}}
    wer_of = {"A": {"dev": 30.0, "test": 10.0}, "B": {"dev": 20.0, "test": 25.0}, "C": {"dev": 25.0, "test": 15.0}}
    name_of = {json.dumps(r, sort_keys=True): name for name, r in schemes.items()}

    def stub_evaluate(compressed, batches, tokenizer):  # batches is the split's name (stub eval_batches)
        name = name_of.get(json.dumps(current_ranks(compressed, targets), sort_keys=True))
        return SimpleNamespace(wer=wer_of[name][batches] if name else 50.0)

    monkeypatch.setattr(search, "eval_batches", lambda datamodule, split: split)
    monkeypatch.setattr(search, "evaluate", stub_evaluate)
    explored = ExploredSet(tmp_path / "explored-rank0.jsonl")
    for step, (name, proxy_wer) in enumerate([("A", 5.0), ("B", 6.0), ("C", 7.0)]):
        explored.add({"ranks": schemes[name], "wer": proxy_wer, "speedup": 2.0, "step": step})
    (tmp_path / "base.ckpt").write_bytes(b"baseline")
    cfg = OmegaConf.create({
        "output_dir": str(tmp_path), "ckpt": str(tmp_path / "base.ckpt"), "split": "dev", "test_splits": ["test"],
        "by": "params", "sensitivity_table": str(tmp_path / "none.json"), "guided": {"energy": 0.7, "max_delta": 2.0},
        "report": {"top_k": 3, "curve_speedups": []},
        "search": {"name": "toy", "target_speedup": 1.5, "steps": 3}})
    OmegaConf.set_struct(cfg, True)
    module = SimpleNamespace(model=model, assets=SimpleNamespace(tokenizer=None))
    searcher = SimpleNamespace(policy="rl", provenance="automl")
    loop_summary = {"acceptance": 1.0, "mean_step_seconds": 0.1, "mean_evaluated_step_seconds": 0.1}
    report = search.finalize(cfg, module, targets, SvdCache(), None, explored, 4.0, lambda m: 50.0, searcher,
                             loop_summary, wall_seconds=1.0, proxy_decode_seconds=0.1, attempts=1)
    best = Scheme.load(tmp_path / "best_scheme.json")
    assert best.ranks == schemes["B"]  # not A (best proxy and best test WER), not C (second on test)
    assert best.metrics["wer/dev"] == 20.0 and best.metrics["wer/test"] == 25.0 and best.meta["selected_on"] == "dev"
    summary = report["summary"]
    assert summary["selected_on"] == "dev" and summary["wer/dev"] == 20.0 and summary["wer/test"] == 25.0
    assert all("wer/dev" in row and "wer/test" in row for row in report["rows"])  # baseline, manual, top-k
    assert [r["wer/test"] for r in report["rows"] if r["model"].startswith("rl #")] == [10.0, 25.0, 15.0]
    assert [r["selected"] for r in report["rows"] if r["model"].startswith("rl #")] == ["", "on dev", ""]
    assert "| wer/dev | wer/test |" in (tmp_path / "report.md").read_text()


def test_search_wall_time_is_the_total_over_attempts(tmp_path):
    path = tmp_path / "wall_time.json"
    first = search.SearchClock(path, started=time.time() - 100.0)  # an attempt that ran 100 s ...
    first.save()  # ... and was killed after this step
    resumed = search.SearchClock(path, started=time.time() - 50.0)
    assert resumed.attempts == 2 and 150.0 <= resumed.total() < 160.0
    resumed.save()
    assert [round(s) for s in json.loads(path.read_text())["attempt_seconds"]] == [100, 50]
    path.write_text('{"seconds": 3}')
    with pytest.raises(ValueError, match="wall_time.json is not a search wall-time record"):
        search.SearchClock(path, started=time.time())
