"""``search=optuna_tpe``: Optuna TPE over the search space as a peer of the RL search. A toy space (no speech)
checks the budget, the free infeasible trials and resuming from the study database after a kill; the tiny
corpus checks the whole stage (report, result chosen on dev, resume) and the stale-study guard."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from asr_helpers import search_stage
from loop_helpers import run_loop, toy_problem

from rl.explored import ExploredSet
from rl.loop import STATE_FILES, StaleSearchError, guard_state
from rl.searchers.optuna_tpe import STUDY_FILE, OptunaTpeSearcher, storage_url
from rl.space import SearchSpace

ROOT = Path(__file__).resolve().parents[1]
SPACE = SearchSpace(["a", "b", "c"], [[1, 2, 3, 4]] * 3)
A_T = 1.0


def estimate(ranks: dict) -> float:
    return 7.0 / sum(ranks.values())  # meets a_t = 1 when the ranks sum to 7 or less: half of the 64 schemes


class Killed(RuntimeError):
    pass


class Decoder:
    """The toy proxy WER (lower for larger ranks), counting decodes; ``kill_at``: raise on that decode."""

    def __init__(self, kill_at: int | None = None):
        self.decoded: list[dict] = []
        self.kill_at = kill_at

    def __call__(self, ranks: dict) -> float:
        assert estimate(ranks) >= A_T, "an infeasible scheme was decoded"
        if self.kill_at is not None and len(self.decoded) + 1 == self.kill_at:
            self.kill_at = None
            raise Killed
        self.decoded.append(dict(ranks))
        return 50.0 - 3.0 * sum(ranks.values()) + 0.1 * ranks["a"]


def tpe(out, space: SearchSpace = SPACE, a_t: float = A_T, **kwargs) -> OptunaTpeSearcher:
    settings = dict(storage=None, n_startup_trials=3, n_ei_candidates=24, multivariate=True, feasible_draws=100)
    return OptunaTpeSearcher(toy_problem(space, estimate, a_t, 20.0, out, seed=3), **{**settings, **kwargs})


def toy_search(out, steps: int, decoder: Decoder, **kwargs) -> OptunaTpeSearcher:
    """Run (or resume) ``steps`` search steps in ``out`` on the search loop, as run_search does."""
    searcher = tpe(out, **kwargs)
    run_loop(searcher, searcher.problem, decoder, steps)
    return searcher


def trials(out) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="search", storage=storage_url(out / STUDY_FILE)).get_trials()


def test_infeasible_trials_cost_no_decode_and_steps_bound_decodes(tmp_path):
    decoder = Decoder()
    module = toy_search(tmp_path, 8, decoder)
    done = trials(tmp_path)
    infeasible = [t for t in done if t.constraints["speedup_short"] > 0]
    feasible = [t for t in done if t.constraints["speedup_short"] <= 0]
    assert infeasible, "half of the space is infeasible: some trials must have been"
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in done)
    assert all(t.value < -10 for t in infeasible)  # Eq. 6, the RL search's reward below a_t
    assert len(feasible) == 8  # one feasible trial per step: the infeasible ones do not count
    points = list(ExploredSet(tmp_path / "explored-rank0.jsonl"))
    assert len(decoder.decoded) == len(points) == module.counts["evaluated"] <= 8  # a revisit decodes nothing
    assert [p["ranks"] for p in points] == decoder.decoded
    assert all(p["policy"] == "optuna_tpe" and p["speedup"] >= A_T for p in points)
    assert module.summary() == {"trials": len(done), "infeasible_trials": len(infeasible),
                                      "decodes": len(decoder.decoded)}


def test_a_killed_search_resumes_from_the_database_without_redecoding(tmp_path):
    whole = Decoder()
    toy_search(tmp_path / "whole", 6, whole)
    killed = Decoder(kill_at=3)
    with pytest.raises(Killed):
        toy_search(tmp_path / "killed", 6, killed)
    before = trials(tmp_path / "killed")
    assert before[-1].state == optuna.trial.TrialState.RUNNING  # asked, never told
    resumed = Decoder()
    toy_search(tmp_path / "killed", 6, resumed)
    assert not [r for r in resumed.decoded if r in killed.decoded]  # nothing decoded twice
    after = trials(tmp_path / "killed")
    assert [(t.params, t.value) for t in after[: len(before) - 1]] == [(t.params, t.value) for t in before[:-1]]
    assert after[len(before) - 1].params == before[-1].params  # the trial left running is finished, not redrawn
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in after)
    # the study's history is the same as an uninterrupted search's: the same trials, the same decodes
    assert [t.params for t in after] == [t.params for t in trials(tmp_path / "whole")]
    assert killed.decoded + resumed.decoded == whole.decoded


def test_a_kill_between_decode_and_tell_reuses_the_explored_point(tmp_path, monkeypatch):
    tell = optuna.Study.tell
    calls = {"feasible": 0}

    def flaky_tell(study, trial, values=None, **kwargs):
        if values is not None and values > -10:  # a WER reward: the scheme was decoded and stored
            calls["feasible"] += 1
            if calls["feasible"] == 2:
                raise Killed
        return tell(study, trial, values, **kwargs)

    monkeypatch.setattr(optuna.Study, "tell", flaky_tell)
    first = Decoder()
    with pytest.raises(Killed):
        toy_search(tmp_path, 4, first)
    monkeypatch.setattr(optuna.Study, "tell", tell)
    second = Decoder()
    toy_search(tmp_path, 4, second)
    assert first.decoded and not [r for r in second.decoded if r in first.decoded]
    done = trials(tmp_path)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in done)
    assert sum(t.constraints["speedup_short"] <= 0 for t in done) == 4


def guard(out, searcher: OptunaTpeSearcher, on_stale: str) -> None:
    """The search loop's one stale-state guard, with this searcher's part, as run_search calls it."""
    guard_state(out, {"checkpoint_sha256": "same", "settings": searcher.signature()}, on_stale,
                (*STATE_FILES, *searcher.state_files()), searcher.stale_reason(out))


def test_a_study_of_another_search_is_set_aside(tmp_path):
    guard(tmp_path, tpe(tmp_path), "error")  # a fresh directory: what the state is made for is recorded
    toy_search(tmp_path, 2, Decoder())
    guard(tmp_path, tpe(tmp_path), "error")  # the same search: resumed as it is
    other = tpe(tmp_path, SearchSpace(["a", "b", "c"], [[1, 2, 3, 5]] * 3))  # the same shape, other ranks
    with pytest.raises(StaleSearchError, match="another search space.*on_stale=restart"):
        guard(tmp_path, other, "error")
    with pytest.raises(StaleSearchError, match="on_stale=restart"):
        guard(tmp_path, tpe(tmp_path, a_t=1.5), "error")  # another a_t
    guard(tmp_path, other, "restart")
    assert not (tmp_path / STUDY_FILE).exists() and not (tmp_path / "explored-rank0.jsonl").exists()
    aside = list(tmp_path.glob(f"stale-*/{STUDY_FILE}"))
    assert len(aside) == 1 and (aside[0].parent / "explored-rank0.jsonl").is_file()  # nothing lost
    (tmp_path / STUDY_FILE).write_text("not a database")
    with pytest.raises(StaleSearchError, match="not an Optuna study database"):
        guard(tmp_path, tpe(tmp_path), "error")
    guard(tmp_path, tpe(tmp_path), "restart")
    assert [p.read_text() for p in tmp_path.glob(f"stale-*/{STUDY_FILE}")].count("not a database") == 1


# -- the stage on the tiny corpus ---------------------------------------------------------------------------
def test_optuna_search_reports_chooses_on_dev_and_resumes(tiny_corpus, tmp_path_factory):
    search, out = search_stage(tiny_corpus, tmp_path_factory, "search_optuna", "search=optuna_tpe",
                               "search.searcher.n_startup_trials=2")
    first = search("search.steps=2")
    points = [json.loads(line) for line in (out / "explored-rank0.jsonl").open()]
    first_trials = trials(out)
    report = search("search.steps=3")
    summary = report["summary"]
    assert first["summary"]["steps"] == 2 and summary["steps"] == 3
    assert points and all(p["policy"] == "optuna_tpe" for p in points)
    again = [json.loads(line) for line in (out / "explored-rank0.jsonl").open()]
    assert again[: len(points)] == points and len(again) <= 3  # kept, at most one decode per step
    assert [t.params for t in trials(out)[: len(first_trials)]] == [t.params for t in first_trials]
    assert summary["trials"] == len(trials(out)) and summary["decodes"] <= 3
    rows = [r for r in report["rows"] if r["model"].startswith("optuna_tpe #")]
    assert rows and [r["selected"] for r in rows].count("on dev") == 1
    chosen = json.loads((out / "best_scheme.json").read_text())
    assert chosen["provenance"] == "optuna" and chosen["meta"]["selected_on"] == "dev"
    assert chosen["metrics"]["wer/dev"] == min(r["wer/dev"] for r in rows)
    assert (out / "explored.png").is_file() and "| baseline |" in (out / "report.md").read_text()


def test_workers_that_create_the_study_at_once_share_one(tmp_path):
    """Several processes opening a new study together (the workers of one search starting at once) all succeed."""
    code = "\n".join([
        "import os, sys, time", "from pathlib import Path", "from test_search_optuna import tpe",
        "out = Path(sys.argv[1])", "(out / f'ready-{os.getpid()}').touch()", "while not (out / 'go').exists():",
        "    time.sleep(0.005)", "assert len(tpe(out).study.get_trials()) == 0"])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")])}
    processes = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], env=env, stderr=subprocess.PIPE,
                                  text=True) for _ in range(4)]
    deadline = time.time() + 120
    while len(list(tmp_path.glob("ready-*"))) < len(processes):  # every process imported and waiting
        assert time.time() < deadline and all(p.poll() is None for p in processes), "a process did not start"
        time.sleep(0.05)
    (tmp_path / "go").touch()
    for process in processes:
        assert process.wait(timeout=120) == 0, process.stderr.read()[-3000:]
    assert optuna.study.get_all_study_names(storage_url(tmp_path / STUDY_FILE)) == ["search"]
