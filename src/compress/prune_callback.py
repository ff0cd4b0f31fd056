"""``PruneCompression``: a Lightning callback that prunes a model gradually while it is fine-tuned.

It mirrors :class:`compress.callback.LowRankCompression`: in ``setup`` (before Lightning builds the optimizer or
restores a checkpoint) it loads ``init_from`` and gives every target an all-kept mask buffer, so that resuming
with ``ckpt_path`` restores masks and weights into place. Then, on Zhu & Gupta's schedule
(:class:`compress.prune.Schedule`), it updates the masks (magnitude or CSP, :mod:`compress.prune`), keeps the
pruned weights at zero after every optimizer step and their gradients at zero, logs ``prune/sparsity``, writes
the :data:`compress.prune.PRUNE_KEY` record into every checkpoint, and reports ``params/nonzero`` and
``sparsity`` in the run summary.

Targets are those of the SVD (``compress.targets``); in a low-rank model (``compress=lowrank prune=default``, or
``init_from`` a low-rank checkpoint) the low-rank factors are pruned. ``best.ckpt`` is the best dev WER at the
final sparsity: every mask update makes the monitoring checkpoint callbacks forget their best score, so a model
validated before the schedule ended (less pruned, so better) never stays the best.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from compress.checkpoint import SCHEME_KEY, get_submodule, restore_compression
from compress.prune import (
    PRUNE_KEY,
    GramRecorder,
    PruneError,
    Pruner,
    Schedule,
    check_choice,
    check_settings,
    final_sparsities,
    overridden_sparsities,
    prunable_matrices,
)
from compress.prune_allocation import allocate_sparsities
from compress.storage import model_storage

log = logging.getLogger(__name__)

ALLOCATIONS = ("uniform", "sensitivity")


class PruneCompression(L.Callback):
    """Prune ``pl_module.<attribute>`` to ``sparsity`` on a gradual schedule while it trains.

    Args:
        method: ``magnitude`` (largest ``|w|`` kept) or ``csp`` (compressed-sensing recovery, docs/pruning.md).
        sparsity: the final sparsity ``s_f`` of every target, in [0, 1).
        initial_sparsity: ``s_i``, in force from ``start_step`` (default 0).
        start_step, frequency, updates: ``t_0``, ``Δt`` and ``n`` of the schedule (global optimizer steps);
            ``end_step`` instead of ``updates`` gives ``t_0 + n Δt`` (then ``updates`` must be None).
        overrides: ``{glob: final sparsity}`` per target (target or parameter name; the first match wins).
        allocation: ``uniform`` (every target not in ``overrides`` at ``sparsity``) or ``sensitivity`` (the
            targets not in ``overrides`` share the entries to prune by the sparsity-sensitivity table
            ``sensitivity_table``, :mod:`compress.prune_allocation`; the model's overall sparsity is ``sparsity``).
        pattern: ``unstructured`` or ``block`` (whole ``block`` = ``[rows, cols]`` blocks kept or dropped).
        recovery, iterations: CSP's recovery (``iht`` or ``omp``) and its iterations (OMP: selection rounds).
        calibration_batches: CSP records the inputs of the targets over the training batches of the last this
            many steps before each update.
        include, exclude: target name patterns (:func:`compress.targets.discover_targets`).
        init_from: the checkpoint whose weights are pruned (dense, or low-rank with its scheme record); None
            prunes the module as it is (e.g. after ``compress=lowrank`` built it, or train.py's ``init_from``).
        attribute: dotted path of the model inside the Lightning module (``model`` for ``AsrModule``).
    """

    def __init__(self, method: str = "magnitude", sparsity: float = 0.5, initial_sparsity: float = 0.0,
                 start_step: int = 0, frequency: int = 100, updates: int | None = 10, end_step: int | None = None,
                 overrides: Mapping[str, float] | None = None, allocation: str = "uniform",
                 sensitivity_table: str | Path | None = None, pattern: str = "unstructured",
                 block: Sequence[int] = (1, 4), recovery: str = "iht", iterations: int = 10,
                 calibration_batches: int = 4, include: Sequence[str] = ("*",), exclude: Sequence[str] = (),
                 init_from: str | Path | None = None, attribute: str = "model"):
        self.method, self.pattern, self.block, self.recovery, self.iterations = check_settings(
            method, pattern, block, recovery, iterations)
        if end_step is not None:
            if updates is not None:
                raise PruneError("give compress.updates or compress.end_step, not both (set the other to null)")
            Schedule(sparsity, initial_sparsity, start_step, frequency, 1)  # checks the other keys first
            span = end_step - start_step
            if span <= 0 or span % frequency:
                raise PruneError(f"compress.end_step={end_step} must lie a positive multiple of compress.frequency="
                                 f"{frequency} after compress.start_step={start_step}")
            updates = span // frequency
        self.schedule = Schedule(sparsity, initial_sparsity, start_step, frequency, updates)
        self.overrides = {str(k): v for k, v in dict(overrides or {}).items()}
        self.allocation = check_choice(allocation, ALLOCATIONS, "compress.allocation")
        self.sensitivity_table = Path(sensitivity_table) if sensitivity_table else None
        if self.allocation == "sensitivity" and (self.sensitivity_table is None
                                                 or not self.sensitivity_table.is_file()):
            raise FileNotFoundError(f"compress.sensitivity_table {self.sensitivity_table} not found; "
                                    "compress.allocation=sensitivity needs it: run make sensitivity-sparsity")
        if not isinstance(calibration_batches, int) or isinstance(calibration_batches, bool) or calibration_batches < 1:
            raise PruneError(f"compress.calibration_batches must be an integer >= 1, got {calibration_batches!r}")
        if self.method == "csp" and start_step == 0 and initial_sparsity > 0:
            raise PruneError("compress.method=csp records training inputs before each update: with "
                             "compress.initial_sparsity > 0 set compress.start_step >= 1")
        self.calibration_batches = calibration_batches
        self.include, self.exclude = list(include), list(exclude)
        self.init_from = Path(init_from) if init_from else None
        if self.init_from is not None and not self.init_from.is_file():
            raise FileNotFoundError(f"compress.init_from checkpoint {self.init_from} not found; give the baseline's "
                                    "checkpoint (e.g. runs/baseline/checkpoints/best.ckpt)")
        if not attribute:
            raise PruneError("compress.attribute must name the model inside the LightningModule, e.g. 'model'")
        self.attribute = attribute
        self.pruner: Pruner | None = None
        self.finals: dict[str, float] = {}
        self.recorder: GramRecorder | None = None
        self._carried_scheme: dict | None = None  # the low-rank record of a low-rank init_from
        self._last_update: int | None = None

    # -- set-up ----------------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.pruner is None:
            self._build(pl_module)
        self._check_schedule(trainer, stage)

    def _build(self, pl_module: L.LightningModule) -> None:
        if self.init_from is not None:
            checkpoint = torch.load(self.init_from, map_location="cpu", weights_only=False)
            if PRUNE_KEY in checkpoint:
                raise PruneError(f"compress.init_from {self.init_from} is already pruned; start from the dense (or "
                                 "low-rank) model, or resume a pruning run with ckpt_path=")
            if restore_compression(pl_module, checkpoint) is not None:  # prune a low-rank model's factors
                self._carried_scheme = checkpoint[SCHEME_KEY]
            pl_module.load_state_dict(checkpoint["state_dict"])
        model = get_submodule(pl_module, self.attribute)
        matrices = prunable_matrices(model, self.include, self.exclude)
        if not matrices:
            raise PruneError(f"no targets to prune in {self.attribute} with compress.include={self.include} and "
                             f"compress.exclude={self.exclude}")
        if self.allocation == "sensitivity":
            table = json.loads(self.sensitivity_table.read_text())
            fixed = overridden_sparsities(matrices, self.overrides)
            self.finals = allocate_sparsities(matrices, self.schedule.final, table, fixed)
            log.info("per-target final sparsities from %s: %s", self.sensitivity_table,
                     ", ".join(f"{path} {value:.3f}" for path, value in self.finals.items()))
        else:
            self.finals = final_sparsities(matrices, self.schedule.final, self.overrides)
        if self.schedule.initial > min(self.finals.values()):
            raise PruneError(f"compress.initial_sparsity={self.schedule.initial} exceeds a target's final sparsity "
                             f"in compress.overrides ({min(self.finals.values())})")
        self.pruner = Pruner(model, matrices, self.method, self.pattern, self.block, self.recovery, self.iterations)
        self.pruner.register_masks()
        if self.method == "csp":
            self.recorder = GramRecorder(model, self.pruner.input_sites())
        log.info("pruning %d matrices of %s (%s, %s) to sparsity %s, steps %d..%d every %d", len(matrices),
                 self.attribute, self.method, self.pattern, self.schedule.final, self.schedule.start_step,
                 self.schedule.end_step, self.schedule.frequency)

    def _check_schedule(self, trainer: L.Trainer, stage: str) -> None:
        """The schedule must end within training: by ``trainer.max_steps``, and (when fitting) by the steps that
        ``trainer.max_epochs`` epochs of ``trainer.num_training_batches`` batches make."""
        end = self.schedule.end_step
        if trainer.max_steps is not None and trainer.max_steps >= 0 and end > trainer.max_steps:
            raise PruneError(self._too_long(f"trainer.max_steps={trainer.max_steps}"))
        if stage == "fit" and trainer.max_epochs is not None and trainer.max_epochs >= 0:
            total = trainer.estimated_stepping_batches
            if end > total:
                per_epoch = total / max(trainer.max_epochs, 1)
                raise PruneError(self._too_long(f"trainer.max_epochs={trainer.max_epochs}: {total} steps, "
                                                f"{per_epoch:.0f} per epoch"))

    def _too_long(self, budget: str) -> str:
        s = self.schedule
        return (f"the pruning schedule ends at step {s.end_step} (compress.start_step={s.start_step} + "
                f"compress.updates={s.updates} x compress.frequency={s.frequency}), after training ends ({budget}); "
                "end it earlier or train longer")

    # -- training --------------------------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step == 0 and self.schedule.is_update(0):
            self._update(trainer, pl_module, 0)
        self.pruner.apply_masks()

    def _records_for(self, step: int) -> bool:
        """Whether the forward of the step that makes ``step`` optimizer steps feeds the next CSP update."""
        if self.recorder is None:
            return False
        upcoming = next((t for t in self.schedule.update_steps() if t >= step), None)
        return (upcoming is not None and upcoming - step < self.calibration_batches
                and any(self.schedule.at(upcoming, final) > 0 for final in self.finals.values()))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._records_for(trainer.global_step + 1):
            self.recorder.start()

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.pruner.mask_gradients()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.recorder is not None:
            self.recorder.stop()
        self.pruner.apply_masks()  # the optimizer step may have moved pruned weights
        step = trainer.global_step
        if self.schedule.is_update(step) and step != self._last_update:
            self._update(trainer, pl_module, step)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if self.recorder is not None:
            self.recorder.stop()

    def _update(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> None:
        self._last_update = step
        started = time.perf_counter()
        sparsities = {path: self.schedule.at(step, final) for path, final in self.finals.items()}
        if max(sparsities.values()) == 0:
            return
        grams = None
        if self.recorder is not None:
            grams = {site: (trainer.strategy.reduce(total, reduce_op="sum"),
                            int(trainer.strategy.reduce(torch.tensor(float(count)), reduce_op="sum")))
                     for site, (total, count) in self.recorder.grams().items()}
            self.recorder.reset()
        self.pruner.update(sparsities, grams)
        actual = self.pruner.sparsity()
        for logger in trainer.loggers:  # also from on_train_start, where LightningModule.log may not log
            logger.log_metrics({"prune/sparsity": actual, "prune/scheduled": self.schedule.at(step)}, step=step)
        log.info("step %d: pruned to sparsity %.4f (scheduled %.4f) in %.1f s", step, actual, self.schedule.at(step),
                 time.perf_counter() - started)
        for callback in trainer.checkpoint_callbacks:  # best.ckpt: the best model at the final sparsity
            if isinstance(callback, ModelCheckpoint) and callback.monitor:
                forget_best(callback)

    # -- checkpoints and summary -----------------------------------------------------------------------
    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint[PRUNE_KEY] = self.pruner.record(self.attribute, self.schedule.final, trainer.global_step)
        if self._carried_scheme is not None:
            checkpoint.setdefault(SCHEME_KEY, self._carried_scheme)

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        record = checkpoint.get(PRUNE_KEY)
        if record is None:
            return
        if (record["method"], record["pattern"]) != (self.pruner.method, self.pruner.pattern):
            raise PruneError(f"the checkpoint was pruned with method={record['method']}, pattern={record['pattern']}; "
                             f"resume it with the same compress.method and compress.pattern (not "
                             f"{self.pruner.method}, {self.pruner.pattern})")
        for path, entry in record["targets"].items():
            if path in self.pruner.scheduled:
                self.pruner.scheduled[path] = entry["sparsity"]

    def summary(self) -> dict:
        """Entries for the run summary: nonzero parameters of the model, the targets' sparsity, the method, and
        the bytes the model ships in with its targets stored sparse, float32 and int8 (:mod:`compress.storage`)."""
        model = self.pruner.model
        params = sum(p.numel() for p in model.parameters())
        storage = model_storage(model).summary()
        return {"params/nonzero": params - self.pruner.pruned(), "sparsity": round(self.pruner.sparsity(), 6),
                "prune/method": self.pruner.method, "prune/pattern": self.pruner.pattern,
                "bytes/dense": storage["bytes/dense"], "bytes/sparse": storage["bytes/sparse"],
                "bytes/sparse_int8": storage["bytes/sparse_int8"]}


def forget_best(callback: ModelCheckpoint) -> None:
    """Make a monitoring :class:`ModelCheckpoint` forget its best models (its next validation is the best so far),
    as a fresh one would be."""
    callback.best_k_models = {}
    callback.kth_best_model_path = ""
    callback.best_model_score = None
    callback.best_model_path = ""
    callback.kth_value = torch.tensor(torch.inf if callback.mode == "min" else -torch.inf)
