"""scripts/compare_runs.py: rows from stage runs, skipped runs with reasons, table and figures,
on real offline W&B runs it did not create (including a damaged one)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shrinkml.compare import (
    compare,
    find_offline_runs,
    markdown,
    offline_runs,
    read_online_runs,
    read_stage_times,
    write_outputs,
)

ROOT = Path(__file__).resolve().parents[1]


def run(name, stage, summary, source=None, order=0.0, output_dir=None, state="finished"):
    config = {"stage": stage, "output_dir": output_dir or f"runs/{name}"} if stage else {}
    return {"name": name, "state": state, "config": config, "summary": summary, "source": source or name,
            "order": order}


BASELINE = {"params": 3000, "size_mb": 12.0, "wer/dev": 30.0, "wer/test": 28.0}
RETRAIN = {"params": 900, "size_mb": 3.5, "wer/dev": 33.0, "wer/test": 31.0, "seed/wer/dev": 45.0,
           "provenance": "automl", "speedup/params": 3.9, "speedup/macs": 4.1}


def test_rows_skips_and_supersedes():
    result = compare([
        run("baseline", "baseline", BASELINE, order=2.0),
        run("baseline", "baseline", {"wer/dev": 90.0}, source="killed", order=1.0, state="crashed"),
        run("baseline-old", "baseline", {**BASELINE, "wer/test": 50.0}, source="old", order=0.5,
            output_dir="runs/baseline"),
        run("retrain_automl", "retrain", RETRAIN),
        run("sensitivity", "sensitivity", {"wer/dev": 33.0}),
        run("someone-else", None, BASELINE),
        {"name": "broken", "state": "unknown", "config": {}, "summary": {}, "source": "broken"},
    ])
    assert [(r["stage"], r["name"]) for r in result.rows] == [("baseline", "baseline"), ("baseline", "baseline-old"),
                                                              ("retrain", "retrain_automl")]
    reasons = dict(result.skipped)
    assert "state crashed" in reasons["killed"]
    assert "describes no single model" in reasons["sensitivity"]
    assert "no 'stage'" in reasons["someone-else"]
    assert "damaged" in reasons["broken"]
    assert result.rows[0]["speedup/params"] == 1.0 and result.rows[0]["provenance"] == "dense"
    assert result.columns[-1] == "seed/wer/dev"
    table = markdown(result)
    assert "| retrain | retrain_automl | automl | 3.90 | 4.10 |" in table and "Skipped runs" in table


def test_same_stage_into_the_same_directory_keeps_the_newest():
    result = compare([run("baseline", "baseline", {**BASELINE, "wer/test": 40.0}, source="first", order=1.0),
                      run("baseline", "baseline", BASELINE, source="resumed", order=2.0)])
    assert [r["source"] for r in result.rows] == ["resumed"]
    assert result.skipped == [("first", "superseded by the newer run resumed")]


def test_outputs_are_written(tmp_path):
    (tmp_path / "times.json").write_text('{"baseline": {"seconds": 1830.0, "finished": "now"}, "bad": 3}')
    result = compare([run("baseline", "baseline", BASELINE), run("retrain_automl", "retrain", RETRAIN),
                      run("retrain_guided", "retrain", {**RETRAIN, "provenance": "guided", "seed/wer/dev": 60.0})])
    result.stage_times = read_stage_times(tmp_path / "times.json")
    assert "| baseline | 30.5 | now |" in markdown(result) and "bad" not in markdown(result)
    written = write_outputs(result, tmp_path, "test")
    assert set(written) == {"markdown", "csv", "pareto", "retraining"}
    rows = list(csv.DictReader(Path(written["csv"]).read_text().splitlines()))
    assert [r["name"] for r in rows] == ["baseline", "retrain_automl", "retrain_guided"]
    assert float(rows[2]["seed/wer/dev"]) == 60.0 and rows[0]["speedup/measured"] == "1.0"
    assert Path(written["pareto"]).stat().st_size > 1000


def test_online_runs_are_read_through_the_api():
    class FakeRun:
        name, state, id = "baseline", "finished", "abc"
        config, summary = {"stage": "baseline"}, BASELINE

    class FakeApi:
        def runs(self, path):
            assert path == "team/shrinkml"
            return [FakeRun()]

    result = compare(read_online_runs("shrinkml", "team", api=FakeApi()))
    assert result.rows[0]["wer/test"] == 28.0 and result.rows[0]["source"] == "team/shrinkml/abc"


@pytest.fixture(scope="module")
def offline_dir(tmp_path_factory):
    """Real offline W&B runs, as the stages write them: a finished baseline, a run without a stage,
    and a run whose log is damaged afterwards."""
    root = tmp_path_factory.mktemp("wandb_runs")
    script = (
        "import sys, wandb\n"
        "root, name, stage = sys.argv[1:4]\n"
        "config = {'stage': stage, 'output_dir': root + '/' + name} if stage != '-' else {'lr': 1}\n"
        "r = wandb.init(mode='offline', dir=root + '/' + name, name=name, project='shrinkml', config=config)\n"
        "r.summary.update({'params': 3000, 'size_mb': 12.0, 'wer/dev': 30.0, 'wer/test': 28.5})\n"
        "r.finish()\n"
    )
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}
    for name, stage in (("baseline", "baseline"), ("foreign", "-"), ("damaged", "baseline")):
        (root / name).mkdir()
        done = subprocess.run([sys.executable, "-c", script, str(root), name, stage], env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    log = next((root / "damaged").rglob("*.wandb"))
    log.write_bytes(log.read_bytes()[:40])
    return root


def test_offline_runs_through_the_script(offline_dir, tmp_path):
    assert len(find_offline_runs(offline_dir)) == 3
    runs = list(offline_runs(offline_dir))
    assert {r["name"] for r in runs if r["config"].get("stage") == "baseline"} == {"baseline"}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare_runs.py"), f"runs_dir={offline_dir}",
                           f"output_dir={tmp_path}", f"stage_times={tmp_path / 'no-times.json'}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| baseline | baseline | dense | 1.00 |" in done.stdout
    assert "foreign" in done.stdout and "no 'stage'" in done.stdout
    assert "damaged" in done.stdout
    assert (tmp_path / "comparison.md").read_text().count("| baseline |") == 1
    missing = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare_runs.py"),
                              f"runs_dir={tmp_path / 'nowhere'}", f"output_dir={tmp_path}"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=600)
    assert missing.returncode == 2 and "nowhere" in missing.stderr


def test_timed_records_a_stage_and_keeps_its_exit_status(tmp_path):
    env = {**os.environ, "STAGE_TIMES": str(tmp_path / "times.json")}
    for stage, code in (("search aggressive", 0), ("retrain automl", 3)):
        done = subprocess.run([sys.executable, str(ROOT / "scripts" / "timed.py"), stage, "--", sys.executable, "-c",
                               f"import sys; sys.exit({code})"], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == code and f"stage '{stage}'" in done.stdout
    times = read_stage_times(tmp_path / "times.json")
    assert set(times) == {"search aggressive", "retrain automl"} and times["retrain automl"]["returncode"] == 3
    assert all(0 <= entry["seconds"] < 60 for entry in times.values())
