"""Pruning (compress.prune, compress.techniques.prune, the compression callback): the gradual schedule, magnitude
and block masks, CSP's recovery against magnitude's, masks kept through training, checkpoints and resuming,
low-rank factors, a pruned checkpoint loading and decoding as it was tested, the experiment config, and every bad
input."""

from __future__ import annotations

import json
from functools import partial

import lightning as L
import pytest
import torch
from asr_helpers import (
    compose_train,
    corpus_copy_for_runs,
    hydra_job,
    prepared_datamodule,
    run_overrides,
    shared_dir,
    tiny_decoding,
    tiny_model_config,
    trained_run,
)
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import OmegaConf
from test_compress_callback import Regressor, half_rank_scheme, pruning
from torch import nn

from asr.checkpoint import load_module
from asr.model.fast_decode import step_plan
from asr.model.lstm import ConcatLSTM, ConcatLSTMCell
from asr.module import AsrModule
from asr.train import train
from compress.callback import forget_best
from compress.checkpoint import SCHEME_KEY, restore_compression
from compress.lowrank import kernel_rank
from compress.prune import (
    PRUNE_KEY,
    GramRecorder,
    PruneError,
    Schedule,
    csp_recover,
    kept,
    magnitude_mask,
    prunable_matrices,
)
from compress.scheme import Scheme
from compress.targets import discover_targets
from shrinkml.stage import load_recognizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def masks_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if k.endswith("_mask")}


def assert_pruned_entries_are_zero(model: nn.Module) -> None:
    state = model.state_dict()
    for key, mask in masks_of(model).items():
        weight = state[key.removesuffix("_mask")]
        assert mask.dtype == torch.bool and mask.shape == weight.shape
        assert not weight[~mask].any(), key


# -- the schedule ---------------------------------------------------------------------------------------
def test_schedule_is_zhu_and_gupta_cubic():
    s = Schedule(final=0.8, initial=0.1, start_step=100, frequency=10, updates=10)
    assert s.end_step == 200 and list(s.update_steps()) == list(range(100, 201, 10))
    assert s.at(0) == s.at(99) == 0.1                       # s_i before t_0
    assert s.at(100) == pytest.approx(0.1)                   # t = t_0: s_i
    assert s.at(150) == pytest.approx(0.8 + (0.1 - 0.8) * (1 - 50 / 100) ** 3)   # the middle: 0.7125
    assert s.at(180) == pytest.approx(0.8 + (0.1 - 0.8) * (1 - 80 / 100) ** 3)
    assert s.at(159) == s.at(150)                            # held between updates (every Δt steps)
    assert s.at(200) == pytest.approx(0.8) and s.at(10**6) == 0.8   # s_f at the end and after
    assert s.at(150, final=0.5) == pytest.approx(0.5 + (0.1 - 0.5) * 0.5**3)   # a target's own final sparsity
    values = [s.at(t) for t in range(0, 260, 10)]
    assert values == sorted(values)
    assert s.is_update(130) and not s.is_update(135) and not s.is_update(90) and not s.is_update(210)


# -- masks ----------------------------------------------------------------------------------------------
def test_magnitude_mask_keeps_the_largest_entries():
    w = torch.randn(8, 12, generator=torch.Generator().manual_seed(1))
    mask = magnitude_mask(w, 0.75)
    assert mask.dtype == torch.bool and int(mask.sum()) == 24
    assert w.abs()[mask].min() > w.abs()[~mask].max()
    assert magnitude_mask(w, 0.0).all()


@pytest.mark.parametrize("block", [(1, 4), (4, 1), (2, 2)])
def test_block_masks_keep_or_drop_whole_blocks_by_norm(block):
    w = torch.randn(8, 12, generator=torch.Generator().manual_seed(2))
    mask = magnitude_mask(w, 0.5, block)
    r, c = block
    blocks = mask.reshape(8 // r, r, 12 // c, c)
    whole = blocks.all(dim=3).all(dim=1)
    assert torch.equal(whole, blocks.any(dim=3).any(dim=1))     # no block partly kept
    assert int(whole.sum()) == whole.numel() // 2
    norms = w.reshape(8 // r, r, 12 // c, c).pow(2).sum(dim=(1, 3))
    assert norms[whole].min() > norms[~whole].max()


# -- CSP ------------------------------------------------------------------------------------------------
def correlated_toy(m: int = 24, n: int = 40, samples: int = 4000) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and inputs ``X`` (``samples x n``) driven by a few shared factors: strongly correlated features,
    where the largest weights are not the ones that carry the outputs."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(samples, 5, generator=g) @ torch.randn(5, n, generator=g) + 0.05 * torch.randn(samples, n,
                                                                                                    generator=g)
    return torch.randn(m, n, generator=g), x


@pytest.mark.parametrize("recovery", ["iht", "omp"])
@pytest.mark.parametrize("block", [(1, 1), (1, 4), (2, 2)])
@pytest.mark.parametrize("sparsity", [0.5, 0.8])
def test_csp_keeps_the_outputs_better_than_magnitude(recovery, block, sparsity):
    w, x = correlated_toy()
    gram = x.t() @ x / x.shape[0]
    values, mask = csp_recover(w, gram, sparsity, block, recovery, iterations=10)
    magnitude = magnitude_mask(w, sparsity, block)
    assert not values[~mask].any()
    per_group = mask.reshape(w.shape[0] // block[0], -1).sum(dim=1)
    assert (per_group == kept(w.shape[1] // block[1], sparsity) * block[0] * block[1]).all()   # k per row (group)
    assert int(mask.sum()) == int(magnitude.sum())           # the same sparsity as magnitude's here
    csp_error = (x @ (w - values).t()).pow(2).sum()
    magnitude_error = (x @ (w - w * magnitude).t()).pow(2).sum()
    assert csp_error < 0.2 * magnitude_error, (float(csp_error), float(magnitude_error))


def rank_deficient_toy(rank: int, m: int = 24, n: int = 40, samples: int = 4000) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and inputs ``X`` (``samples x n``) of rank ``rank < n``: ``G = X^T X / N`` is singular."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(samples, rank, generator=g) @ torch.randn(rank, n, generator=g)
    return torch.randn(m, n, generator=g), x


def test_csp_ridge_is_the_damping_that_bounds_the_values():
    """compress.ridge reaches the fit: undamped (0) IHT's values blow up on rank-deficient inputs."""
    w, x = rank_deficient_toy(20)
    gram = x.t() @ x / x.shape[0]
    undamped, _ = csp_recover(w, gram, 0.5, (1, 1), "iht", iterations=30, ridge=0.0)
    damped_values, _ = csp_recover(w, gram, 0.5, (1, 1), "iht", iterations=30, ridge=1e-3)
    assert float(undamped.norm() / w.norm()) > 5.0 > 2.0 > float(damped_values.norm() / w.norm())


@pytest.mark.parametrize("recovery", ["iht", "omp"])
@pytest.mark.parametrize("rank", [5, 20])  # undamped, IHT's values reached 353x and 14.6x the weights' norm
def test_csp_values_stay_bounded_on_rank_deficient_inputs(recovery, rank):
    w, x = rank_deficient_toy(rank)
    gram = x.t() @ x / x.shape[0]
    values, mask = csp_recover(w, gram, 0.5, (1, 1), recovery, iterations=30)
    assert float(values.norm() / w.norm()) < 2.0
    magnitude = w * magnitude_mask(w, 0.5)
    assert (x @ (w - values).t()).pow(2).sum() < 0.2 * (x @ (w - magnitude).t()).pow(2).sum()  # still a fit


@pytest.mark.parametrize("recovery", ["iht", "omp"])
@pytest.mark.parametrize("block", [(1, 1), (2, 2)])
def test_csp_on_all_zero_inputs_keeps_every_rows_largest_weights(recovery, block):
    w = torch.randn(6, 8, generator=torch.Generator().manual_seed(0))
    values, mask = csp_recover(w, torch.zeros(8, 8), 0.5, block, recovery)  # undamped IHT: ZeroDivisionError
    r, c = block
    squares = w.reshape(6 // r, r, 8 // c, c).pow(2).sum(dim=(1, 3))  # (groups, blocks) squared block norms
    assert torch.equal(values, w * mask)
    assert (mask.reshape(6 // r, -1).sum(dim=1) == kept(8 // c, 0.5) * r * c).all()
    largest = squares.topk(kept(8 // c, 0.5), dim=1).values.sum(dim=1)
    assert torch.allclose(values.reshape(6 // r, -1).pow(2).sum(dim=1), largest)


@pytest.mark.parametrize("recovery", ["iht", "omp"])
def test_csp_of_all_zero_weights_is_all_zero(recovery):
    _, x = correlated_toy()
    values, mask = csp_recover(torch.zeros(24, 40), x.t() @ x / x.shape[0], 0.5, (1, 1), recovery)
    assert not values.any() and int(mask.sum()) == 24 * kept(40, 0.5)


def test_recorded_inputs_of_an_lstm_are_x_and_the_previous_h():
    torch.manual_seed(0)
    layer, cell, linear = ConcatLSTM(6, 5), ConcatLSTMCell(3, 4), nn.Linear(6, 2)
    model = nn.ModuleDict({"layer": layer, "cell": cell, "linear": linear})
    recorder = GramRecorder(model, {"layer": "lstm", "cell": "lstm", "linear": "linear"})
    x, h, c = torch.randn(2, 7, 6), torch.randn(2, 4), torch.randn(2, 4)
    recorder.start()
    out, _ = layer(x)
    cell(x[:, 0, :3], (h, c))
    linear(x)
    recorder.stop()
    layer(x)  # not recorded after stop
    grams = recorder.grams()
    inputs = torch.cat([x, torch.cat([torch.zeros(2, 1, 5), out[:, :-1]], dim=1)], dim=-1).reshape(-1, 11)
    torch.testing.assert_close(grams["layer"][0], (inputs.t() @ inputs).double())
    assert grams["layer"][1] == 14 and grams["linear"][1] == 14 and grams["cell"][1] == 2
    step = torch.cat([x[:, 0, :3], h], dim=-1)
    torch.testing.assert_close(grams["cell"][0], (step.t() @ step).double())
    assert not layer._forward_hooks and not cell._forward_hooks


# -- the callback on a toy LightningModule ------------------------------------------------------------------
def largest(values: torch.Tensor) -> float:
    return float(values.abs().max()) if values.numel() else 0.0


class Probe(L.Callback):
    """After the pruning callback: the largest gradient and weight on pruned entries, every step."""

    def __init__(self):
        self.grads: list[float] = []
        self.weights: list[float] = []
        self.masked: list[int] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        masks = masks_of(pl_module)
        params = dict(pl_module.named_parameters())
        self.masked.append(sum(int((~m).sum()) for m in masks.values()))
        self.grads.append(max((largest(params[k.removesuffix("_mask")].grad[~m]) for k, m in masks.items()),
                              default=0.0))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        state = pl_module.state_dict()
        self.weights.append(max(largest(state[k.removesuffix("_mask")][~m]) for k, m in masks_of(pl_module).items()))


def fit(module: L.LightningModule, callbacks, tmp_path, epochs: int, ckpt_path=None) -> L.Trainer:
    callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
    trainer = L.Trainer(max_epochs=epochs, callbacks=callbacks, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu")
    trainer.fit(module, ckpt_path=ckpt_path, weights_only=False)
    return trainer


def schedule(**settings) -> dict:
    return {"sparsity": 0.75, "start_step": 1, "frequency": 2, "updates": 3, "calibration_batches": 2, **settings}


@pytest.mark.parametrize("method", ["magnitude", "csp"])
def test_masked_weights_and_gradients_stay_zero_through_training(method, tmp_path):
    torch.manual_seed(0)
    module, probe = Regressor(), Probe()
    callback = pruning(method=method, **schedule())
    trainer = L.Trainer(max_epochs=4, callbacks=[callback, probe], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu")
    trainer.fit(module, weights_only=False)
    assert trainer.global_step == 16 and callback.schedule.end_step == 7
    assert probe.masked[0] == 0 and probe.masked[-1] > 0   # nothing pruned before the first update, then pruned
    assert max(probe.grads) == 0.0 and max(probe.weights) == 0.0
    for matrix in callback.pruner.matrices:
        rows, cols = matrix.shape
        expected = rows * kept(cols, 0.75) if method == "csp" else kept(rows * cols, 0.75)
        assert int(matrix.mask.sum()) == expected, matrix.path
    summary = callback.summary()
    assert summary["params/nonzero"] == sum(p.numel() for p in module.model.parameters()) - callback.pruner.pruned()
    assert summary["sparsity"] == pytest.approx(callback.pruner.sparsity()) and 0.7 < summary["sparsity"] < 0.8
    assert module.losses[-1] < module.losses[0]


def test_csp_updates_use_the_inputs_recorded_just_before_them(tmp_path, monkeypatch):
    from compress.techniques.prune import Pruner

    seen = []
    update = Pruner.update

    def spy(self, sparsities, grams=None):
        seen.append({site: count for site, (_, count) in (grams or {}).items()})
        return update(self, sparsities, grams)

    monkeypatch.setattr(Pruner, "update", spy)
    fit(Regressor(), pruning(method="csp", **schedule()), tmp_path, epochs=2)
    # updates at steps 3, 5, 7 (step 1 is s_i = 0: nothing to do); each saw 2 batches of 8 x 10 frames
    assert seen == [{"lstm": 160, "hidden": 160, "out": 160}] * 3


def test_checkpoints_keep_the_masks_and_resuming_continues_the_schedule(tmp_path):
    class Interrupt(L.Callback):  # the run stops after its first epoch (steps 1-4), mid-schedule
        def on_train_epoch_end(self, trainer, pl_module):
            trainer.should_stop = True

    torch.manual_seed(0)
    trainer = fit(Regressor(), [pruning(method="magnitude", **schedule()), Interrupt()], tmp_path, epochs=3)
    trainer.save_checkpoint(tmp_path / "mid.ckpt")
    checkpoint = torch.load(tmp_path / "mid.ckpt", weights_only=False)
    record = checkpoint[PRUNE_KEY]
    assert record["method"] == "magnitude" and record["pattern"] == "unstructured" and record["block"] == [1, 1]
    assert record["step"] == 4 and set(record["targets"]) == {"lstm.kernel", "hidden.weight", "out.weight"}
    middle = Schedule(0.75, 0.0, 1, 2, 3).at(3)
    assert all(entry["sparsity"] == pytest.approx(middle) for entry in record["targets"].values())
    saved_masks = {k: v for k, v in checkpoint["state_dict"].items() if k.endswith("_mask")}
    assert len(saved_masks) == 3 and sum(int((~m).sum()) for m in saved_masks.values()) > 0

    class Check(L.Callback):
        def on_train_start(self, trainer, pl_module):
            self.masks = masks_of(pl_module)

    check, resumed = Check(), Regressor()
    callback = pruning(method="magnitude", **schedule())
    trainer = L.Trainer(max_epochs=3, callbacks=[callback, check], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu")
    trainer.fit(resumed, ckpt_path=tmp_path / "mid.ckpt", weights_only=False)
    assert all(torch.equal(check.masks[k], m) for k, m in saved_masks.items())   # resumed with the saved masks
    assert len(resumed.losses) == 8 and callback.pruner.sparsity() == pytest.approx(0.75, abs=0.01)
    assert_pruned_entries_are_zero(resumed)
    with pytest.raises(PruneError, match="resume it with the same compress.method"):
        fit(Regressor(), pruning(method="csp", **schedule()), tmp_path, epochs=3,
            ckpt_path=tmp_path / "mid.ckpt")


def test_a_pruned_checkpoint_restores_without_the_callback(tmp_path):
    torch.manual_seed(0)
    module = Regressor()
    trainer = fit(module, pruning(method="csp", pattern="block", block=[1, 3], **schedule()), tmp_path,
                  epochs=2)
    trainer.save_checkpoint(tmp_path / "p.ckpt")
    checkpoint = torch.load(tmp_path / "p.ckpt", weights_only=False)
    fresh = Regressor()
    with pytest.raises(RuntimeError, match="kernel_mask"):
        fresh.load_state_dict(checkpoint["state_dict"])
    assert restore_compression(fresh, checkpoint) is None   # no low-rank scheme, but the masks are registered
    fresh.load_state_dict(checkpoint["state_dict"])
    assert_pruned_entries_are_zero(fresh)
    with torch.no_grad():
        torch.testing.assert_close(fresh.model["out"](fresh.model["hidden"](fresh.model["lstm"](fresh.x)[0])),
                                   module.model["out"](module.model["hidden"](module.model["lstm"](module.x)[0])))


def test_the_factors_of_a_low_rank_model_are_pruned(tmp_path):
    torch.manual_seed(0)
    scheme = Scheme.build(discover_targets(Regressor().model), {"lstm": 4, "hidden": 3, "out": "full"}, "test")
    scheme.save(tmp_path / "scheme.json")
    module = Regressor()
    callback = pruning(scheme=tmp_path / "scheme.json", method="csp", sparsity=0.5, start_step=1, frequency=2,
                       updates=2, calibration_batches=2)   # one callback: factorize, then prune the factors
    trainer = fit(module, callback, tmp_path, epochs=2)
    assert kernel_rank(module.model["lstm"]) == 4
    assert {m.path for m in callback.pruner.matrices} == {
        "lstm.parametrizations.kernel.original0", "lstm.parametrizations.kernel.original1", "hidden.first.weight",
        "hidden.second.weight", "out.weight"}
    assert callback.pruner.sparsity() == pytest.approx(0.5, abs=0.05)
    trainer.save_checkpoint(tmp_path / "lowrank-pruned.ckpt")
    checkpoint = torch.load(tmp_path / "lowrank-pruned.ckpt", weights_only=False)
    assert SCHEME_KEY in checkpoint and PRUNE_KEY in checkpoint
    assert "model.lstm.parametrizations.kernel.original0_mask" in checkpoint["state_dict"]
    fresh = Regressor()
    restore_compression(fresh, checkpoint)
    fresh.load_state_dict(checkpoint["state_dict"])
    assert_pruned_entries_are_zero(fresh)
    with torch.no_grad():
        torch.testing.assert_close(fresh.model["out"](fresh.model["hidden"](fresh.model["lstm"](fresh.x)[0])),
                                   module.model["out"](module.model["hidden"](module.model["lstm"](module.x)[0])))

    # compress=prune from a low-rank checkpoint: its structure is restored, pruned, and carried into the new one
    trainer.save_checkpoint(tmp_path / "lowrank.ckpt")
    lowrank = torch.load(tmp_path / "lowrank.ckpt", weights_only=False)
    del lowrank[PRUNE_KEY]
    lowrank["state_dict"] = {k: v for k, v in lowrank["state_dict"].items() if not k.endswith("_mask")}
    torch.save(lowrank, tmp_path / "lowrank.ckpt")
    again = pruning(sparsity=0.8, start_step=1, frequency=1, updates=1, init_from=tmp_path / "lowrank.ckpt")
    trainer = fit(Regressor(), again, tmp_path, epochs=1)
    trainer.save_checkpoint(tmp_path / "again.ckpt")
    written = torch.load(tmp_path / "again.ckpt", weights_only=False)
    assert written[SCHEME_KEY] == lowrank[SCHEME_KEY] and written[PRUNE_KEY]["sparsity"] == 0.8
    with pytest.raises(PruneError, match="already pruned"):
        fit(Regressor(), pruning(init_from=tmp_path / "again.ckpt", **schedule()), tmp_path, epochs=2)


def test_an_update_makes_the_best_checkpoint_forget_less_pruned_models(tmp_path):
    watched = ModelCheckpoint(dirpath=tmp_path, monitor="wer/dev", mode="min")
    watched.best_k_models = {str(tmp_path / "best.ckpt"): torch.tensor(3.0)}
    watched.best_model_path, watched.best_model_score = str(tmp_path / "best.ckpt"), torch.tensor(3.0)
    watched.kth_best_model_path, watched.kth_value = watched.best_model_path, torch.tensor(3.0)
    forget_best(watched)
    assert str(watched.state_dict()) == str(ModelCheckpoint(dirpath=tmp_path, monitor="wer/dev",
                                                            mode="min").state_dict())


# -- bad input ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("settings, match", [
    ({"sparsity": 1.0}, "compress.sparsity must be a fraction in \\[0, 1\\)"),
    ({"sparsity": -0.1}, "compress.sparsity"),
    ({"initial_sparsity": 0.9}, "compress.initial_sparsity=0.9 exceeds compress.sparsity"),
    ({"method": "random"}, "compress.method='random' is unknown"),
    ({"pattern": "diagonal"}, "compress.pattern='diagonal' is unknown"),
    ({"recovery": "lasso"}, "compress.recovery='lasso' is unknown"),
    ({"pattern": "block", "block": [4]}, "compress.block must be two positive integers"),
    ({"iterations": 0}, "compress.iterations"),
    ({"calibration_batches": 0}, "compress.calibration_batches"),
    ({"ridge": -0.1}, "compress.ridge must be a number >= 0"),
    ({"ridge": "none"}, "compress.ridge must be a number >= 0"),
    ({"frequency": 0}, "compress.frequency"),
    ({"frequency": 0, "updates": None, "end_step": 8}, "compress.frequency"),
    ({"end_step": 9}, "compress.updates or compress.end_step, not both"),
    ({"updates": None, "end_step": 8}, "compress.end_step=8 must lie a positive multiple of compress.frequency"),
    ({"method": "csp", "start_step": 0, "initial_sparsity": 0.2}, "compress.start_step >= 1"),
])
def test_bad_settings_stop_with_the_key(settings, match):
    with pytest.raises(PruneError, match=match) as error:
        pruning(**{**schedule(), **settings})
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("settings, trainer, match", [
    ({"pattern": "block", "block": [1, 5]}, {}, r"compress.block=\[1, 5\] does not divide target lstm.kernel of "
                                                r"shape 48x18"),
    ({"overrides": {"encoder.*": 0.5}}, {}, r"compress.overrides\['encoder.\*'\] names no target"),
    ({"overrides": {"hidden": 1.5}}, {}, r"compress.overrides\['hidden'\] must be a fraction"),
    ({"include": ["decoder.*"]}, {}, "no targets to prune"),
    ({"updates": 5}, {"max_steps": 6}, r"ends at step 11 .*after training ends \(trainer.max_steps=6\)"),
    ({"updates": 5}, {"max_epochs": 2}, r"ends at step 11 .*training ends \(trainer.max_epochs=2: 8 steps, 4 per"),
])
def test_settings_that_do_not_fit_the_model_or_the_budget_stop_at_setup(settings, trainer, match, tmp_path):
    options = dict(max_epochs=3, logger=False, enable_progress_bar=False, enable_model_summary=False,
                   default_root_dir=tmp_path, accelerator="cpu")
    module = Regressor()
    with pytest.raises(PruneError, match=match) as error:
        L.Trainer(**{**options, **trainer}, callbacks=[pruning(**{**schedule(), **settings})]).fit(module)
    assert "\n" not in str(error.value) and not module.losses   # before any training step


def test_a_missing_init_from_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="compress.init_from"):
        pruning(init_from=tmp_path / "none.ckpt")


# -- the recognizer: decoding as tested, through load_recognizer -------------------------------------------
def test_a_pruned_recognizer_decodes_after_loading_exactly_as_before_saving(tiny_corpus, tmp_path_factory, tmp_path):
    datamodule = prepared_datamodule(tiny_corpus, shared_dir(tmp_path_factory))
    torch.manual_seed(0)
    module = AsrModule(vocab_size=datamodule.tokenizer.vocab_size, input_size=datamodule.feature_cfg.n_mels,
                       model=tiny_model_config(), optimizer=partial(torch.optim.Adam, lr=1e-3),
                       decoding=tiny_decoding(beam_size=2), assets=datamodule.assets())
    callback = pruning(method="csp", sparsity=0.7, start_step=1, frequency=1, updates=2,
                                calibration_batches=1, exclude=["ctc_head"])
    trainer = L.Trainer(max_steps=4, callbacks=[callback], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, default_root_dir=tmp_path, accelerator="cpu")
    trainer.fit(module, datamodule=datamodule)
    trainer.save_checkpoint(tmp_path / "pruned.ckpt")
    batch = next(iter(datamodule.eval_dataloader("dev")))
    module.eval()
    before = [module.model.decode(batch["features"], batch["feature_lengths"], beam, 0.0) for beam in (0, 2)]

    loaded = load_recognizer(tmp_path / "pruned.ckpt")
    assert_pruned_entries_are_zero(loaded)
    matrices = prunable_matrices(loaded.model, exclude=["ctc_head"])
    assert len(matrices) == len(discover_targets(loaded.model, exclude=["ctc_head"]))
    assert all(float((~m.mask).float().mean()) >= 0.6 for m in matrices)
    with torch.no_grad():
        assert step_plan(loaded.model.decoder) is not None   # the C++ decoder step reads the (zeroed) weights
    after = [loaded.model.decode(batch["features"], batch["feature_lengths"], beam, 0.0) for beam in (0, 2)]
    assert after == before


# -- the experiment through train.py -----------------------------------------------------------------------
def test_prune_experiment_has_the_retraining_budget():
    prune, retrain = compose_train(["+experiment=prune"]), compose_train(["+experiment=retrain"])
    for key in ("module", "data.spec_augment", "trainer", "init_from", "evaluate_seed", "measure_speedup"):
        assert OmegaConf.select(prune, key) == OmegaConf.select(retrain, key), key
    assert prune.stage == "prune" and prune.task_name == "prune_magnitude_0.8"
    assert prune.compress._target_ == "compress.callback.Compression"
    assert compose_train(["+experiment=prune", "compress.method=csp", "compress.sparsity=0.5"]).task_name == \
        "prune_csp_0.5"
    both = compose_train(["+experiment=retrain", "prune=default"])   # pruning on top of the low-rank scheme
    assert both.compress._target_ == "compress.callback.Compression" and "init_from" not in both.prune
    assert both.compress.prune == both.prune and compose_train(["+experiment=retrain"]).compress.prune is None
    flat = OmegaConf.to_container(compose_train(["compress=prune"]).compress)   # the same settings, flat
    assert OmegaConf.to_container(both.prune) == {k: v for k, v in flat.items()
                                                   if k not in ("_target_", "init_from", "attribute")}


def test_train_py_prunes_the_baseline_and_reports_it(tiny_corpus, tmp_path_factory):
    base = shared_dir(tmp_path_factory)
    run_dir, _ = trained_run(tiny_corpus, base)
    baseline = run_dir / "checkpoints" / "last.ckpt"
    corpus = corpus_copy_for_runs(tiny_corpus, base)
    # 3 steps an epoch: updates at steps 2 and 4, validation after 3 (partly pruned), 6 and 9 (fully)
    overrides = ["+experiment=prune", "compress.method=csp", "compress.sparsity=0.6", "compress.start_step=2",
                 "compress.frequency=2", "compress.updates=1", "compress.calibration_batches=2",
                 "trainer.max_epochs=3", f"init_from={baseline}", "measure_speedup.reference=null"]
    cfg = compose_train(run_overrides(corpus, base, *overrides))
    output_dir = base / "prune_csp"
    with hydra_job(cfg, output_dir) as task:
        summary = train(task)
    saved = json.loads((output_dir / "summary.json").read_text())
    assert saved["sparsity"] == summary["sparsity"] and 0.55 < summary["sparsity"] < 0.65
    assert saved["params/nonzero"] < 0.6 * saved["params"] and saved["prune/method"] == "csp"
    assert saved["bytes/sparse"] < saved["bytes/dense"] and saved["bytes/sparse_int8"] < saved["bytes/sparse"]
    assert summary["stage"] == "prune" and summary["seed/wer/dev"] >= 0
    best = torch.load(summary["best_checkpoint"], weights_only=False)
    assert best["epoch"] >= 1   # validated after the schedule ended: the partly pruned epoch is never the best
    assert all(entry["sparsity"] == 0.6 for entry in best[PRUNE_KEY]["targets"].values())
    loaded = load_recognizer(summary["best_checkpoint"])
    assert_pruned_entries_are_zero(loaded)
    matrices = prunable_matrices(loaded.model, exclude=["ctc_head"])
    pruned = sum(int((~m.mask).sum()) for m in matrices) / sum(m.param.numel() for m in matrices)
    assert pruned == pytest.approx(summary["sparsity"], abs=1e-6)


def test_train_py_prunes_a_low_rank_model_in_the_same_run(tiny_corpus, tmp_path_factory):
    """``compress=lowrank prune=default``: the low-rank callback builds the model, the pruning one prunes it."""
    base = shared_dir(tmp_path_factory)
    run_dir, _ = trained_run(tiny_corpus, base)
    baseline = run_dir / "checkpoints" / "last.ckpt"
    half_rank_scheme(load_module(baseline).model).save(base / "prune-lowrank.json")
    corpus = corpus_copy_for_runs(tiny_corpus, base)
    overrides = ["+experiment=retrain", f"compress.scheme={base / 'prune-lowrank.json'}", f"init_from={baseline}",
                 "prune=default", "prune.sparsity=0.5", "prune.start_step=0", "prune.frequency=1", "prune.updates=2",
                 "trainer.max_epochs=2", "measure_speedup.reference=null", "evaluate_seed=false"]
    cfg = compose_train(run_overrides(corpus, base, *overrides))
    with hydra_job(cfg, base / "lowrank_pruned") as task:
        summary = train(task)
    assert summary["speedup/params"] > 1.5 and summary["params"] < load_module(baseline).num_parameters()
    assert 0.45 < summary["sparsity"] < 0.55 and summary["params/nonzero"] < summary["params"]
    loaded = load_recognizer(summary["best_checkpoint"])
    assert_pruned_entries_are_zero(loaded)
    paths = [m.path for m in prunable_matrices(loaded.model, exclude=["ctc_head"])]
    assert "encoder.layers.0.parametrizations.kernel.original0" in paths and "decoder.pre_output.first.weight" in paths
