"""benchmarks/search_workers.py on the tiny trained run: one- and two-worker Optuna searches at equal decodes, their
table, a finished run read back rather than rerun, and a failing worker's stderr shown."""

from __future__ import annotations

import subprocess
import sys

import pytest
from asr_helpers import BENCHMARKS, corpus_copy_for_runs, load_benchmark, search_overrides, shared_dir, trained_run


def test_one_and_two_workers_at_equal_decodes_and_read_back(tiny_corpus, tmp_path_factory, tmp_path, capsys):
    bench = load_benchmark("search_workers")
    base = shared_dir(tmp_path_factory)
    run_dir, _ = trained_run(tiny_corpus, base)
    corpus = corpus_copy_for_runs(tiny_corpus, base)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    overrides = search_overrides(base, corpus, ckpt, "search.searcher.n_startup_trials=2")
    rows = bench.benchmark([0], 4, str(ckpt), overrides, tmp_path)
    assert [(r["workers"], r["seed"]) for r in rows] == [(1, 0), (2, 0)]
    for row in rows:
        # max_decodes, not steps (12 per worker), ended it; a worker decoding when the other reached it adds one
        assert row["duplicates"] == 0 and 4 <= row["decodes"] <= 3 + row["workers"]
        assert 4 <= row["explored_in_report"] <= row["decodes"] and row["dev_split"] == "dev"
    per_worker = rows[1]["decodes_per_worker"]
    assert set(per_worker) == {0, 1} and sum(per_worker.values()) == rows[1]["decodes"]
    assert (tmp_path / "w2-s0" / "study.db").is_file() and not list((tmp_path / "w2-s0").glob("worker-*.lock"))
    text = bench.table(rows, 4)
    lines = {line.split(" | ")[0]: line.split(" | ") for line in text.splitlines() if line.startswith("| ")}
    assert set(lines) == {"| workers", "| 1", "| 2"}
    duplicates = lines["| workers"].index("duplicates")
    assert lines["| 1"][duplicates] == lines["| 2"][duplicates] == "0"
    assert "test WER (test)" in lines["| workers"] and "2 cores" in text
    capsys.readouterr()
    assert bench.benchmark([0], 4, str(ckpt), overrides, tmp_path) == rows  # finished: read back, not rerun
    assert "running:" not in capsys.readouterr().out
    assert bench.benchmark([0, 1], 4, str(ckpt), overrides, tmp_path, finished_only=True) == rows


def test_a_failing_worker_stops_the_others_and_the_benchmark(tmp_path, capsys):
    bench = load_benchmark("search_workers")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    failing = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"])
    assert bench.wait_all([sleeper, failing]) == [1]
    assert sleeper.returncode not in (None, 0)  # stopped, not left running
    with pytest.raises(SystemExit, match=r"worker\(s\) \[0\] of"):  # a search.py that cannot start
        bench.run_search(1, 0, 4, str(tmp_path / "missing.ckpt"), [], tmp_path / "w1-s0")
    assert "missing.ckpt" in capsys.readouterr().err


def test_a_missing_checkpoint_stops_with_one_line_naming_it(tmp_path):
    missing = tmp_path / "best.ckpt"
    result = subprocess.run([sys.executable, str(BENCHMARKS / "search_workers.py"), "--ckpt", str(missing),
                             "--out", str(tmp_path / "runs")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stderr.strip().splitlines() == [
        f"checkpoint {missing} not found: train the baseline with 'make baseline' (or pass --ckpt)"]
    assert not (tmp_path / "runs").exists()
