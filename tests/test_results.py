"""The one results reader (shrinkml.results): a run directory's summary, saved config and checkpoint, with one
clear error for a missing or damaged file; and the budget's epochs taken from the composed config."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from common.errors import KnownError
from shrinkml.budget import student_epochs
from shrinkml.results import (
    ResultsError,
    UnfinishedRun,
    read_json,
    read_run,
    relative_change,
)

CONF = Path(__file__).resolve().parents[1] / "conf"


def finished(run_dir: Path, config: str = "trainer:\n  max_epochs: 20\n", **summary) -> Path:
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(config)
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "best.ckpt").write_bytes(b"weights")
    (run_dir / "summary.json").write_text(json.dumps({"best_checkpoint": str(run_dir / "checkpoints" / "best.ckpt"),
                                                      **summary}))
    return run_dir


def test_a_run_directory_reads_as_its_summary_config_and_checkpoint(tmp_path):
    run = read_run(finished(tmp_path / "retrain_dense", **{"wer/test": 18.0}))
    assert (run.name, run.source, run.state) == ("retrain_dense", str(tmp_path / "retrain_dense"), "finished")
    assert run.summary["wer/test"] == 18.0 and run.setting("trainer.max_epochs") == 20
    assert run.setting("compress.sparsity", "none") == "none"
    assert run.checkpoint == str(tmp_path / "retrain_dense" / "checkpoints" / "best.ckpt")
    assert run.checkpoint_sha256() == hashlib.sha256(b"weights").hexdigest()


def test_missing_and_damaged_files_are_one_clear_error_each(tmp_path):
    with pytest.raises(UnfinishedRun, match=r"unfinished \(no summary.json\)"):
        read_run(tmp_path / "never_run")
    run_dir = finished(tmp_path / "damaged")
    (run_dir / "summary.json").write_text('{"wer/test": 1')
    with pytest.raises(ResultsError, match=r"damaged/summary.json is not valid JSON .*rerun the run's stage"):
        read_run(run_dir)
    run_dir = finished(tmp_path / "bad_config", config="trainer: [unclosed\n")
    with pytest.raises(ResultsError, match=r"bad_config/.hydra/config.yaml cannot be read"):
        read_run(run_dir)
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ResultsError, match="holds a list, not a JSON object"):
        read_json(tmp_path / "list.json")
    run = read_run(finished(tmp_path / "no_ckpt"))
    Path(run.checkpoint).unlink()
    with pytest.raises(ResultsError, match="best.ckpt is missing"):
        run.checkpoint_sha256()
    run.summary.pop("best_checkpoint")
    with pytest.raises(ResultsError, match="names no best_checkpoint"):
        _ = run.checkpoint
    assert issubclass(ResultsError, KnownError)  # one line at the command line, no traceback


def test_the_relative_change_is_one_function_for_every_report():
    assert relative_change(11.0, 10.0) == pytest.approx(10.0) and relative_change(9.0, 10.0) == pytest.approx(-10.0)
    assert relative_change(None, 10.0) is None and relative_change(1.0, None) is None
    assert relative_change(1.0, 0.0) is None


def test_the_students_epochs_are_the_baseline_runs_plus_the_finetuning_recipes(tmp_path):
    baseline = finished(tmp_path / "baseline")
    overrides = [f"baseline={baseline / 'checkpoints' / 'best.ckpt'}"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        assert student_epochs(compose("budget", overrides)) == 20 + 13   # conf/finetune/default.yaml: 13
        assert student_epochs(compose("budget", [*overrides, "finetune.trainer.max_epochs=5"])) == 25
        assert student_epochs(compose("budget", [*overrides, "student.epochs=7"])) == 7
        assert compose("train", ["+experiment=retrain"]).trainer.max_epochs == 13  # the same recipe
