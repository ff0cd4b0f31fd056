"""train.py under data parallelism (``trainer=ddp``): every rank gets a batch of every split, only rank 0
reports, and a rank that fails fails the run. Unit tests here; the real 2-process runs (gloo on CPU, about a
minute each on this machine) are marked slow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from asr_helpers import corpus_copy_for_runs, run_overrides, shared_dir
from lightning.pytorch.loggers.logger import DummyExperiment
from omegaconf import OmegaConf

from asr.data.datamodule import BucketBatchSampler
from asr.data.errors import DataError
from asr.train import RankFailedError, report, wait_for_other_ranks

ROOT = Path(__file__).resolve().parents[1]


def flat(batches) -> list[int]:
    return [i for batch in batches for i in batch]


# -- every rank gets a batch -------------------------------------------------------------------
def test_a_dev_set_of_one_batch_gives_every_rank_a_share():
    """A dev set of one batch (6 utterances, batches of 8) left rank 1 an empty loader, which Lightning refuses."""
    lengths = [300, 500, 400, 200, 600, 100]
    ranks = [list(BucketBatchSampler(lengths, 8, shuffle=False, num_replicas=2, rank=r)) for r in (0, 1)]
    assert all(len(batches) == 1 for batches in ranks)
    assert sorted(flat(ranks[0]) + flat(ranks[1])) == list(range(6))  # every utterance scored once
    alone = list(BucketBatchSampler(lengths, 8, shuffle=False, num_replicas=1, rank=0))
    assert alone == [[4, 1, 2, 0, 3, 5]]  # one process: the one batch as before


def test_a_split_too_small_for_the_ranks_is_one_clear_error():
    with pytest.raises(DataError, match="a split of 1 utterances gives 1 utterances for 2 ranks.*trainer.devices"):
        list(BucketBatchSampler([300], 8, shuffle=False, num_replicas=2, rank=1))
    with pytest.raises(DataError, match="a split of 6 utterances gives 1 training batches for 2 ranks"):
        len(BucketBatchSampler([300] * 6, 8, shuffle=True, num_replicas=2, rank=0))


# -- only rank 0 reports; a failed rank fails the run ------------------------------------------
def fake_trainer(global_zero: bool, exit_codes: tuple[int, ...] = ()):
    procs = [subprocess.Popen([sys.executable, "-c", f"raise SystemExit({code})"]) for code in exit_codes]
    return SimpleNamespace(is_global_zero=global_zero, strategy=SimpleNamespace(launcher=SimpleNamespace(procs=procs)))


def report_of(trainer, loggers: list, output_dir: Path) -> dict:
    cfg = OmegaConf.create({"stage": "baseline", "test": True, "paths": {"output_dir": str(output_dir)},
                            "measure_speedup": {"reference": None}})
    module = SimpleNamespace(num_parameters=lambda: 10, size_mb=lambda: 0.5)
    return report(cfg, trainer, module, None, [], loggers, {"wer/test": 12.5})


def test_a_rank_other_than_0_reports_nothing():
    """Under DDP rank 1's loggers are stubs whose attributes are functions: updating the W&B summary there raised
    ``AttributeError: 'function' object has no attribute 'update'``."""
    stub = SimpleNamespace(experiment=DummyExperiment())
    assert callable(stub.experiment.summary)  # what rank 1 saw
    assert report_of(fake_trainer(False), [stub], Path("/nowhere")) == {"wer/test": 12.5}


def test_rank_0_writes_the_summary_once_the_other_ranks_succeeded(tmp_path):
    wandb_like = SimpleNamespace(experiment=SimpleNamespace(summary={}))
    summary = report_of(fake_trainer(True, (0,)), [wandb_like], tmp_path)
    assert summary["wer/test"] == 12.5 and wandb_like.experiment.summary == summary
    assert json.loads((tmp_path / "summary.json").read_text()) == summary


def test_a_failed_rank_fails_the_run_without_a_summary(tmp_path):
    with pytest.raises(RankFailedError, match=r"^local rank 2 exited with status 3 \(its error is printed above\)"):
        report_of(fake_trainer(True, (0, 3)), [], tmp_path)
    assert not (tmp_path / "summary.json").exists()
    wait_for_other_ranks(SimpleNamespace(strategy=SimpleNamespace()))  # one process: nothing to wait for


# -- the real thing: two CPU processes (gloo) ----------------------------------------------------
# train.py with rank 1 failing after its test; run as the script itself (sys.argv[0]), since Lightning starts the
# other ranks by running sys.argv[0] again (runpy.run_path would set it to train.py)
FAIL_ON_RANK_1 = """import lightning.pytorch as pl
test = pl.Trainer.test
def failing_test(self, *args, **kwargs):
    result = test(self, *args, **kwargs)
    if self.global_rank == 1:
        raise RuntimeError("rank 1 fails after its last collective")
    return result
pl.Trainer.test = failing_test
with open({train!r}) as f:
    exec(compile(f.read(), {train!r}, "exec"), {{"__name__": "__main__", "__file__": {train!r}}})
"""


def ddp_run(tiny_corpus, tmp_path_factory, name: str, script: Path = ROOT / "train.py") -> tuple:
    base = shared_dir(tmp_path_factory)
    out = base / name
    overrides = run_overrides(corpus_copy_for_runs(tiny_corpus, base), base, "trainer=ddp", "trainer.devices=2",
                              "trainer.accelerator=cpu", "trainer.max_epochs=1", f"hydra.run.dir={out}")
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="disabled", PYTHONPATH=str(ROOT / "src"))
    result = subprocess.run([sys.executable, str(script), *overrides], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    return result, out


@pytest.mark.slow
def test_two_cpu_ranks_with_a_one_batch_dev_set_train_test_and_report(tiny_corpus, tmp_path_factory):
    result, out = ddp_run(tiny_corpus, tmp_path_factory, "ddp")  # 6 dev utterances, batches of 8: one batch
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert {"wer/dev", "wer/test", "best_checkpoint"} <= set(summary)
    assert result.stdout.count("final: ") == 1  # rank 0 alone reports


@pytest.mark.slow
def test_a_rank_that_fails_after_the_test_fails_the_run(tiny_corpus, tmp_path_factory, tmp_path):
    script = tmp_path / "train_failing_rank_1.py"
    script.write_text(FAIL_ON_RANK_1.format(train=str(ROOT / "train.py")))
    result, out = ddp_run(tiny_corpus, tmp_path_factory, "ddp_failing", script)
    assert "rank 1 fails after its last collective" in result.stderr
    assert result.returncode != 0, result.stderr[-3000:]
    assert not (out / "summary.json").exists()
