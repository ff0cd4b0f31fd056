"""The compression callback (a low-rank scheme) and compressed checkpoints: the swapped model trains, its
checkpoints carry the scheme and load back without it, resuming keeps the structure, bad input stops."""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import lightning as L
import pytest
import torch
from asr_helpers import (
    compose_train,
    corpus_copy_for_runs,
    hydra_job,
    run_overrides,
    shared_dir,
    trained_run,
)
from omegaconf import OmegaConf
from torch import nn

from asr.checkpoint import load_module
from asr.model.lstm import ConcatLSTM
from asr.train import train
from compress.callback import Compression
from compress.checkpoint import SCHEME_KEY, restore_compression
from compress.cost import pays
from compress.lowrank import LowRankLinear, kernel_rank
from compress.scheme import Scheme, SchemeError, current_ranks, file_fingerprint
from compress.targets import discover_targets

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONF = Path(__file__).resolve().parents[1] / "conf"


def pruning(**settings) -> Compression:
    """The compression callback pruning with conf/prune/default.yaml's settings (the one source of their
    defaults; its sensitivity table, a path under the run directory, none) but ``settings``, given flat as
    ``compress=prune`` gives them."""
    root = OmegaConf.create({"targets": OmegaConf.load(CONF / "targets" / "default.yaml"), "paths": {"runs_dir": "-"},
                             "prune": OmegaConf.load(CONF / "prune" / "default.yaml")})
    flat = {**OmegaConf.to_container(root.prune, resolve=True), "sensitivity_table": None, **settings}
    return Compression(**flat)


def half_rank_scheme(model: nn.Module, exclude=("ctc_head",)) -> Scheme:
    targets = discover_targets(model, exclude=exclude)
    return Scheme.build(targets, {t.name: max(1, t.max_rank // 4) for t in targets}, "test")


# -- generic: any LightningModule with a `model` ------------------------------------------------
class Regressor(L.LightningModule):
    """An LSTM layer and two Linears learning a running sum (a stand-in for any model)."""

    def __init__(self):
        super().__init__()
        self.model = nn.ModuleDict({"lstm": ConcatLSTM(6, 12), "hidden": nn.Linear(12, 24), "out": nn.Linear(24, 3)})
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(8, 10, 6, generator=generator)
        self.y = torch.tanh(self.x[..., :3].cumsum(dim=1))  # learnable: a running sum of the inputs
        self.losses: list[float] = []

    def training_step(self, batch, batch_idx):
        h, _ = self.model["lstm"](self.x)
        loss = nn.functional.mse_loss(self.model["out"](torch.tanh(self.model["hidden"](h))), self.y)
        self.losses.append(float(loss.detach()))
        return loss

    def train_dataloader(self):
        return [0] * 4

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def fit(module, callback, tmp_path, epochs=10, ckpt_path=None):
    callbacks = callback if isinstance(callback, list) else [callback]
    trainer = L.Trainer(max_epochs=epochs, callbacks=callbacks, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu")
    trainer.fit(module, ckpt_path=ckpt_path, weights_only=False)
    return trainer


def test_swapped_model_trains_and_its_checkpoint_restores_without_the_scheme(tmp_path):
    torch.manual_seed(0)
    module = Regressor()
    scheme = Scheme.build(discover_targets(module.model), {"lstm": 3, "hidden": 4, "out": "full"}, "test")
    scheme.save(tmp_path / "scheme.json")
    trainer = fit(module, Compression(tmp_path / "scheme.json"), tmp_path)
    assert isinstance(module.model["hidden"], LowRankLinear) and kernel_rank(module.model["lstm"]) == 3
    first, last = sum(module.losses[:4]) / 4, sum(module.losses[-4:]) / 4
    assert last < 0.7 * first  # the factors are what the optimizer trained
    trainer.save_checkpoint(tmp_path / "c.ckpt")
    checkpoint = torch.load(tmp_path / "c.ckpt", weights_only=False)
    assert checkpoint[SCHEME_KEY]["scheme"]["targets"] == {"lstm": {"rank": 3}, "hidden": {"rank": 4}, "out": "full"}

    fresh = Regressor()
    assert restore_compression(fresh, checkpoint).ranks == scheme.ranks
    fresh.load_state_dict(checkpoint["state_dict"])
    targets = discover_targets(Regressor().model)
    assert current_ranks(fresh.model, targets) == {"lstm": 3, "hidden": 4, "out": "full"}
    with torch.no_grad():
        torch.testing.assert_close(fresh.model["out"](fresh.model["hidden"](fresh.model["lstm"](fresh.x)[0])),
                                   module.model["out"](module.model["hidden"](module.model["lstm"](module.x)[0])))
    assert restore_compression(Regressor(), {"state_dict": {}}) is None  # a dense checkpoint: nothing to do


def test_a_checkpoint_with_a_format_1_scheme_record_still_restores(tmp_path):
    """Checkpoints written before scheme format 2 record a rank-only scheme (``"ranks"``) and a pruning record."""
    torch.manual_seed(0)
    module = Regressor()
    Scheme.build(discover_targets(module.model), {"lstm": 3, "hidden": 4}, "test").save(tmp_path / "scheme.json")
    trainer = fit(module, pruning(scheme=tmp_path / "scheme.json", sparsity=0.5, start_step=1, frequency=1,
                                  updates=1), tmp_path, epochs=1)
    trainer.save_checkpoint(tmp_path / "c.ckpt")
    checkpoint = torch.load(tmp_path / "c.ckpt", weights_only=False)
    record = checkpoint[SCHEME_KEY]["scheme"]
    record.update({"format": "shrinkml-scheme/1", "ranks": {"lstm": 3, "hidden": 4}})
    del record["targets"]
    fresh = Regressor()
    assert restore_compression(fresh, checkpoint).ranks == {"lstm": 3, "hidden": 4}
    fresh.load_state_dict(checkpoint["state_dict"])   # the factors and the factors' masks are in place
    assert kernel_rank(fresh.model["lstm"]) == 3 and fresh.model["hidden"].first.weight_mask.dtype == torch.bool
    with torch.no_grad():
        torch.testing.assert_close(fresh.model["out"](fresh.model["hidden"](fresh.model["lstm"](fresh.x)[0])),
                                   module.model["out"](module.model["hidden"](module.model["lstm"](module.x)[0])))


def test_one_callback_applies_a_mixed_scheme_rank_sparsity_and_both(tmp_path):
    torch.manual_seed(0)
    module = Regressor()
    settings = {"lstm": {"rank": 3}, "hidden": {"rank": 4, "sparsity": 0.5}, "out": {"sparsity": 0.75}}
    Scheme.build(discover_targets(module.model), settings, "manual").save(tmp_path / "mixed.json")
    with pytest.raises(SchemeError, match="prunes targets: give the pruning schedule"):
        Compression(tmp_path / "mixed.json")
    callback = pruning(scheme=tmp_path / "mixed.json", start_step=1, frequency=2, updates=2)
    fit(module, callback, tmp_path, epochs=2)
    assert kernel_rank(module.model["lstm"]) == 3 and isinstance(module.model["hidden"], LowRankLinear)
    assert callback.finals == {"hidden.first.weight": 0.5, "hidden.second.weight": 0.5, "out.weight": 0.75}
    actual = {m.path: float((~m.mask).float().mean()) for m in callback.pruner.matrices}
    assert actual == pytest.approx(callback.finals, abs=0.02)   # the lstm has a rank only: not pruned
    summary = callback.summary()
    assert summary["provenance"] == "manual" and summary["speedup/params"] > 1 and "sparsity" in summary


def test_resume_keeps_the_compressed_structure(tmp_path):
    torch.manual_seed(0)
    scheme = Scheme.build(discover_targets(Regressor().model), {"lstm": 3, "hidden": 4}, "test")
    scheme.save(tmp_path / "scheme.json")
    first = Regressor()
    trainer = fit(first, Compression(tmp_path / "scheme.json"), tmp_path, epochs=2)
    trainer.save_checkpoint(tmp_path / "two.ckpt")
    resumed = Regressor()
    fit(resumed, Compression(tmp_path / "scheme.json"), tmp_path, epochs=3, ckpt_path=tmp_path / "two.ckpt")
    assert kernel_rank(resumed.model["lstm"]) == 3 and len(resumed.losses) == 4  # one more epoch of 4 steps


def test_bad_callback_input_names_the_key(tmp_path):
    with pytest.raises(SchemeError, match="not found"):
        Compression(tmp_path / "missing.json")
    Scheme.build(discover_targets(Regressor().model), {"hidden": 4}, "test").save(tmp_path / "s.json")
    with pytest.raises(FileNotFoundError, match="init_from"):
        Compression(tmp_path / "s.json", init_from=tmp_path / "none.ckpt")
    with pytest.raises(SchemeError, match="attribute 'decoder'"):
        fit(Regressor(), Compression(tmp_path / "s.json", attribute="decoder"), tmp_path, epochs=1)
    other = Scheme.build(discover_targets(nn.Sequential(nn.Linear(5, 7))), {"0": 2}, "test")
    other.save(tmp_path / "other.json")
    with pytest.raises(SchemeError, match="unknown target '0'"):
        fit(Regressor(), Compression(tmp_path / "other.json"), tmp_path, epochs=1)


# -- the real entry point: train.py compress=lowrank on the tiny corpus -------------------------
def test_train_py_fine_tunes_a_compressed_baseline(tiny_corpus, tmp_path_factory):
    base = shared_dir(tmp_path_factory)
    run_dir, _ = trained_run(tiny_corpus, base)
    baseline_ckpt = run_dir / "checkpoints" / "last.ckpt"
    dense = load_module(baseline_ckpt)
    scheme = half_rank_scheme(dense.model)
    scheme.save(base / "quarter.json")
    corpus = corpus_copy_for_runs(tiny_corpus, base)
    # the config's model differs from the checkpoint's (CTC head): the architecture comes from init_from
    overrides = ["trainer.max_epochs=1", "test=true", "compress=lowrank", f"compress.scheme={base / 'quarter.json'}",
                 f"init_from={baseline_ckpt}", "model.ctc_weight=0.3"]
    cfg = compose_train(run_overrides(corpus, base, *overrides))
    with hydra_job(cfg, base / "compressed") as task:
        summary = train(task)
    assert summary["params"] < dense.num_parameters()
    assert summary["wer/test"] >= 0
    compressed_ckpt = base / "compressed" / "checkpoints" / "last.ckpt"
    with pytest.raises(ValueError, match="prepare=restore_compression"):
        load_module(compressed_ckpt)
    module = load_module(compressed_ckpt, prepare=restore_compression)
    targets = discover_targets(dense.model, exclude=("ctc_head",))
    expected = {t.name: scheme.ranks[t.name] if pays(t.shape, scheme.ranks[t.name]) else "full" for t in targets}
    assert current_ranks(module.model, targets) == expected
    assert sum(rank != "full" for rank in expected.values()) >= 8
    assert module.num_parameters() == summary["params"]
    # a compressed checkpoint cannot start a dense run
    cfg = compose_train(run_overrides(corpus, base, "trainer.max_epochs=1", f"init_from={compressed_ckpt}"))
    with hydra_job(cfg, base / "refused") as task, pytest.raises(ValueError, match="compressed checkpoint"):
        train(task)


def test_retrain_experiment_fast_dev_run(tiny_corpus, tmp_path_factory):
    base = shared_dir(tmp_path_factory)
    run_dir, _ = trained_run(tiny_corpus, base)
    baseline_ckpt = run_dir / "checkpoints" / "last.ckpt"
    half_rank_scheme(load_module(baseline_ckpt).model).save(base / "retrain-scheme.json")
    corpus = corpus_copy_for_runs(tiny_corpus, base)
    overrides = ["+experiment=retrain", "debug=fdr", f"compress.scheme={base / 'retrain-scheme.json'}",
                 f"init_from={baseline_ckpt}"]
    cfg = compose_train(run_overrides(corpus, base, *overrides))
    assert cfg.stage == "retrain" and cfg.compress.exclude == ["ctc_head"]
    with hydra_job(cfg, base / "retrain_fdr") as task:
        summary = train(task)
    assert summary["params"] < load_module(baseline_ckpt).num_parameters()
    assert summary["stage"] == "retrain" and summary["provenance"] == "test"
    assert summary["speedup/params"] > 1.5 and summary["scheme"].endswith("retrain-scheme.json")
    assert summary["seed/wer/dev"] >= 0  # the WER before retraining (evaluate_seed in the experiment)
    assert json.loads((base / "retrain_fdr" / "seed_metrics.json").read_text())["seed/wer/dev"] == summary[
        "seed/wer/dev"]


def test_a_scheme_made_from_another_checkpoint_is_stale(tmp_path):
    (tmp_path / "base.ckpt").write_bytes(b"the baseline as it is now")
    scheme = Scheme.build(discover_targets(Regressor().model), {"hidden": 4}, "automl")
    scheme.meta.update(checkpoint="runs/baseline/checkpoints/best.ckpt", checkpoint_sha256="0" * 64)
    scheme.save(tmp_path / "s.json")
    with pytest.raises(SchemeError, match="stale.*make search"):
        Compression(tmp_path / "s.json", init_from=tmp_path / "base.ckpt")
    Compression(tmp_path / "s.json", init_from=tmp_path / "base.ckpt", check_provenance=False)
    scheme.meta["checkpoint_sha256"] = file_fingerprint(tmp_path / "base.ckpt")
    scheme.save(tmp_path / "s.json")
    assert Compression(tmp_path / "s.json", init_from=tmp_path / "base.ckpt").summary()["provenance"] == "automl"


def test_dense_control_continues_the_baseline_uncompressed(tiny_corpus, tmp_path_factory):
    """``+experiment=retrain_dense``: the baseline's architecture and weights, no compression, the retrain budget."""
    base = shared_dir(tmp_path_factory)
    run_dir, _ = trained_run(tiny_corpus, base)
    baseline_ckpt = run_dir / "checkpoints" / "last.ckpt"
    dense = load_module(baseline_ckpt)
    corpus = corpus_copy_for_runs(tiny_corpus, base)
    cfg = compose_train(run_overrides(corpus, base, "+experiment=retrain_dense", "trainer.max_epochs=1",
                                      f"init_from={baseline_ckpt}", "model.ctc_weight=0.3", "evaluate_seed=true",
                                      "measure_speedup.reference=null"))
    assert cfg.get("compress") is None and cfg.task_name == "retrain_dense"
    with hydra_job(cfg, base / "retrain_dense") as task:
        summary = train(task)
    assert summary["params"] == dense.num_parameters()  # no CTC head added: the checkpoint's architecture
    assert "provenance" not in summary
    # it starts from the baseline's weights: its WER before training is the baseline's
    dev = cfg.data.dev_splits[0]
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    with hydra_job(cfg, base / "retrain_dense_check"):
        datamodule = hydra.utils.instantiate(cfg.data)
        trainer.validate(dense, datamodule=datamodule, verbose=False)
    assert summary[f"seed/wer/{dev}"] == pytest.approx(float(trainer.callback_metrics[f"wer/{dev}"]))

