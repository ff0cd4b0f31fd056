"""The sensitivity stage behind ``scripts/sensitivity.py``: single-target sensitivity analysis (paper Fig. 2).

Factorizes each target alone at each energy, measures dev WER with greedy decoding, and writes
``sensitivity.json`` (the input of the guided baseline and of the search's rank ranges) and
``sensitivity.png`` to ``output_dir``; both are logged to W&B (group ``sensitivity``).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from asr.train import instantiate_group
from common.atomic import write_json_atomic
from compress.sensitivity import plot_table, sensitivity_table
from compress.svd import SvdCache
from compress.targets import discover_targets
from shrinkml.stage import eval_batches, load_recognizer, wer_scorer


def run_sensitivity(cfg: DictConfig) -> dict:
    """Measure the sensitivity table of ``cfg.ckpt`` and write and log it; returns the table."""
    module = load_recognizer(cfg.ckpt, cfg.decoding)
    batches = eval_batches(cfg.data, cfg.split, cfg.max_utterances)
    model = module.model
    targets = discover_targets(model, cfg.targets.include, cfg.targets.exclude)
    table = sensitivity_table(model, targets, SvdCache(), wer_scorer(module, batches), list(cfg.energies),
                              progress=print)
    table.update(checkpoint=str(Path(cfg.ckpt).resolve()), split=cfg.split,
                 utterances=sum(len(b["utt_ids"]) for b in batches))
    out = Path(cfg.output_dir)
    write_json_atomic(out / "sensitivity.json", table)
    plot_table(table, out / "sensitivity.png")
    for logger in instantiate_group(cfg.get("logger")):
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        if hasattr(logger, "log_image"):
            logger.log_image("sensitivity/figure", [str(out / "sensitivity.png")])
            logger.log_table("sensitivity/table", columns=list(table["rows"][0]),
                             data=[list(r.values()) for r in table["rows"]])
            logger.experiment.summary.update({f"wer/{cfg.split}": table["baseline_wer"]})
        logger.finalize("success")
    return table
