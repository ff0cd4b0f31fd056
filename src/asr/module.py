"""``AsrModule``: the LightningModule that trains and evaluates :class:`asr.model.AsrModel`.

Training minimizes the label-smoothed attention cross-entropy (plus CTC when enabled).
Validation decodes every dev split greedily with hard monotonic attention; test decodes every
test split with beam search. Both log ``wer/<split>`` and ``cer/<split>`` (percent).
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from collections.abc import Callable
from functools import partial

import lightning as L
import torch

from asr.assets import AsrAssets
from asr.data.tokenizer import PAD_ID
from asr.metrics import error_counts, rates
from asr.model.asr_model import AsrModel
from common.errors import KnownError

log = logging.getLogger(__name__)


class ModelMismatchError(KnownError, ValueError):
    """A checkpoint made for another vocabulary or model shape."""


class TrainingDivergedError(KnownError, FloatingPointError):
    """The training loss became non-finite or exploded past ``module.max_loss``."""


DECODING_KEYS = ("beam_size", "length_penalty", "max_decode_ratio", "hard_fallback", "sparse_min_sparsity")
# keys a checkpoint written before they existed lacks: absent, they are None (sparse_min_sparsity: dense kernels only)
OPTIONAL_DECODING_KEYS = ("sparse_min_sparsity",)


def decoding_settings(decoding: dict) -> dict:
    """The ``decoding`` config group (``conf/decoding/default.yaml``) checked: exactly its keys."""
    decoding = dict(decoding)
    missing = [k for k in DECODING_KEYS if k not in decoding and k not in OPTIONAL_DECODING_KEYS]
    unknown = [k for k in decoding if k not in DECODING_KEYS]
    if missing or unknown:
        raise ValueError(f"decoding settings need exactly {', '.join(DECODING_KEYS)} (conf/decoding/default.yaml); "
                         f"missing {missing}, unknown {unknown}")
    if decoding["beam_size"] < 0:
        raise ValueError(f"decoding.beam_size must be >= 0 (0 = greedy), got {decoding['beam_size']}")
    for key in OPTIONAL_DECODING_KEYS:
        decoding.setdefault(key, None)
    return decoding


class AsrModule(L.LightningModule):
    """Lightning wrapper: optimization, decoding, metrics and checkpoint assets.

    Args:
        vocab_size, input_size: from the data (tokenizer size, feature dimension).
        model: ``AsrModel`` keyword arguments (``conf/model/*.yaml``).
        optimizer: a partial taking the parameters (``conf/module``: ``_partial_: true``); needed to
            train, not to decode (checkpoints do not store it, so ``load_from_checkpoint`` has none).
        scheduler: a partial taking the optimizer, stepped every optimizer step; or None. One that takes
            ``pruning_end_step`` is given the step a callback's gradual pruning ends (:meth:`pruning_end_step`).
        decoding: the ``decoding`` config group: ``beam_size`` and ``length_penalty`` of the test-time
            beam search (validation decodes greedily), ``max_decode_ratio`` and ``hard_fallback``
            (``AsrModel.set_decoding``). A loaded checkpoint decodes with the settings it was trained
            with until :meth:`set_decoding` gives others.
        dev_splits, test_splits: split names, in dataloader order.
        max_loss: stop training with a clear error when the loss exceeds this (a diverged run),
            not only when it is NaN or infinite.
        ctc_pretrain_steps: train the encoder alone with CTC for this many first steps (needs
            ``model.ctc_weight`` > 0). On the embedded corpus the encoder sat on CTC's plateau for
            ~300 steps; MoChA trained jointly from the start settled meanwhile into boundaries that
            never fire without training noise, and did not recover.
        assets: tokenizer, CMVN and feature settings; saved into every checkpoint.
        distill: knowledge distillation from a trained dense model (an improvement for fine-tuning a
            compressed model; ``weight`` 0, the default, is off): ``teacher`` (its checkpoint, loaded
            when fitting starts), ``weight`` and ``temperature`` ``T``. The loss adds
            ``weight * T^2 * KL(p_teacher || p_student)`` per target token, both softened by ``T``, over
            the teacher-forced decoder outputs.
    """

    def __init__(self, vocab_size: int, input_size: int, model: dict, optimizer: Callable | None = None,
                 scheduler: Callable | None = None, decoding: dict | None = None,
                 dev_splits: list[str] | None = None, test_splits: list[str] | None = None,
                 ctc_pretrain_steps: int = 0, max_loss: float = 1.0e3,
                 assets: AsrAssets | None = None, distill: dict | None = None):
        super().__init__()
        if decoding is None:
            raise ValueError("AsrModule needs the decoding settings (module.decoding: ${decoding}, "
                             "conf/decoding/default.yaml)")
        self.distill = {"teacher": None, "weight": 0.0, "temperature": 1.0, **(distill or {})}
        if self.distill["weight"] < 0 or self.distill["temperature"] <= 0:
            raise ValueError(f"module.distill needs weight >= 0 and temperature > 0, got {self.distill}")
        if self.distill["weight"] > 0 and not self.distill["teacher"]:
            raise ValueError("module.distill.weight > 0 needs module.distill.teacher: the checkpoint of the dense "
                             "model to learn from (e.g. runs/baseline/checkpoints/best.ckpt)")
        self.teacher: AsrModel | None = None  # loaded in on_fit_start; never saved, never optimized
        if ctc_pretrain_steps > 0 and not model.get("ctc_weight", 0.0) > 0:
            raise ValueError(f"module.ctc_pretrain_steps={ctc_pretrain_steps} needs the CTC head: set "
                             "model.ctc_weight > 0 (e.g. 0.3) or ctc_pretrain_steps=0")
        self.save_hyperparameters(ignore=["assets", "optimizer", "scheduler"])
        self.model = AsrModel(vocab_size, input_size, **model)
        self.set_decoding(decoding)
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.assets = assets
        self.dev_splits = list(dev_splits or ["dev"])
        self.test_splits = list(test_splits or ["test"])
        self._counts: dict[str, torch.Tensor] = {}
        self._fit_start: float | None = None

    def set_decoding(self, decoding: dict) -> None:
        """Decode with ``decoding`` (the ``decoding`` config group) from now on; the weights are unchanged."""
        self.decoding = decoding_settings(decoding)
        self.model.set_decoding(self.decoding["max_decode_ratio"], self.decoding["hard_fallback"],
                                self.decoding["sparse_min_sparsity"])

    # -- training ----------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        self._fit_start = time.perf_counter()
        if self.distill["weight"] > 0 and self.teacher is None:
            from asr.checkpoint import load_module  # it imports this module

            teacher = load_module(self.distill["teacher"]).model
            teacher.requires_grad_(False)
            object.__setattr__(self, "teacher", teacher.eval().to(self.device))  # not a submodule: not saved
            log.info("distilling from %s (weight %s, temperature %s)", self.distill["teacher"],
                     self.distill["weight"], self.distill["temperature"])

    def distillation_loss(self, batch: dict, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``T^2 KL(p_teacher || p_student)`` per target token (``targets`` ``(B, U + 1)``, padding
        excluded) of the student's teacher-forced ``logits`` ``(B, U + 1, V)``."""
        temperature = self.distill["temperature"]
        with torch.no_grad():
            teacher = torch.log_softmax(self.teacher.teacher_forced_logits(batch) / temperature, dim=-1)
        student = torch.log_softmax(logits / temperature, dim=-1)
        kl = (teacher.exp() * (teacher - student)).sum(dim=-1)  # (B, U + 1)
        steps = targets != PAD_ID
        return temperature**2 * (kl * steps).sum() / steps.sum()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        ctc_only = self.global_step < self.hparams.ctc_pretrain_steps
        distill = self.teacher is not None and not ctc_only  # a teacher is loaded only for weight > 0
        losses = self.model.loss(batch, ctc_only=ctc_only, keep_logits=distill)
        if distill:
            losses["distill"] = self.distillation_loss(batch, losses.pop("logits"), losses.pop("targets"))
            losses["loss"] = losses["loss"] + self.distill["weight"] * losses["distill"]
        value = losses["loss"].item()
        if not math.isfinite(value) or value > self.hparams.max_loss:
            limit = self.hparams.max_loss
            kind = "non-finite" if not math.isfinite(value) else f"diverged (above module.max_loss={limit:g})"
            raise TrainingDivergedError(
                f"{kind} loss {value:.4g} at global step {self.global_step}, batch {batch_idx} "
                f"(utterances {', '.join(batch['utt_ids'][:8])}); lower module.optimizer.lr or check these inputs"
            )
        batch_size = batch["features"].shape[0]
        for name, value in losses.items():
            if name != "tokens":
                self.log(f"train/{name}", value, prog_bar=name == "loss", batch_size=batch_size)
        return losses["loss"]

    def configure_optimizers(self):
        if self.optimizer_factory is None:
            raise RuntimeError("AsrModule has no optimizer (loaded for decoding?); pass optimizer= to train it")
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        factory = self.scheduler_factory
        if "pruning_end_step" in inspect.signature(factory).parameters:
            factory = partial(factory, pruning_end_step=self.pruning_end_step())
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": factory(optimizer), "interval": "step"}}

    def pruning_end_step(self) -> int | None:
        """The global step of the last mask update of the trainer's gradual pruning: the latest
        ``pruning_end_step`` its callbacks give (a compression callback's); None when none prunes."""
        ends = [getattr(callback, "pruning_end_step", None) for callback in self.trainer.callbacks]
        ends = [end for end in ends if end is not None]
        return max(ends) if ends else None

    # -- evaluation --------------------------------------------------------------------------
    def _decode(self, batch: dict, beam: bool) -> list[str]:
        ids = self.model.decode(batch["features"], batch["feature_lengths"],
                                self.decoding["beam_size"] if beam else 0, self.decoding["length_penalty"])
        return [self.assets.tokenizer.decode(x) for x in ids]

    def _evaluate(self, batch: dict, split: str, beam: bool) -> None:
        hypotheses = self._decode(batch, beam)
        counts = error_counts(batch["transcripts"], hypotheses)
        self._counts[split] = self._counts.get(split, torch.zeros_like(counts)) + counts

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        split = self.dev_splits[dataloader_idx]
        losses = self.model.loss(batch)
        self.log(f"val/loss/{split}", losses["attention"], batch_size=batch["features"].shape[0],
                 add_dataloader_idx=False, sync_dist=True)
        self._evaluate(batch, split, beam=False)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, self.test_splits[dataloader_idx], beam=True)

    def _log_rates(self) -> dict[str, float]:
        results = {}
        for split, counts in sorted(self._counts.items()):
            counts = self.trainer.strategy.reduce(counts.to(self.device), reduce_op="sum")
            wer, cer = rates(counts)
            results[f"wer/{split}"], results[f"cer/{split}"] = wer, cer
        self._counts = {}
        for key, value in results.items():
            self.log(key, value, prog_bar=key.startswith("wer/"), rank_zero_only=True)
        return results

    def on_validation_epoch_end(self) -> None:
        results = self._log_rates()
        if self._fit_start is not None and not self.trainer.sanity_checking:
            self.log("train/minutes", (time.perf_counter() - self._fit_start) / 60, rank_zero_only=True)
            log.info("epoch %d: %s", self.current_epoch, ", ".join(f"{k} {v:.2f}" for k, v in results.items()))

    def on_test_epoch_end(self) -> None:
        self.test_results = self._log_rates()

    # -- checkpoints -------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.assets is not None:
            checkpoint["asr_assets"] = self.assets.to_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        stored = checkpoint.get("hyper_parameters", {})
        for key in ("vocab_size", "input_size", "model"):
            if key in stored and stored[key] != self.hparams[key]:
                raise ModelMismatchError(
                    f"checkpoint was made with {key}={stored[key]!r} but the config gives {key}={self.hparams[key]!r}; "
                    "use the data/model config the checkpoint was trained with, or start a new run without ckpt_path"
                )
        # load_from_checkpoint(path, vocab_size=...) overwrites the stored hyper-parameters with its
        # arguments before this hook runs, so compare the weights' shapes too
        own = self.state_dict()
        for name, tensor in checkpoint.get("state_dict", {}).items():
            if name in own and own[name].shape != tensor.shape:
                raise ModelMismatchError(
                    f"checkpoint weight {name} has shape {tuple(tensor.shape)} but this model's is "
                    f"{tuple(own[name].shape)} (another vocab_size or model size); load it with the settings it was "
                    "trained with"
                )
        if self.assets is None and "asr_assets" in checkpoint:
            self.assets = AsrAssets.from_dict(checkpoint["asr_assets"])

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def size_mb(self) -> float:
        return sum(p.numel() * p.element_size() for p in self.model.parameters()) / 2**20
