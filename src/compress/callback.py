"""``Compression``: the one Lightning callback that applies a compression scheme while a model is fine-tuned.

Whatever the scheme holds (:mod:`compress.scheme`, :mod:`compress.techniques`), it is put in place in ``setup``,
before Lightning builds the optimizer or restores a checkpoint, so that the optimizer trains what the scheme
built and resuming with ``ckpt_path`` finds the structure in place:

* **ranks** (``{"rank": 96}``): the targets are factorized at once (SVD, :mod:`compress.techniques.lowrank`), and
  the optimizer trains the factors ``U'`` and ``V*``;
* **sparsities** (``{"sparsity": 0.8, "pattern": "4x1"}``, each target its own sparsity and pattern; or every
  target at ``sparsity`` from the pruning settings alone): every pruned target gets an all-kept mask buffer, and
  the masks follow Zhu & Gupta's schedule (:class:`compress.prune.Schedule`), updated by the method's mask strategy
  (magnitude or CSP, :mod:`compress.techniques.prune`) in the target's block shape; the pruned weights are kept
  zero after every optimizer step and their gradients zero; ``prune/sparsity`` is logged. A target with a rank and
  a sparsity is factorized, then its factors are pruned. The schedule and method of a scheme's sparse targets are
  ``scheme_pruning``'s (``conf/prune/default.yaml``), or the ``prune`` group's when it is given; a scheme without
  sparsities prunes nothing unless the ``prune`` group is given (then every target at its ``sparsity``);
* any other technique's settings (e.g. ``{"bits": 8}``) are applied at once, after the ranks, in registry order.

Checkpoints carry the scheme (:data:`compress.checkpoint.SCHEME_KEY`) and the pruning record
(:data:`compress.prune.PRUNE_KEY`), so they load without the callback (:func:`compress.checkpoint.
restore_compression`). ``best.ckpt`` is the best dev WER at the final sparsity: every mask update makes the
monitoring checkpoint callbacks forget their best score, so a model validated before the schedule ended (less
pruned, so better) never stays the best. :attr:`Compression.pruning_end_step` is the step the masks stop
changing at, which a learning-rate schedule may hold its rate until (``asr.optim.warmup_exponential_decay``'s
``hold_until_pruned``).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from compress.checkpoint import SCHEME_KEY, compression_record, get_submodule, restore_compression, set_submodule
from compress.prune import PRUNE_KEY, GramRecorder, PruneError
from compress.scheme import Scheme, SchemeError, count_parameters, file_fingerprint
from compress.storage import model_storage
from compress.svd import SvdCache
from compress.targets import discover_targets
from compress.techniques import TECHNIQUES
from compress.techniques.base import own_settings
from compress.techniques.lowrank import LOWRANK, factorize
from compress.techniques.prune import (
    PRUNING,
    Pruner,
    PruneSettings,
    matrix_blocks,
    pattern_name,
    select_sparsities,
)

log = logging.getLogger(__name__)


class Compression(L.Callback):
    """Apply ``scheme`` (and/or the gradual-pruning settings) to ``pl_module.<attribute>`` for fine-tuning.

    Args:
        scheme: scheme JSON (:class:`compress.scheme.Scheme`, format 1 or 2); None: no scheme file (the pruning
            settings alone prune every target to their ``sparsity``).
        prune: the gradual-pruning settings as one mapping (the ``prune`` config group: pruning on top of the
            scheme's ranks), the keys of :class:`compress.techniques.prune.PruneSettings`.
        scheme_pruning: the schedule and method of the scheme's sparse targets when ``prune`` is not given (the
            same keys; ``conf/compress/lowrank.yaml`` gives ``conf/prune/default.yaml``'s); unused by a scheme
            without sparsities.
        init_from: a checkpoint whose ``state_dict`` is loaded into the Lightning module first (the dense
            baseline to compress; with pruning alone also a low-rank one, whose factors are then pruned); None
            compresses the module's current weights.
        attribute: dotted path of the model inside the Lightning module (``model`` for ``AsrModule``).
        include, exclude: target name patterns, as for :func:`compress.targets.discover_targets`.
        check_provenance: stop when the scheme records a source checkpoint (``meta.checkpoint_sha256``)
            other than ``init_from``: a search result made for another baseline is stale.
        **pruning: the gradual-pruning settings given flat (``compress=prune``), the keys of
            :class:`~compress.techniques.prune.PruneSettings` but ``include``/``exclude`` (this callback's).
    """

    def __init__(self, scheme: str | Path | None = None, prune: Mapping | None = None,
                 init_from: str | Path | None = None, attribute: str = "model", include: Sequence[str] = ("*",),
                 exclude: Sequence[str] = (), check_provenance: bool = True,
                 scheme_pruning: Mapping | None = None, **pruning):
        if not attribute:
            raise SchemeError("compress.attribute must name the model inside the LightningModule, e.g. 'model'")
        self.attribute = attribute
        self.include, self.exclude = list(include), list(exclude)
        self.scheme_path = Path(scheme) if scheme else None
        self.scheme = self._load_scheme(self.scheme_path) if self.scheme_path else None
        self.init_from = Path(init_from) if init_from else None
        if self.init_from is not None and not self.init_from.is_file():
            raise FileNotFoundError(f"compress.init_from checkpoint {self.init_from} not found; give the baseline's "
                                    "checkpoint (e.g. runs/baseline/checkpoints/best.ckpt)")
        if check_provenance and self.init_from is not None and self.scheme is not None:
            self._check_made_from(self.init_from)
        # the scheme's pruned targets: target -> its pruning settings ({"sparsity": .., "pattern": ..})
        self.sparse = {} if self.scheme is None else {n: s for n, s in self.scheme.options.items() if PRUNING.owns(s)}
        self.pruning = self._pruning_settings(prune, pruning, scheme_pruning)
        if self.scheme is None and self.pruning is None:
            raise SchemeError("compress: give a scheme (compress.scheme=S.json) or pruning settings (compress=prune)")
        self.applied = False
        self.pruner: Pruner | None = None
        self.finals: dict[str, float] = {}
        self.recorder: GramRecorder | None = None
        self._carried_scheme: dict | None = None  # the low-rank record of a low-rank init_from
        self._last_update: int | None = None

    # -- settings --------------------------------------------------------------------------------------
    @staticmethod
    def _load_scheme(path: Path) -> Scheme:
        if not path.is_file():  # fail at start-up, not after data preparation
            raise SchemeError(f"compress.scheme {path} not found: run the stage that writes it first "
                              "(make search for the AutoML result, make manual for the manual baselines)")
        return Scheme.load(path)

    def _check_made_from(self, checkpoint: Path) -> None:
        """Stop when the scheme records another source checkpoint than ``init_from`` (a stale result)."""
        made_from = self.scheme.meta.get("checkpoint_sha256")
        if made_from and made_from != file_fingerprint(checkpoint):
            raise SchemeError(
                f"compress.scheme {self.scheme_path} is stale: it was made from the checkpoint "
                f"{self.scheme.meta.get('checkpoint', '?')} as it was then, not from compress.init_from {checkpoint} "
                "as it is now; run the stage that made the scheme again on the current baseline (make search, or "
                "make manual), or pass compress.check_provenance=false to fine-tune it anyway")

    def _pruning_settings(self, prune: Mapping | None, flat: Mapping, scheme_pruning: Mapping | None
                          ) -> PruneSettings | None:
        """The gradual-pruning settings: from ``prune`` or the flat keys, else (for a scheme with sparse targets)
        from ``scheme_pruning``; None when nothing is pruned."""
        if prune is not None and flat:
            raise PruneError(f"give the pruning settings once: in the prune group or flat in compress (not both: "
                             f"{', '.join(sorted(flat))})")
        self._settings_key = "prune" if prune is not None else "compress" if flat else "compress.scheme_pruning"
        if prune is not None:
            settings = PruneSettings(**dict(prune))
        elif flat:
            settings = PruneSettings(**dict(flat), include=self.include, exclude=self.exclude)
        elif self.sparse and scheme_pruning is not None:
            settings = PruneSettings(**dict(scheme_pruning))
        else:
            settings = None
        if self.sparse and settings is None:
            raise SchemeError(f"compress.scheme {self.scheme_path} prunes targets: give the pruning schedule and "
                              "method too (compress.scheme_pruning, conf/prune/default.yaml)")
        if self.sparse and (settings.overrides or settings.allocation != "uniform"):
            raise PruneError(f"compress.scheme {self.scheme_path} gives every target's sparsity: leave "
                             "compress.overrides empty and compress.allocation uniform")
        return settings

    @property
    def pruning_end_step(self) -> int | None:
        """The global step of the pruning schedule's last mask update (``t_0 + n Δt``); None when nothing is
        pruned (a learning-rate schedule may hold its rate until then)."""
        return None if self.pruning is None else self.pruning.schedule.end_step

    def summary(self) -> dict:
        """Entries for the run summary: with a scheme its provenance, file and estimated speed-ups; with pruning
        the nonzero parameters of the model, the targets' sparsity, the method, and the bytes the model ships in
        with its targets stored sparse, float32 and int8 (:mod:`compress.storage`)."""
        out = {}
        if self.scheme is not None:
            out.update({"provenance": self.scheme.provenance, "scheme": str(self.scheme_path),
                        **{k: v for k, v in self.scheme.estimates.items() if k.startswith("speedup/")}})
        if self.pruner is not None:
            model = self.pruner.model
            storage = model_storage(model).summary()
            out.update({"params/nonzero": count_parameters(model) - self.pruner.pruned(),
                        "sparsity": round(self.pruner.sparsity(), 6), "prune/method": self.pruner.method,
                        "prune/pattern": self.pruner.pattern, "bytes/dense": storage["bytes/dense"],
                        "bytes/sparse": storage["bytes/sparse"], "bytes/sparse_int8": storage["bytes/sparse_int8"]})
        return out

    # -- set-up ----------------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self.applied:
            self._build(pl_module)
            self.applied = True
        if self.pruner is not None:
            self._check_schedule(trainer, stage)

    def _build(self, pl_module: L.LightningModule) -> None:
        if self.init_from is not None:
            checkpoint = torch.load(self.init_from, map_location="cpu", weights_only=False)
            if self.scheme is not None and SCHEME_KEY in checkpoint:
                raise SchemeError(f"compress.init_from {self.init_from} is already compressed; start from the dense "
                                  "baseline, or resume a compressed run with ckpt_path=")
            if PRUNE_KEY in checkpoint:
                raise PruneError(f"compress.init_from {self.init_from} is already pruned; start from the dense (or "
                                 "low-rank) model, or resume a pruning run with ckpt_path=")
            if restore_compression(pl_module, checkpoint) is not None:  # prune a low-rank model's factors
                self._carried_scheme = checkpoint[SCHEME_KEY]
            pl_module.load_state_dict(checkpoint["state_dict"])
        model = get_submodule(pl_module, self.attribute)
        if self.scheme is not None:
            model = self._apply_scheme(pl_module, model)
        if self.pruning is not None:
            self._build_pruner(model)

    def _apply_scheme(self, pl_module: L.LightningModule, model: nn.Module) -> nn.Module:
        """Factorize the scheme's ranks, then apply the settings of its one-shot techniques (all but pruning,
        which follows the schedule); the compressed model replaces ``model`` in ``pl_module``."""
        dense_params = count_parameters(model)
        targets = discover_targets(model, self.include, self.exclude)
        self.scheme.validate(targets)
        compressed = factorize(model, targets, self.scheme.ranks, SvdCache())
        for tech in TECHNIQUES.values():
            own = {name: own_settings(tech, s) for name, s in self.scheme.options.items() if tech.owns(s)}
            if own and tech not in (LOWRANK, PRUNING):
                compressed = tech.apply(compressed, targets, own)
        set_submodule(pl_module, self.attribute, compressed)
        log.info("compressed %s with %s (%s): %.2f M -> %.2f M parameters", self.attribute, self.scheme_path,
                 self.scheme.provenance, dense_params / 1e6, count_parameters(compressed) / 1e6)
        return compressed

    def _build_pruner(self, model: nn.Module) -> None:
        settings = self.pruning
        matrices, self.finals = select_sparsities(model, settings, self.sparse, self.attribute)
        schedule = settings.schedule
        if schedule.initial > min(self.finals.values()):
            raise PruneError(f"{self._settings_key}.initial_sparsity={schedule.initial} exceeds a target's final "
                             f"sparsity ({min(self.finals.values())})")
        blocks = matrix_blocks(matrices, settings, self.sparse)
        self.pruner = Pruner(model, matrices, settings.method, blocks, settings.recovery, settings.iterations,
                             settings.ridge)
        self.pruner.register_masks()
        if self.pruner.strategy.needs_inputs:
            self.recorder = GramRecorder(model, self.pruner.input_sites())
        targets = Counter(f"{self.finals[m.path]:g}@{pattern_name(blocks[m.path])}" for m in matrices)
        log.info("pruning %d matrices of %s (%s) to %s, steps %d..%d every %d", len(matrices), self.attribute,
                 settings.method, ", ".join(f"{n} x {k}" for k, n in sorted(targets.items())), schedule.start_step,
                 schedule.end_step, schedule.frequency)

    @property
    def schedule(self):
        """The pruning schedule (:class:`compress.prune.Schedule`)."""
        return self.pruning.schedule

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
        s, key = self.schedule, self._settings_key
        return (f"the pruning schedule ends at step {s.end_step} ({key}.start_step={s.start_step} + "
                f"{key}.updates={s.updates} x {key}.frequency={s.frequency}), after training ends ({budget}); "
                "end it earlier or train longer")

    # -- training (pruning only) -----------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.pruner is None:
            return
        if trainer.global_step == 0 and self.schedule.is_update(0):
            self._update(trainer, pl_module, 0)
        self.pruner.apply_masks()

    def _records_for(self, step: int) -> bool:
        """Whether the forward of the step that makes ``step`` optimizer steps feeds the next CSP update."""
        if self.recorder is None:
            return False
        upcoming = next((t for t in self.schedule.update_steps() if t >= step), None)
        return (upcoming is not None and upcoming - step < self.pruning.calibration_batches
                and any(self.schedule.at(upcoming, final) > 0 for final in self.finals.values()))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._records_for(trainer.global_step + 1):
            self.recorder.start()

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.pruner is not None:
            self.pruner.mask_gradients()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.pruner is None:
            return
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
        sizes = {m.path: m.param.numel() for m in self.pruner.matrices}
        scheduled = sum(sparsities[path] * size for path, size in sizes.items()) / sum(sizes.values())
        grams = None
        if self.recorder is not None:
            grams = {site: (trainer.strategy.reduce(total, reduce_op="sum"),
                            int(trainer.strategy.reduce(torch.tensor(float(count)), reduce_op="sum")))
                     for site, (total, count) in self.recorder.grams().items()}
            self.recorder.reset()
        self.pruner.update(sparsities, grams)
        actual = self.pruner.sparsity()
        for logger in trainer.loggers:  # also from on_train_start, where LightningModule.log may not log
            logger.log_metrics({"prune/sparsity": actual, "prune/scheduled": scheduled}, step=step)
        log.info("step %d: pruned to sparsity %.4f (scheduled %.4f) in %.1f s", step, actual, scheduled,
                 time.perf_counter() - started)
        for callback in trainer.checkpoint_callbacks:  # best.ckpt: the best model at the final sparsity
            if isinstance(callback, ModelCheckpoint) and callback.monitor:
                forget_best(callback)

    # -- checkpoints -----------------------------------------------------------------------------------
    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if self.scheme is not None:
            checkpoint[SCHEME_KEY] = compression_record(self.scheme, self.attribute, self.include, self.exclude)
        elif self._carried_scheme is not None:
            checkpoint.setdefault(SCHEME_KEY, self._carried_scheme)
        if self.pruner is not None:
            final = max(self.finals.values()) if self.sparse else self.schedule.final  # the scheme's, or s_f
            checkpoint[PRUNE_KEY] = self.pruner.record(self.attribute, final, trainer.global_step)

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        record = checkpoint.get(PRUNE_KEY)
        if record is None or self.pruner is None:
            return
        self.pruner.check_resumable(record)
        for path, entry in record["targets"].items():
            if path in self.pruner.scheduled:
                self.pruner.scheduled[path] = entry["sparsity"]


def forget_best(callback: ModelCheckpoint) -> None:
    """Make a monitoring :class:`ModelCheckpoint` forget its best models (its next validation is the best so far),
    as a fresh one would be."""
    callback.best_k_models = {}
    callback.kth_best_model_path = ""
    callback.best_model_score = None
    callback.best_model_path = ""
    callback.kth_value = torch.tensor(torch.inf if callback.mode == "min" else -torch.inf)
