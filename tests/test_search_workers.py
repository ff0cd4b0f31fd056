"""Several workers, one search: processes that share an output directory (one explored set, one Optuna study)
decode no scheme twice, a worker killed with SIGKILL loses no decoded scheme, and a second process on the same
worker of a search is refused with one line (a lock of a process that is gone is taken over)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from asr_helpers import corpus_copy_for_runs, search_overrides, shared_dir, trained_run
from test_compress_scripts import run_script

from rl.explored import ExploredSet
from rl.loop import SearchBusyError, WorkerLock
from rl.searchers.optuna_tpe import STUDY_FILE, storage_url

ROOT = Path(__file__).resolve().parents[1]


def start_worker(out: Path, worker: int, workers: int, delay: float, start: int = 0) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT / 'tests'}", "OMP_NUM_THREADS": "1"}
    code = f"from loop_helpers import toy_worker; toy_worker({str(out)!r}, {worker}, {workers}, {delay}, {start})"
    return subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)


def start_together(out: Path, workers: list[subprocess.Popen]) -> None:
    deadline = time.time() + 120
    while len(list(out.glob("ready-worker*"))) < len(workers):
        assert time.time() < deadline and all(w.poll() is None for w in workers), "a worker did not start"
        time.sleep(0.05)
    (out / "go").touch()


def decodes(out: Path) -> list[str]:
    return [line for path in sorted(out.glob("decodes-worker*.txt")) for line in path.read_text().splitlines()]


def explored_keys(out: Path) -> list[str]:
    return [json.dumps(json.loads(line)["ranks"], sort_keys=True) for path in sorted(out.glob("explored-rank*.jsonl"))
            for line in path.read_text().splitlines()]


def test_two_workers_walking_the_same_schemes_decode_each_once(tmp_path):
    workers = [start_worker(tmp_path, k, 2, 0.1) for k in (0, 1)]
    start_together(tmp_path, workers)
    for process in workers:
        assert process.wait(timeout=300) == 0, process.stderr.read()[-3000:]
    decoded = decodes(tmp_path)
    assert len(decoded) == len(set(decoded)) == 27  # the whole grid, every scheme once
    assert sorted(explored_keys(tmp_path)) == sorted(decoded)
    assert not list((tmp_path / "claims").iterdir()) and not list(tmp_path.glob("worker-*.lock"))


def test_a_killed_worker_loses_no_decoded_scheme(tmp_path):
    # the victim walks from the grid's middle, so it surely decodes before it is killed (in the same order it
    # could find every scheme claimed by the survivor)
    survivor, victim = start_worker(tmp_path, 0, 2, 0.4), start_worker(tmp_path, 1, 2, 0.2, start=13)
    start_together(tmp_path, [survivor, victim])
    deadline = time.time() + 120
    while not (tmp_path / "decodes-worker1.txt").is_file() or len(decodes(tmp_path)) < 4:
        assert time.time() < deadline and victim.poll() is None, "the workers decoded nothing"
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)  # most likely mid-decode: its claim and its lock are left behind
    victim.wait()
    killed_decodes = (tmp_path / "decodes-worker1.txt").read_text().splitlines()
    assert survivor.wait(timeout=300) == 0, survivor.stderr.read()[-3000:]
    rerun = start_worker(tmp_path, 1, 2, 0.0, start=13)  # the killed worker again: its lock and claim are taken over
    assert rerun.wait(timeout=300) == 0, rerun.stderr.read()[-3000:]
    keys = explored_keys(tmp_path)
    assert len(keys) == len(set(keys)) == 27
    # every decode that finished was written (the kill may have cut one off before its point was: decoded again)
    assert set(decodes(tmp_path)) == set(keys) and len(decodes(tmp_path)) <= 28
    assert set(killed_decodes) <= set(keys)


def test_a_second_process_on_the_same_worker_is_refused_and_a_dead_ones_lock_taken_over(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        host = os.uname().nodename
        (tmp_path / "worker-0.lock").write_text(json.dumps({"pid": sleeper.pid, "host": host, "worker": 0}))
        busy = f"in use by worker 0 of a search \\(pid {sleeper.pid}.*search.workers"
        with pytest.raises(SearchBusyError, match=busy):
            WorkerLock(tmp_path, 0).__enter__()
        with WorkerLock(tmp_path, 1):  # another worker of the same search: welcome
            assert json.loads((tmp_path / "worker-1.lock").read_text())["pid"] == os.getpid()
        assert not (tmp_path / "worker-1.lock").exists()  # released
    finally:
        sleeper.kill()
        sleeper.wait()
    with WorkerLock(tmp_path, 0):  # the sleeper is gone: its lock is taken over
        assert json.loads((tmp_path / "worker-0.lock").read_text())["pid"] == os.getpid()
        with pytest.raises(SearchBusyError):
            WorkerLock(tmp_path, 0).__enter__()  # the same worker twice, even in one process


def test_claims_of_a_live_process_hold_and_of_a_dead_one_are_taken_over(tmp_path):
    explored = ExploredSet.shared(tmp_path, 0)
    ranks = {"a": 1}
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        path = explored.claim_path(ranks)
        path.parent.mkdir()
        path.write_text(json.dumps({"pid": sleeper.pid, "host": os.uname().nodename}))
        assert not explored.claim(ranks)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert explored.claim(ranks) and json.loads(path.read_text())["pid"] == os.getpid()
    explored.release(ranks)
    assert not path.exists()


# -- the stage: two search.py workers on one Optuna study ---------------------------------------------------
def test_two_search_workers_share_one_study_and_decode_no_scheme_twice(tiny_corpus, tmp_path_factory):
    base = shared_dir(tmp_path_factory)
    run_dir, _ = trained_run(tiny_corpus, base)
    corpus = corpus_copy_for_runs(tiny_corpus, base)
    out = base / "search_workers"
    common = [*search_overrides(base, corpus, run_dir / "checkpoints" / "last.ckpt"), f"output_dir={out}",
              "search=optuna_tpe", "search.steps=4", "search.searcher.n_startup_trials=2", "search.workers=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen([sys.executable, str(ROOT / "search.py"), *common, f"search.worker={k}"], cwd=ROOT,
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for k in (0, 1)]
    for process in workers:
        assert process.wait(timeout=600) == 0, process.stderr.read()[-3000:]
    keys = explored_keys(out)
    assert len(keys) == len(set(keys)) > 0  # no scheme decoded twice
    points = [json.loads(line) for path in out.glob("explored-rank*.jsonl") for line in path.read_text().splitlines()]
    assert {p["rank"] for p in points} == {0, 1}  # both workers decoded
    trials = optuna.load_study(study_name="search", storage=storage_url(out / STUDY_FILE)).get_trials()
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert {(t.user_attrs["rank"], t.user_attrs["step"]) for t in trials if t.constraints["speedup_short"] <= 0} \
        == {(k, step) for k in (0, 1) for step in range(4)}  # every step of both workers, once
    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["explored"] == len(keys)
    wrong = run_script("../search", *common, "search.worker=2")
    assert wrong.returncode == 2 and "search.worker=2 must be in 0 .. search.workers - 1" in wrong.stderr
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:  # an identical search while worker 0 runs: refused with one line, nothing touched
        (out / "worker-0.lock").write_text(json.dumps({"pid": sleeper.pid, "host": os.uname().nodename}))
        before = explored_keys(out)
        busy = run_script("../search", *common, "search.worker=0")
        assert busy.returncode == 2 and f"is in use by worker 0 of a search (pid {sleeper.pid}" in busy.stderr
        assert explored_keys(out) == before
    finally:
        sleeper.kill()
        sleeper.wait()
