"""The types of ``conf/train.yaml``'s trainer keys and main numeric training keys, checked before training starts.

``python train.py trainer.max_epochs=abc`` composes (Hydra keeps ``abc`` as a string) and used to fail as a bare
``AssertionError`` inside Lightning after data preparation; :func:`check_train_config` stops it with one line
naming the key, the value and the expected type. It also refuses a training budget that trains nothing
(``trainer.max_epochs=0``): such a run ends without a checkpoint but with a ``summary.json``, the file ``make``
takes as the stage done.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig

from common.schema import ConfigValueError, check_types


@dataclass
class TrainerKeys:
    """``conf/trainer``: the ``lightning.pytorch.Trainer`` arguments the project sets or a user is likely to."""

    accelerator: str
    strategy: str | dict
    devices: int | str | list
    num_nodes: int
    precision: int | str | None
    max_epochs: int | None
    min_epochs: int | None
    max_steps: int
    min_steps: int | None
    max_time: str | dict | None
    limit_train_batches: float | None
    limit_val_batches: float | None
    limit_test_batches: float | None
    overfit_batches: float
    val_check_interval: float | None
    check_val_every_n_epoch: int | None
    num_sanity_val_steps: int | None
    log_every_n_steps: int | None
    accumulate_grad_batches: int
    gradient_clip_val: float | None
    gradient_clip_algorithm: str | None
    fast_dev_run: bool | int
    enable_checkpointing: bool | None
    enable_progress_bar: bool | None
    enable_model_summary: bool | None
    use_distributed_sampler: bool
    deterministic: bool | str | None
    benchmark: bool | None


@dataclass
class DataKeys:
    batch_size: int
    eval_batch_size: int
    num_workers: int
    feature_jobs: int
    length_jitter: float
    preload: bool
    seed: int


@dataclass
class OptimizerKeys:
    lr: float


@dataclass
class SchedulerKeys:
    warmup_steps: int
    hold_steps: int
    half_life_steps: int
    min_factor: float
    hold_until_pruned: bool


@dataclass
class ModuleKeys:
    optimizer: OptimizerKeys
    scheduler: SchedulerKeys | None
    ctc_pretrain_steps: int
    max_loss: float


@dataclass
class EncoderKeys:
    hidden_size: int
    num_layers: int
    pool: list
    input_stack: int
    layer_norm: bool
    dropout: float


@dataclass
class DecoderKeys:
    embedding_size: int
    hidden_size: int
    attention_size: int
    pre_output_size: int
    chunk_size: int
    init_r: float
    init_gain: float
    noise_std: float
    dropout: float


@dataclass
class ModelKeys:
    encoder: EncoderKeys
    decoder: DecoderKeys
    ctc_weight: float
    label_smoothing: float


@dataclass
class DecodingKeys:
    beam_size: int
    length_penalty: float
    max_decode_ratio: float
    hard_fallback: bool
    sparse_min_sparsity: float | None


@dataclass
class MeasureSpeedupKeys:
    reference: str | None
    utterances: int
    threads: int
    repeats: int


@dataclass
class TrainKeys:
    """The root of ``conf/train.yaml`` (the keys whose type is known; others are not checked)."""

    seed: int
    test: bool
    evaluate_seed: bool
    ckpt_path: str | None
    init_from: str | None
    trainer: TrainerKeys
    data: DataKeys
    module: ModuleKeys
    model: ModelKeys
    decoding: DecodingKeys
    measure_speedup: MeasureSpeedupKeys


def check_train_config(cfg: DictConfig) -> None:
    """Raise a one-line config error for a key of :class:`TrainKeys` of the wrong type, or for a training
    budget that trains nothing (``trainer.max_epochs`` or ``trainer.max_steps`` 0, ``limit_train_batches`` 0)."""
    check_types(cfg, TrainKeys)
    trainer = cfg.trainer
    for key in ("max_epochs", "max_steps"):
        value = trainer.get(key)
        if value is not None and (value == 0 or value < -1):
            raise ConfigValueError(f"config: trainer.{key}={value} trains nothing: the run would end without a "
                                   f"checkpoint. Fix: give trainer.{key} at least 1 (or -1: no limit)")
    if trainer.get("limit_train_batches") == 0:
        raise ConfigValueError("config: trainer.limit_train_batches=0 trains nothing: the run would end without a "
                               "checkpoint. Fix: leave it out or give it a positive share or count of batches")
