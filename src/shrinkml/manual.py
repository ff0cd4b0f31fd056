"""The manual-baselines stage behind ``scripts/manual_baselines.py`` (paper Fig. 4) for target speed-ups ``a_t``.

For each ``a_t`` and method (``naive``: one energy for every target; ``guided``: the same with the
sensitivity table's sensitive targets dense), writes the scheme as JSON with its dev WER
(``output_dir/schemes/<method>-<a_t>x.json``, the format the search and ``compress=lowrank`` read)
and a summary ``manual.json``; logs both to W&B (group ``manual``).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from asr.train import instantiate_group
from common.atomic import write_json_atomic
from compress.cost import check_by
from compress.manual import uniform_energy_scheme
from compress.scheme import apply_scheme, count_parameters, file_fingerprint
from compress.sensitivity import load_table, sensitive_targets
from compress.svd import SvdCache
from shrinkml.latency_table import stage_table
from shrinkml.stage import eval_batches, load_recognizer, profiled_targets, wer_scorer

METHODS = ("naive", "guided")


def run_manual(cfg: DictConfig) -> dict:
    """Build, score and write the manual schemes of ``cfg``; returns the summary written to ``manual.json``.

    Raises ``ValueError`` for an unknown method or a speed-up out of reach, ``FileNotFoundError``
    for a missing checkpoint or sensitivity table."""
    unknown = set(cfg.methods) - set(METHODS)
    if unknown:
        raise ValueError(f"methods {sorted(unknown)} unknown; choose from {list(METHODS)}")
    check_by(cfg.by)
    module = load_recognizer(cfg.ckpt, cfg.decoding)
    dense_targets = []
    if "guided" in cfg.methods:
        table = load_table(cfg.guided.table)
        dense_targets = sensitive_targets(table, cfg.guided.energy, cfg.guided.max_delta)
    batches = eval_batches(cfg.data, cfg.split, cfg.max_utterances)
    model = module.model
    targets = profiled_targets(module, batches, cfg.targets.include, cfg.targets.exclude)
    weights = {t.name: t.weight(model) for t in targets}
    cache, score = SvdCache(), wer_scorer(module, batches)
    table, _ = stage_table(cfg.by, cfg.latency, cfg.ckpt, model, targets, lambda: batches,
                           module.assets.features.frame_shift_ms, cache)
    fingerprint = file_fingerprint(cfg.ckpt)
    baseline_wer = score(model)
    latency = {"speedup/latency": 1.0} if table is not None else {}
    rows = [{"method": "dense", "target_speedup": 1.0, "energy": 1.0, "speedup/params": 1.0, "speedup/macs": 1.0,
             **latency, "params": count_parameters(model), f"wer/{cfg.split}": baseline_wer}]
    print(f"dense: WER {baseline_wer:.2f}, {rows[0]['params'] / 1e6:.2f} M parameters")
    out = Path(cfg.output_dir)
    for a_t in cfg.speedups:
        for method in cfg.methods:
            dense = dense_targets if method == "guided" else []
            try:
                scheme = uniform_energy_scheme(targets, weights, cache, float(a_t), cfg.by, dense, provenance=method,
                                               latency_table=table)
            except ValueError as err:
                raise ValueError(f"{method} {a_t}x: {err}") from err
            compressed = apply_scheme(model, scheme, targets, cache)
            scheme.metrics[f"wer/{cfg.split}"] = wer = score(compressed)
            scheme.meta.update(checkpoint=str(Path(cfg.ckpt).resolve()), checkpoint_sha256=fingerprint, split=cfg.split)
            scheme.save(out / "schemes" / f"{method}-{a_t}x.json")
            rows.append({"method": method, "target_speedup": float(a_t), "energy": scheme.meta["energy"],
                         **scheme.estimates, "params": count_parameters(compressed), f"wer/{cfg.split}": wer})
            estimates = scheme.estimates
            measured = f" / {estimates['speedup/latency']:.2f}x latency" if table is not None else ""
            print(f"{method} {a_t}x: energy {scheme.meta['energy']:.3f}, est. {estimates['speedup/params']:.2f}x "
                  f"params / {estimates.get('speedup/macs', float('nan')):.2f}x MACs{measured}, WER {wer:.2f} "
                  f"({wer - baseline_wer:+.2f}), dense targets: {dense or 'none'}")
    summary = {"checkpoint": str(Path(cfg.ckpt).resolve()), "split": cfg.split, "by": cfg.by,
               "sensitive_targets": dense_targets, "rows": rows}
    write_json_atomic(out / "manual.json", summary)
    for logger in instantiate_group(cfg.get("logger")):
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        if hasattr(logger, "log_table"):
            logger.log_table("manual/table", columns=list(rows[1]), data=[[r.get(k) for k in rows[1]] for r in rows])
            logger.experiment.summary.update({f"wer/{cfg.split}": baseline_wer})
        logger.finalize("success")
    return summary
