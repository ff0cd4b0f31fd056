"""asr.tracking: a resumed training continues its W&B run (the id recorded in the run directory), a fresh one
starts a new run; and (slow) a real offline W&B run through train.py resumes under the same id."""

from __future__ import annotations

import json

import pytest

from asr.tracking import RUN_ID_FILE, wandb_logger


def logger_id(save_dir, resume_from=None) -> str:
    logger = wandb_logger("shrinkml", "baseline", "baseline", str(save_dir), name="train", resume_from=resume_from)
    assert logger._wandb_init["resume"] == "allow"
    return logger._wandb_init["id"]


def test_a_resumed_run_continues_the_recorded_w_and_b_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    first = logger_id(tmp_path)
    assert json.loads((tmp_path / RUN_ID_FILE).read_text()) == {"id": first}
    assert logger_id(tmp_path, resume_from=str(tmp_path / "checkpoints" / "last.ckpt")) == first
    assert json.loads((tmp_path / RUN_ID_FILE).read_text()) == {"id": first}
    fresh = logger_id(tmp_path)  # the same directory trained afresh (no ckpt_path): a new W&B run
    assert fresh != first and json.loads((tmp_path / RUN_ID_FILE).read_text()) == {"id": fresh}


def test_a_resume_without_a_recorded_id_starts_and_records_one(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    (tmp_path / RUN_ID_FILE).write_text("{damaged")
    new = logger_id(tmp_path, resume_from="last.ckpt")
    assert json.loads((tmp_path / RUN_ID_FILE).read_text()) == {"id": new}


def test_only_rank_0_records_the_id(tmp_path, monkeypatch):
    from lightning.pytorch.utilities import rank_zero_only

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    logger_id(tmp_path)
    assert not (tmp_path / RUN_ID_FILE).exists()


@pytest.mark.parametrize("ckpt_path", [None, "x.ckpt"])
def test_the_train_config_passes_ckpt_path_to_the_logger(ckpt_path):
    from asr_helpers import compose_train

    overrides = ["paths.root_dir=/nowhere"] + ([f"ckpt_path={ckpt_path}"] if ckpt_path else [])
    assert compose_train(overrides).logger.wandb.resume_from == ckpt_path


@pytest.mark.slow  # W&B's offline runs start its service process: about a minute here, two runs
def test_train_py_resumes_its_offline_w_and_b_run(tiny_corpus, tmp_path_factory, monkeypatch):
    """train.py with the default loggers and W&B offline, interrupted after one epoch and resumed from last.ckpt as
    ``make`` does: both processes' offline runs carry the id recorded in the run directory (``wandb sync`` uploads
    them as one run), where the resumed one used to start a new run with a new id."""
    import wandb
    from asr_helpers import compose_train, corpus_copy_for_runs, hydra_job, one_thread, run_overrides, shared_dir

    from asr.train import train

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    base = shared_dir(tmp_path_factory)
    corpus, out = corpus_copy_for_runs(tiny_corpus, base), base / "wandb_resumed"
    for extra in (["trainer.max_epochs=1"], ["trainer.max_epochs=2", f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}"]):
        cfg = compose_train(run_overrides(corpus, base, "logger=default", "test=false", *extra))
        with hydra_job(cfg, out) as task, one_thread():
            train(task)
        wandb.finish()  # what the end of the process does
    recorded = json.loads((out / RUN_ID_FILE).read_text())["id"]
    runs = sorted(path.name for path in (out / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(name.endswith(f"-{recorded}") for name in runs), runs
