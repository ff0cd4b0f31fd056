"""common.cli: every entry point turns a known error into one line on stderr and exit status 2, and keeps
the traceback of any other error; train.py and search.py through their real Hydra entry points."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from asr.data.errors import DataError
from common.cli import cli_main, known_message
from common.errors import KnownError

ROOT = Path(__file__).resolve().parents[1]


def run_entry(script: str, *overrides: str) -> subprocess.CompletedProcess:
    """``script`` (relative to the repository root) as a user runs it: without ``HYDRA_FULL_ERROR``."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    return subprocess.run([sys.executable, str(ROOT / script), *overrides], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def error_line(result: subprocess.CompletedProcess, name: str) -> str:
    """The one report line of a known error: exit status 2, one ``<name>: `` line, no traceback."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "Error executing job" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith(f"{name}: ")]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


# -- the wrapper --------------------------------------------------------------------------------
def test_known_errors_are_one_line_and_status_2(capsys):
    @cli_main("tool", KeyError)
    def main(error: BaseException | None = None, status: int | None = None) -> int | None:
        if error is not None:
            raise error
        return status

    before = os.environ.get("HYDRA_FULL_ERROR")
    assert main(DataError("corpus root /x does not exist. Fix: point data.root at a corpus")) == 2
    assert capsys.readouterr().err == "tool: corpus root /x does not exist. Fix: point data.root at a corpus\n"
    assert main(FileNotFoundError(2, "No such file or directory", "/y.ckpt")) == 2
    assert capsys.readouterr().err == "tool: [Errno 2] No such file or directory: '/y.ckpt'\n"
    assert main(KeyError("added by the entry point")) == 2
    assert main(None, 3) == 3 and main(None, None) == 0
    worker = KnownError("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                        "last):\n  File \"x.py\", line 1, in f\nasr.data.errors.DataError: audio file /a.flac is empty")
    assert main(worker) == 2
    assert capsys.readouterr().err.splitlines()[-1] == "tool: audio file /a.flac is empty"
    with pytest.raises(ZeroDivisionError):  # unknown: the traceback is kept
        main(ZeroDivisionError("a bug"))
    assert os.environ.get("HYDRA_FULL_ERROR") == before  # set only while the entry point runs


def test_config_errors_name_the_key():
    with pytest.raises(Exception) as missing:
        OmegaConf.create({"compress": {"scheme": "???"}}).compress.scheme  # noqa: B018
    assert known_message(missing.value) == ("config: Missing mandatory value: compress.scheme; give it a value, "
                                            "e.g. on the command line: compress.scheme=...")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"), \
            pytest.raises(Exception) as override:
        compose("train", overrides=["trainer.max_epoch=3"])
    message = known_message(override.value)
    assert message.startswith("config: Could not override 'trainer.max_epoch'.") and "\n" not in message
    assert known_message(RuntimeError("not known")) is None


# -- the entry points ---------------------------------------------------------------------------
def test_train_with_a_missing_data_root(tmp_path):
    result = run_entry("train.py", f"data.root={tmp_path / 'nowhere'}", f"paths.root_dir={tmp_path}")
    line = error_line(result, "train")
    assert f"corpus root {tmp_path / 'nowhere'} does not exist" in line and "Fix:" in line


def test_train_with_a_missing_compression_scheme(tmp_path):
    result = run_entry("train.py", "compress=lowrank", f"compress.scheme={tmp_path / 'none.json'}",
                       f"data.root={tmp_path / 'nowhere'}", f"paths.root_dir={tmp_path}")
    line = error_line(result, "train")  # before data preparation: the data root is not looked at
    assert f"compress.scheme {tmp_path / 'none.json'} not found" in line


def test_train_with_a_bad_override(tmp_path):
    line = error_line(run_entry("train.py", "trainer.max_epoch=3", f"paths.root_dir={tmp_path}"), "train")
    assert "Could not override 'trainer.max_epoch'" in line and "+trainer.max_epoch=3" in line


def test_search_with_an_unreadable_checkpoint_writes_nothing(tmp_path):
    ckpt, out = tmp_path / "damaged.ckpt", tmp_path / "search"
    ckpt.write_bytes(b"not a checkpoint")
    result = run_entry("search.py", f"ckpt={ckpt}", f"output_dir={out}", f"paths.root_dir={tmp_path}")
    assert f"checkpoint {ckpt} cannot be read" in error_line(result, "search")
    assert not (out / "source.json").exists() and not (out / "wall_time.json").exists()


@pytest.mark.parametrize("content", ["truncated", "garbage"])
def test_train_resuming_from_a_damaged_last_checkpoint(tmp_path, content):
    """The ``last.ckpt`` that ``make`` passes by itself as ``ckpt_path`` after an interruption, damaged: one line
    naming the file and the fix, before data preparation (the data root is not looked at)."""
    import torch

    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    torch.save({"state_dict": {"w": torch.zeros(1000)}, "hyper_parameters": {}}, last)
    last.write_bytes(last.read_bytes()[:1000] if content == "truncated" else b"not a checkpoint")
    result = run_entry("train.py", f"ckpt_path={last}", f"data.root={tmp_path / 'nowhere'}",
                       f"paths.root_dir={tmp_path}")
    line = error_line(result, "train")
    assert line.startswith(f"train: ckpt_path {last} is damaged (") and "delete it to start the run afresh" in line


@pytest.mark.parametrize("override, expected", [
    ("trainer.max_epochs=abc", "train: config: trainer.max_epochs='abc' is of type str, expected an integer or null"),
    ("trainer.max_epochs=0", "train: config: trainer.max_epochs=0 trains nothing"),
])
def test_train_with_a_bad_training_budget(tmp_path, override, expected):
    """Refused when composed, before data preparation (the data root is not looked at), and no summary.json."""
    result = run_entry("train.py", override, f"data.root={tmp_path / 'nowhere'}", f"paths.root_dir={tmp_path}")
    assert error_line(result, "train").startswith(expected)
    assert not list(tmp_path.rglob("summary.json"))
