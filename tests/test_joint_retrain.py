"""Retraining a joint scheme (each target a rank, a sparsity in its own pattern, or both) through the one compression
callback: masks per target in their block shapes, the checkpoint record, resuming and loading without the callback,
an SVD-only scheme trained exactly as before, and the learning rate held until the pruning schedule ends
(train.py +experiment=retrain_kd on the tiny corpus: distillation with a sparse scheme)."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import pytest
import torch
from asr_helpers import compose_train, corpus_copy_for_runs, hydra_job, run_overrides, shared_dir, trained_run
from omegaconf import OmegaConf
from test_compress_callback import Regressor, fit
from torch import nn

from asr.checkpoint import load_module
from asr.optim import warmup_exponential_decay
from asr.train import train
from compress.callback import Compression
from compress.checkpoint import restore_compression
from compress.lowrank import LowRankLinear, kernel_rank
from compress.prune import PRUNE_KEY, PruneError, prunable_matrices
from compress.scheme import Scheme, SchemeError
from compress.targets import discover_targets
from shrinkml.stage import load_recognizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONF = Path(__file__).resolve().parents[1] / "conf"
MIXED = {"lstm": {"sparsity": 0.75, "pattern": "4x1"},                       # 48 x 18: 4x1 blocks
         "hidden": {"rank": 4, "sparsity": 0.5, "pattern": "unstructured"},  # its factors pruned
         "out": {"rank": 2}}                                                 # factorized only


def scheme_pruning(**settings) -> dict:
    """conf/prune/default.yaml's settings (as conf/compress/lowrank.yaml gives them) but ``settings``."""
    root = OmegaConf.create({"targets": OmegaConf.load(CONF / "targets" / "default.yaml"), "paths": {"runs_dir": "-"},
                             "prune": OmegaConf.load(CONF / "prune" / "default.yaml")})
    return {**OmegaConf.to_container(root.prune, resolve=True), "sensitivity_table": None, **settings}


SHORT = {"start_step": 1, "frequency": 2, "updates": 2}   # updates at steps 1, 3, 5


def save_scheme(path: Path, settings: dict) -> Path:
    Scheme.build(discover_targets(Regressor().model), settings, "joint").save(path)
    return path


def outputs(module: Regressor) -> torch.Tensor:
    with torch.no_grad():
        return module.model["out"](module.model["hidden"](module.model["lstm"](module.x)[0]))


def assert_blocks(mask: torch.Tensor, block: tuple[int, int]) -> None:
    """Every ``r x c`` block of ``mask`` (``m x n``) is wholly kept or wholly pruned."""
    (r, c), (m, n) = block, mask.shape
    blocks = mask.reshape(m // r, r, n // c, c)
    assert torch.equal(blocks.all(dim=(1, 3)), blocks.any(dim=(1, 3)))


def test_a_joint_scheme_prunes_each_target_in_its_own_pattern_and_reloads(tmp_path):
    torch.manual_seed(0)
    module = Regressor()
    callback = Compression(save_scheme(tmp_path / "mixed.json", MIXED), scheme_pruning=scheme_pruning(**SHORT))
    assert callback.pruning_end_step == 5
    trainer = fit(module, callback, tmp_path, epochs=2)
    assert isinstance(module.model["hidden"], LowRankLinear) and isinstance(module.model["out"], LowRankLinear)
    assert kernel_rank(module.model["lstm"]) is None   # sparse only: not factorized
    assert callback.pruner.blocks == {"lstm.kernel": (4, 1), "hidden.first.weight": (1, 1),
                                      "hidden.second.weight": (1, 1)}   # `out` has a rank only: not pruned
    assert callback.finals == {"lstm.kernel": 0.75, "hidden.first.weight": 0.5, "hidden.second.weight": 0.5}
    for matrix in callback.pruner.matrices:
        assert float((~matrix.mask).float().mean()) == pytest.approx(callback.finals[matrix.path], abs=0.02)
        assert_blocks(matrix.mask, callback.pruner.blocks[matrix.path])
        assert not matrix.param[~matrix.mask].any()
    summary = callback.summary()
    assert summary["prune/pattern"] == "mixed" and summary["provenance"] == "joint"

    trainer.save_checkpoint(tmp_path / "joint.ckpt")
    checkpoint = torch.load(tmp_path / "joint.ckpt", weights_only=False)
    record = checkpoint[PRUNE_KEY]
    assert record["pattern"] == "mixed" and record["block"] is None and record["sparsity"] == 0.75
    assert {path: entry["block"] for path, entry in record["targets"].items()} == {
        "lstm.kernel": [4, 1], "hidden.first.weight": [1, 1], "hidden.second.weight": [1, 1]}
    fresh = Regressor()
    assert restore_compression(fresh, checkpoint).options == Scheme.load(tmp_path / "mixed.json").options
    fresh.load_state_dict(checkpoint["state_dict"])   # factors and masks in place without the callback
    torch.testing.assert_close(outputs(fresh), outputs(module))


def test_resuming_a_joint_scheme_keeps_its_masks_and_refuses_another_pattern(tmp_path):
    class Interrupt(L.Callback):   # stops after the first epoch (steps 1-4), mid-schedule
        def on_train_epoch_end(self, trainer, pl_module):
            trainer.should_stop = True

    class Check(L.Callback):
        def on_train_start(self, trainer, pl_module):
            self.masks = {k: v.clone() for k, v in pl_module.state_dict().items() if k.endswith("_mask")}

    torch.manual_seed(0)
    scheme = save_scheme(tmp_path / "mixed.json", MIXED)
    trainer = fit(Regressor(), [Compression(scheme, scheme_pruning=scheme_pruning(**SHORT)), Interrupt()], tmp_path,
                  epochs=3)
    trainer.save_checkpoint(tmp_path / "mid.ckpt")
    saved = {k: v for k, v in torch.load(tmp_path / "mid.ckpt", weights_only=False)["state_dict"].items()
             if k.endswith("_mask")}
    check, resumed = Check(), Regressor()
    callback = Compression(scheme, scheme_pruning=scheme_pruning(**SHORT))
    fit(resumed, [callback, check], tmp_path, epochs=3, ckpt_path=tmp_path / "mid.ckpt")
    assert set(check.masks) == set(saved) and all(torch.equal(check.masks[k], m) for k, m in saved.items())
    assert len(resumed.losses) == 8 and callback.pruner.scheduled["lstm.kernel"] == 0.75
    assert_blocks(resumed.model["lstm"].kernel_mask, (4, 1))

    other = save_scheme(tmp_path / "other.json", {**MIXED, "lstm": {"sparsity": 0.75}})
    with pytest.raises(PruneError, match=r"lstm.kernel in 4x1 blocks, not unstructured"):
        fit(Regressor(), Compression(other, scheme_pruning=scheme_pruning(**SHORT)), tmp_path, epochs=3,
            ckpt_path=tmp_path / "mid.ckpt")


def test_an_svd_only_scheme_is_not_pruned_and_trains_as_before(tmp_path):
    scheme = save_scheme(tmp_path / "ranks.json", {"lstm": 3, "hidden": {"rank": 4}, "out": "full"})
    runs = []
    for callback in (Compression(scheme), Compression(scheme, scheme_pruning=scheme_pruning(**SHORT))):
        torch.manual_seed(0)
        module = Regressor()
        fit(module, callback, tmp_path, epochs=2)
        assert callback.pruner is None and callback.pruning_end_step is None
        assert not any(k.endswith("_mask") for k in module.state_dict())
        runs.append((module.losses, module.state_dict()))
    (losses, state), (same_losses, same_state) = runs
    assert losses == same_losses and state.keys() == same_state.keys()
    assert all(torch.equal(state[k], same_state[k]) for k in state)


def test_joint_scheme_input_that_cannot_work_names_the_key(tmp_path):
    with pytest.raises(SchemeError, match="prunes targets: give the pruning schedule.*compress.scheme_pruning"):
        Compression(save_scheme(tmp_path / "mixed.json", MIXED))
    with pytest.raises(PruneError, match="leave compress.overrides empty"):
        Compression(tmp_path / "mixed.json", scheme_pruning=scheme_pruning(overrides={"out": 0.5}))
    odd = save_scheme(tmp_path / "odd.json", {"hidden": {"rank": 3, "sparsity": 0.5, "pattern": "4x1"}})
    with pytest.raises(SchemeError, match=r"target 'hidden': its pattern '4x1' does not divide hidden.first.weight"):
        fit(Regressor(), Compression(odd, scheme_pruning=scheme_pruning(**SHORT)), tmp_path, epochs=1)


@pytest.mark.parametrize(("hold_until_pruned", "end", "held"), [(True, 2000, 2000), (True, 500, 1000),
                                                                  (True, None, 1000), (False, 2000, 1000)])
def test_the_rate_holds_until_the_pruning_schedule_ends(hold_until_pruned, end, held):
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    factor = warmup_exponential_decay(optimizer, 50, 1000, 1000, 0.05, hold_until_pruned, end).lr_lambdas[0]
    assert factor(10) == pytest.approx(11 / 50)
    assert factor(held) == 1.0 and factor(held + 1000) == pytest.approx(0.5)


def test_the_fine_tuning_recipe_holds_until_pruned_and_the_old_recipe_stays_reachable():
    retrain = compose_train(["+experiment=retrain"])
    assert retrain.module.scheduler.hold_until_pruned is True and retrain.module.scheduler.hold_steps == 1000
    assert compose_train(["+experiment=prune"]).module.scheduler.hold_until_pruned is True
    assert compose_train(["+experiment=retrain_kd"]).compress.scheme_pruning.updates == 20
    assert compose_train([]).module.scheduler.hold_until_pruned is False   # the baseline's training
    old = compose_train(["+experiment=retrain", "module.scheduler.hold_until_pruned=false"])
    assert old.module.scheduler.hold_until_pruned is False
    dense = compose_train(["+experiment=retrain_dense"])
    assert dense.get("compress") is None   # nothing prunes: the rate is the old recipe's


def test_train_py_retrains_a_joint_scheme_with_distillation(tiny_corpus, tmp_path_factory):
    """``+experiment=retrain_kd compress.scheme=joint.json``: no ``prune=default``; the schedule is conf/prune's
    (shortened), the rate held until it ends, the teacher the dense baseline."""
    base = shared_dir(tmp_path_factory)
    run_dir, _ = trained_run(tiny_corpus, base)
    baseline = run_dir / "checkpoints" / "last.ckpt"
    dense = load_module(baseline)
    shapes = {t.name: t.shape for t in discover_targets(dense.model, exclude=["ctc_head"])}
    joint = {"encoder.layers.0": {"sparsity": 0.5, "pattern": "4x1"}, "encoder.layers.1": {"rank": 4},
             "decoder.pre_output": {"rank": 4, "sparsity": 0.5}}
    assert set(joint) <= set(shapes)
    Scheme.build(discover_targets(dense.model, exclude=["ctc_head"]), joint, "joint").save(base / "joint.json")
    corpus = corpus_copy_for_runs(tiny_corpus, base)
    # 3 steps an epoch: mask updates at steps 0..3; the rate would halve every step from step 1 without the hold
    overrides = ["+experiment=retrain_kd", f"compress.scheme={base / 'joint.json'}", f"init_from={baseline}",
                 "compress.scheme_pruning.start_step=0", "compress.scheme_pruning.frequency=1",
                 "compress.scheme_pruning.updates=3", "module.scheduler.warmup_steps=1",
                 "module.scheduler.hold_steps=1", "module.scheduler.half_life_steps=1", "trainer.max_epochs=2",
                 "trainer.log_every_n_steps=1",
                 "measure_speedup.reference=null", "evaluate_seed=false", "test=false"]
    cfg = compose_train(run_overrides(corpus, base, *overrides))
    output_dir = base / "joint_kd"
    with hydra_job(cfg, output_dir) as task:
        summary = train(task)
    assert summary["prune/pattern"] == "mixed" and summary["params"] < dense.num_parameters()
    rows = [row for path in output_dir.rglob("metrics.csv") for row in csv.DictReader(path.open())]
    rates = {int(row["step"]): float(row["lr-Adam"]) for row in rows if row.get("lr-Adam")}
    distilled = [float(row["train/distill"]) for row in rows if row.get("train/distill")]
    assert distilled and all(value >= 0 for value in distilled)
    assert [rates[step] for step in range(4)] == [5e-4] * 4 and rates[5] == pytest.approx(5e-4 / 4)
    loaded = load_recognizer(output_dir / "checkpoints" / "last.ckpt")
    matrices = {m.path: m for m in prunable_matrices(loaded.model, exclude=["ctc_head"])}
    kernel = matrices["encoder.layers.0.kernel"]
    assert_blocks(kernel.mask, (4, 1)) and float((~kernel.mask).float().mean()) == pytest.approx(0.5, abs=0.02)
    assert kernel_rank(loaded.model.encoder.layers[1]) == 4
    for path in ("decoder.pre_output.first.weight", "decoder.pre_output.second.weight"):
        assert float((~matrices[path].mask).float().mean()) == pytest.approx(0.5, abs=0.05)
        assert not matrices[path].param[~matrices[path].mask].any()
    factor = matrices["encoder.layers.1.parametrizations.kernel.original0"]   # a rank only: no mask
    assert not hasattr(factor.holder, "original0_mask")


def test_the_record_of_ranks_pruned_on_top_gives_the_schedules_final_sparsity(tmp_path):
    """A scheme without sparsities pruned by the ``prune`` group: the record's sparsity is ``prune.sparsity``, not
    the largest override (the scheme's own sparsities are the only ones whose largest it records)."""
    scheme = save_scheme(tmp_path / "ranks.json", {"lstm": 3, "hidden": 4})
    callback = Compression(scheme, prune=scheme_pruning(sparsity=0.5, overrides={"out*": 0.9}, **SHORT))
    trainer = fit(Regressor(), callback, tmp_path, epochs=2)
    assert callback.finals["out.weight"] == 0.9 and callback.finals["hidden.first.weight"] == 0.5
    trainer.save_checkpoint(tmp_path / "c.ckpt")
    assert torch.load(tmp_path / "c.ckpt", weights_only=False)[PRUNE_KEY]["sparsity"] == 0.5


def test_a_schedule_longer_than_training_names_the_scheme_pruning_keys(tmp_path):
    callback = Compression(save_scheme(tmp_path / "mixed.json", MIXED), scheme_pruning=scheme_pruning(updates=50))
    with pytest.raises(PruneError, match=r"ends at step 5000 \(compress.scheme_pruning.start_step=0 \+ "
                                         r"compress.scheme_pruning.updates=50"):
        fit(Regressor(), callback, tmp_path, epochs=1)
