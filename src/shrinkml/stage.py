"""Glue for the compression stages: where the recognizer (``asr``) meets ``compress`` (and ``rl``).

``asr`` knows nothing of compression and ``compress`` works on any ``nn.Module``; the stages that
compress a recognizer (sensitivity analysis, manual baselines, search, benchmarks) need both, and
share these few steps: load a (possibly compressed) checkpoint, take a dev split's batches, find and
profile the targets, and score a model by its WER.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from asr.checkpoint import load_module
from asr.data.datamodule import AsrDataModule
from asr.evaluate import evaluate
from asr.module import AsrModule
from asr.train import instantiate_group
from compress.checkpoint import restore_compression
from compress.targets import Target, discover_targets, profile_uses


def load_recognizer(path: str | Path, decoding: Mapping | None = None) -> AsrModule:
    """An :class:`AsrModule` from a dense or compressed checkpoint (the scheme it carries is restored),
    decoding with ``decoding`` (the ``decoding`` config group) when given, else as it was trained."""
    module = load_module(path, prepare=restore_compression)
    if decoding is not None:
        module.set_decoding(dict(decoding))
    return module


def data_module(data_cfg: DictConfig) -> AsrDataModule:
    """The data module of ``data_cfg``, prepared and set up for evaluation."""
    datamodule = hydra.utils.instantiate(data_cfg)
    datamodule.prepare_data()
    datamodule.setup("validate")
    return datamodule


def eval_batches(data_cfg: DictConfig | AsrDataModule, split: str, max_utterances: int | None = None,
                 utt_ids: Sequence[str] | None = None) -> list[dict]:
    """Batches of ``split`` (all of it, or the utterances ``utt_ids``), held in memory; the first
    ``max_utterances`` utterances only (whole batches, longest first) when given. Every process gets them all,
    also under DDP (:meth:`AsrDataModule.eval_dataloader`): a split is decoded whole, once, by the rank that reports."""
    datamodule = data_cfg if isinstance(data_cfg, AsrDataModule) else data_module(data_cfg)
    batches, total = [], 0
    for batch in datamodule.eval_dataloader(split, utt_ids):
        if max_utterances and total >= max_utterances:
            break
        batches.append(batch)
        total += len(batch["utt_ids"])
    return batches


def audio_seconds(batches: Sequence[dict], frame_shift_ms: float) -> float:
    return sum(float(b["feature_lengths"].sum()) for b in batches) * frame_shift_ms / 1000.0


def profiled_targets(module: AsrModule, batches: Sequence[dict], include: Sequence[str] = ("*",),
                     exclude: Sequence[str] = ()) -> list[Target]:
    """The model's targets with ``uses_per_second`` measured by greedy-decoding ``batches``
    (the multiply-accumulate cost model needs it)."""
    model = module.model
    targets = discover_targets(model, include, exclude)

    def run() -> None:
        for batch in batches:
            model.greedy_decode(batch["features"], batch["feature_lengths"])

    seconds = audio_seconds(batches, module.assets.features.frame_shift_ms)
    return profile_uses(model, targets, run, seconds)


def wer_scorer(module: AsrModule, batches: Sequence[dict]) -> Callable[[object], float]:
    """``score(model) -> WER`` (percent, greedy decoding) on ``batches``, for any model shaped like ``module.model``."""
    tokenizer = module.assets.tokenizer
    return lambda model: evaluate(model, batches, tokenizer).wer


def log_stage_summary(cfg: DictConfig, summary: Mapping) -> None:
    """Log a stage run to every logger of ``cfg.logger``: the resolved config as hyper-parameters and the summary's
    scalar entries (nested tables are left out), then finish the run."""
    for logger in instantiate_group(cfg.get("logger")):
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        if hasattr(logger, "experiment") and hasattr(logger.experiment, "summary"):
            logger.experiment.summary.update({k: v for k, v in summary.items() if not isinstance(v, dict)})
        logger.finalize("success")
