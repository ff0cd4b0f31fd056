"""The sensitivity stage behind ``scripts/sensitivity.py``: single-target sensitivity analysis (paper Fig. 2).

Factorizes each target alone at each energy, measures dev WER with greedy decoding, and writes
``sensitivity.json`` (the input of the guided baseline and of the search's rank ranges) and
``sensitivity.png`` to ``output_dir``; both are logged to W&B (group ``sensitivity``). With
``kind=sparsity`` each target is magnitude-pruned alone at each of ``sparsities`` instead, into
``sensitivity_sparsity.json`` / ``.png`` (the rank table stays).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from asr.train import instantiate_group
from common.atomic import write_json_atomic
from compress.sensitivity import plot_table, sensitivity_table, sparsity_table
from compress.svd import SvdCache
from compress.targets import discover_targets
from shrinkml.stage import eval_batches, load_recognizer, wer_scorer

KINDS = ("rank", "sparsity")


def output_files(cfg: DictConfig) -> tuple[Path, Path]:
    """The table's JSON and figure paths of ``cfg.kind`` in ``cfg.output_dir``."""
    stem = "sensitivity" if cfg.kind == "rank" else "sensitivity_sparsity"
    return Path(cfg.output_dir) / f"{stem}.json", Path(cfg.output_dir) / f"{stem}.png"


def run_sensitivity(cfg: DictConfig) -> dict:
    """Measure the sensitivity table of ``cfg.ckpt`` and write and log it; returns the table."""
    module = load_recognizer(cfg.ckpt, cfg.decoding)
    batches = eval_batches(cfg.data, cfg.split, cfg.max_utterances)
    model = module.model
    targets = discover_targets(model, cfg.targets.include, cfg.targets.exclude)
    if cfg.kind not in KINDS:
        raise ValueError(f"kind={cfg.kind!r} is unknown; choose one of {', '.join(KINDS)}")
    if cfg.kind == "sparsity":
        table = sparsity_table(model, targets, wer_scorer(module, batches), list(cfg.sparsities), list(cfg.block),
                               progress=print)
    else:
        table = sensitivity_table(model, targets, SvdCache(), wer_scorer(module, batches), list(cfg.energies),
                                  progress=print)
    table.update(checkpoint=str(Path(cfg.ckpt).resolve()), split=cfg.split,
                 utterances=sum(len(b["utt_ids"]) for b in batches))
    json_path, figure = output_files(cfg)
    write_json_atomic(json_path, table)
    plot_table(table, figure)
    for logger in instantiate_group(cfg.get("logger")):
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        if hasattr(logger, "log_image"):
            logger.log_image(f"sensitivity/{cfg.kind}/figure", [str(figure)])
            logger.log_table(f"sensitivity/{cfg.kind}/table", columns=list(table["rows"][0]),
                             data=[list(r.values()) for r in table["rows"]])
            logger.experiment.summary.update({f"wer/{cfg.split}": table["baseline_wer"]})
        logger.finalize("success")
    return table
