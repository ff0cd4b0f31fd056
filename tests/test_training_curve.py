"""scripts/training_curve.py: dev WER against minutes from a run's CSV logs (resumed runs included)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "training_curve.py"


def load():
    spec = importlib.util.spec_from_file_location("_training_curve", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write(path: Path, rows: list[str]) -> None:
    path.parent.mkdir(parents=True)
    path.write_text("epoch,step,train/loss,train/minutes,wer/dev\n" + "\n".join(rows) + "\n")


def test_curve_reads_every_version_in_order(tmp_path):
    write(tmp_path / "csv" / "version_0" / "metrics.csv", ["0,10,5.0,,", "0,20,,1.5,90.0"])
    write(tmp_path / "csv" / "version_10" / "metrics.csv", ["2,60,,6.0,50.0"])
    write(tmp_path / "csv" / "version_2" / "metrics.csv", ["1,40,,3.0,70.0"])
    assert load().read_curve(tmp_path, "dev") == [(0, 1.5, 90.0), (1, 3.0, 70.0), (2, 6.0, 50.0)]


def test_curve_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="no CSV log"):
        load().read_curve(tmp_path, "dev")
    write(tmp_path / "csv" / "version_0" / "metrics.csv", ["0,10,5.0,,"])
    with pytest.raises(ValueError, match="wer/dev"):
        load().read_curve(tmp_path, "dev")
