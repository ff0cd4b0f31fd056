"""The training stage behind ``train.py``: config in, instantiate, fit, test, report."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from asr.train_schema import check_train_config
from common.atomic import write_json_atomic
from common.errors import KnownError

log = logging.getLogger(__name__)


def instantiate_group(group: DictConfig | None) -> list:
    """Instantiate every non-null entry of a config group such as ``callbacks`` or ``logger``."""
    if not group:
        return []
    return [hydra.utils.instantiate(entry) for entry in group.values() if entry is not None and "_target_" in entry]


def error_rates(trainer: L.Trainer) -> dict[str, float]:
    """The WER and CER values (``wer/<split>``, ``cer/<split>``) of the trainer's latest fit, validate or test."""
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("wer/", "cer/"))}


def seed_metrics(cfg: DictConfig, trainer: L.Trainer, module: L.LightningModule, datamodule) -> dict[str, float]:
    """With ``evaluate_seed``, the dev WER/CER of the model before training, as ``seed/wer/<split>``: the
    "before retraining" point of a fine-tuning run. Measured on a fresh start, kept in
    ``seed_metrics.json`` so that a resumed run reports it too."""
    if not cfg.evaluate_seed:
        return {}
    path = Path(cfg.paths.output_dir) / "seed_metrics.json"
    if cfg.ckpt_path:
        return json.loads(path.read_text()) if path.is_file() else {}
    trainer.validate(module, datamodule=datamodule, weights_only=False)
    seed = {f"seed/{k}": v for k, v in error_rates(trainer).items()}
    write_json_atomic(path, seed)
    log.info("before training: %s", ", ".join(f"{k} {v:.2f}" for k, v in seed.items()))
    return seed


def measured_speedup(cfg: DictConfig, module: L.LightningModule, datamodule) -> dict[str, float]:
    """With ``measure_speedup.reference`` (a checkpoint, e.g. the dense baseline of a fine-tuned
    compressed model), batch-1 decoding latency of the trained model against it (:mod:`asr.latency`)."""
    settings = cfg.measure_speedup
    if not settings.reference:
        return {}
    from asr.checkpoint import load_module
    from asr.latency import measure_against

    reference = load_module(settings.reference)
    split = datamodule.test_split_names[0] if cfg.test else datamodule.dev_split_names[0]
    result = measure_against(module.model, reference.model, datamodule, split, module.assets.features.frame_shift_ms,
                             settings.utterances, settings.threads, settings.repeats)
    log.info("measured speed-up against %s: %.2fx", settings.reference, result["speedup/measured"])
    return result


def build_module(cfg: DictConfig, datamodule) -> L.LightningModule:
    """The module of ``cfg.module`` for ``datamodule``'s vocabulary and features.

    With ``init_from`` (fine-tuning a trained checkpoint) the model's architecture is the checkpoint's,
    whatever ``cfg.model`` says, and its weights are loaded here, except under ``compress``, whose
    callback loads the dense weights itself before compressing them.
    """
    module_factory = hydra.utils.instantiate(cfg.module, _partial_=True)
    init_from = cfg.init_from
    if not init_from:
        return module_factory(vocab_size=datamodule.tokenizer.vocab_size, input_size=datamodule.feature_cfg.n_mels,
                              assets=datamodule.assets())
    from asr.checkpoint import CheckpointError, read_checkpoint

    checkpoint = read_checkpoint(init_from)
    model = checkpoint["hyper_parameters"]["model"]
    if model != OmegaConf.to_container(cfg.model, resolve=True):
        log.info("init_from %s: the model architecture is the checkpoint's (config's model ignored)", init_from)
    module = module_factory(vocab_size=datamodule.tokenizer.vocab_size, input_size=datamodule.feature_cfg.n_mels,
                            assets=datamodule.assets(), model=model)
    if not cfg.get("compress"):
        try:
            module.load_state_dict(checkpoint["state_dict"])
        except RuntimeError as err:
            raise CheckpointError(f"init_from {init_from} does not fit a dense model of its own architecture (a "
                                  "compressed checkpoint? fine-tune it with ckpt_path=, or start from the dense "
                                  f"baseline): {str(err).splitlines()[0]}") from err
    return module


class RankFailedError(KnownError, RuntimeError):
    """Another rank of a data-parallel run failed: the run fails too, without a ``summary.json``."""


def wait_for_other_ranks(trainer: L.Trainer) -> None:
    """On the process that started the others (Lightning's subprocess launcher: ``trainer=ddp`` on one machine),
    wait for them and raise :class:`RankFailedError` if one exited with a non-zero status: its error is printed
    above, and without this the run would end with status 0. Lightning itself stops the run only when a rank
    fails while this one still trains."""
    processes = getattr(getattr(trainer.strategy, "launcher", None), "procs", None) or []
    statuses = [(rank, process.wait()) for rank, process in enumerate(processes, start=1)]
    failed = [f"local rank {rank} exited with status {status}" for rank, status in statuses if status != 0]
    if failed:
        raise RankFailedError(f"{'; '.join(failed)} (its error is printed above): the run failed and wrote no "
                              "summary.json. Fix: that error, then run the same command again")


def train(cfg: DictConfig) -> dict[str, float]:
    """Train (or resume with ``ckpt_path``) and test the model of ``cfg``; returns the summary (on a data-parallel
    rank other than 0, its metrics)."""
    check_train_config(cfg)  # wrong types and a budget that trains nothing: one line, before any work
    if cfg.ckpt_path:  # a damaged last.ckpt (an interrupted write) stops the run with one line, before anything else
        from asr.checkpoint import check_resumable

        check_resumable(cfg.ckpt_path)
    L.seed_everything(cfg.seed, workers=True)
    # callbacks first: a missing or stale compression scheme stops the run before data preparation
    callbacks = instantiate_group(cfg.get("callbacks"))
    if cfg.get("compress"):  # fine-tune a compressed model: the compression callback the config names
        callbacks.append(hydra.utils.instantiate(cfg.compress))
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    module = build_module(cfg, datamodule)
    loggers = instantiate_group(cfg.get("logger"))
    config = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:
        logger.log_hyperparams(config)
    # the checkpoints of conf/callbacks' ModelCheckpoint are written atomically by Lightning itself
    # (lightning.fabric.utilities.cloud_io._atomic_save: a temporary file moved over the checkpoint)
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    log.info("model: %.2f M parameters, %.1f MB", module.num_parameters() / 1e6, module.size_mb())
    seed = seed_metrics(cfg, trainer, module, datamodule)
    # our own checkpoints hold config containers (data module hyper-parameters), which torch.load's
    # weights_only mode refuses: resuming needs the full unpickler, as test() and load_module() use
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=False)
    metrics = error_rates(trainer)
    metrics.update(seed)
    if cfg.test:
        checkpoint = next((c for c in trainer.checkpoint_callbacks if c.monitor), None)  # best.ckpt's, not last's
        best = checkpoint.best_model_path if checkpoint is not None and checkpoint.best_model_path else None
        if best:  # the dev metrics of the model that is tested (callback_metrics hold the last epoch's)
            trainer.validate(module, datamodule=datamodule, ckpt_path=best, weights_only=False)
            metrics.update(error_rates(trainer))
        trainer.test(module, datamodule=datamodule, ckpt_path=best, weights_only=False)
        metrics.update(module.test_results)
        if best:
            metrics["best_checkpoint"] = best
    return report(cfg, trainer, module, datamodule, callbacks, loggers, metrics)


def report(cfg: DictConfig, trainer: L.Trainer, module: L.LightningModule, datamodule, callbacks: list,
           loggers: list, metrics: dict) -> dict:
    """The run's summary, from rank 0 alone: the other ranks' loggers are stubs (Lightning's ``DummyExperiment``,
    no W&B summary to update) and they return their ``metrics``. Rank 0 first waits for the ranks it started
    (:func:`wait_for_other_ranks`: a failed one fails the run), then measures the speed-up, updates the loggers'
    summaries and writes ``summary.json`` (the file ``make`` takes as the stage done)."""
    if not trainer.is_global_zero:
        return metrics
    wait_for_other_ranks(trainer)
    metrics.update(measured_speedup(cfg, module, datamodule))
    summary = {"stage": cfg.stage, "params": module.num_parameters(), "size_mb": round(module.size_mb(), 3),
               **metrics}
    for callback in callbacks:  # e.g. the compression callback: provenance and estimated speed-ups
        if callable(getattr(callback, "summary", None)):
            summary.update(callback.summary())
    for logger in loggers:
        if hasattr(logger, "experiment") and hasattr(logger.experiment, "summary"):
            logger.experiment.summary.update(summary)
    write_json_atomic(Path(cfg.paths.output_dir) / "summary.json", summary)
    print("final: " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items()))
    return summary
