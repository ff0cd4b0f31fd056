"""The search stage behind ``search.py``: baseline + proxy set in, a searcher on the search loop, report out.

The glue between the recognizer and :mod:`rl`: it builds the search space, the speed-up estimate and the proxy
scorer, the searcher of ``search.searcher`` (a Hydra ``_target_``), and runs it on :class:`rl.loop.SearchLoop`.

Output directory (``output_dir``), every file enough to resume or reproduce:
``explored-rank<k>.jsonl`` (the explored set W, append-only, one file per worker ``k``), ``checkpoints/last.ckpt``
(the loop's step and the searcher's state, e.g. controller, optimizer, reward baseline), ``source.json`` (what
the state was made for), ``worker-<k>.lock`` (while worker ``k`` runs), ``best_scheme.json`` (the result, chosen
on the whole dev split: the input of retraining),
``report.json`` / ``report.md`` (Table 1), ``explored.png`` (Fig. 4) and ``wall_time.json`` (the wall
time of every attempt: a resumed search reports the total). ``search=optuna_tpe`` adds ``study.db``, its Optuna
study (:mod:`rl.searchers.optuna_tpe`); ``search=greedy`` adds ``greedy_curves.json``, its decoded single-target
curves (:mod:`rl.searchers.greedy`).
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from pathlib import Path

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from asr.data.errors import DataError
from asr.evaluate import evaluate
from asr.train import instantiate_group
from common.atomic import write_json_atomic, write_text_atomic
from common.errors import KnownError
from compress.cost import check_by, estimate_speedup
from compress.latency_cost import LatencyTable, key_hash
from compress.manual import uniform_energy_scheme
from compress.scheme import Scheme, apply_scheme, file_fingerprint, split_settings
from compress.sensitivity import load_table, sensitive_targets
from compress.svd import SvdCache
from rl.explored import ExploredSet
from rl.loop import STATE_FILES, SearchClock, SearchLoop, StaleSearchError, WorkerLock, guard_state, worker_file
from rl.report import markdown_table, plot_explored
from rl.rewards import wer_reward
from rl.searcher import Searcher, SearchProblem
from rl.space import (
    SearchSpace,
    joint_space,
    option_rises,
    pareto_options,
    sensitivity_space,
    uniform_space,
    widened_sensitivity_space,
)
from shrinkml.latency_table import stage_table
from shrinkml.stage import data_module, eval_batches, load_recognizer, profiled_targets, wer_scorer

log = logging.getLogger(__name__)

__all__ = ["SearchClock", "StaleSearchError", "build_space", "finalize", "proxy_utterances", "run_search"]


def proxy_utterances(cfg: DictConfig, datamodule) -> list[str] | None:
    """The proxy set's utterance ids (``search.proxy``: ``full`` = None, ``random``, ``condensed``)."""
    kind = cfg.proxy
    if kind == "full":
        return None
    if kind == "random":
        ids = [u.utt_id for u in datamodule.datasets[cfg.split].utterances]
        return sorted(random.Random(cfg.seed).sample(ids, min(cfg.proxy_size, len(ids))))
    if kind == "condensed":
        path = Path(cfg.condensed_list)
        if not path.is_file():
            raise FileNotFoundError(f"condensed proxy list {path} not found; run scripts/condense.py first "
                                    "(make condense) or use search.proxy=random")
        ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
        if not ids:
            raise DataError(f"condensed proxy list {path} is empty; rerun scripts/condense.py with a lower correl_min")
        return ids
    raise ValueError(f"search.proxy must be full, random or condensed, got {kind!r}")


def build_space(cfg: DictConfig, targets, cache: SvdCache, model) -> SearchSpace:
    """The search space of ``search.space`` (``kind``: uniform, sensitivity or joint)."""
    space = cfg.search.space
    if space.kind == "joint":
        if space.rank_space not in ("sensitivity", "uniform"):
            raise ValueError(f"search.space.rank_space must be sensitivity or uniform, got {space.rank_space!r}")
        ranks = build_space(OmegaConf.merge(cfg, {"search": {"space": {"kind": space.rank_space}}}), targets, cache,
                            model)
        table_path = Path(space.sparsity_table) if space.get("sparsity_table") else None
        sparsity_table = load_table(table_path) if table_path is not None and table_path.is_file() else None
        if sparsity_table is None:
            log.info("joint space: no sparsity-sensitivity table (%s): every sparsity is an option", table_path)
        rank_table = load_table(cfg.sensitivity_table) if Path(cfg.sensitivity_table).is_file() else None
        return joint_space(targets, ranks, space.sparsities, space.patterns, space.factor_sparsities,
                           space.factor_patterns, space.rank_multiple, sparsity_table, space.max_delta, rank_table)
    if space.kind == "uniform":
        return uniform_space(targets, space.options, space.min_fraction, space.spacing)
    if space.kind == "sensitivity":
        spectra = {t.name: cache.get(t.name, t.weight(model)) for t in targets}
        table = load_table(cfg.sensitivity_table)
        if not space.widen:
            return sensitivity_space(targets, spectra, table, space.options, space.max_delta, space.min_fraction,
                                     space.spacing)
        # widened by the estimate a_t is measured in; a latency table needs the space first: parameters then
        by = "params" if cfg.by == "latency" else cfg.by
        built, delta = widened_sensitivity_space(
            targets, spectra, table, cfg.search.target_speedup, lambda ranks: estimate_speedup(targets, ranks, by),
            space.options, space.max_delta, space.min_fraction, space.spacing)
        if delta != space.max_delta:
            log.warning("search.space.max_delta %.2f cannot reach a_t %.3f; widened to %.2f (search.space.widen)",
                        space.max_delta, cfg.search.target_speedup, delta)
        return built
    raise ValueError(f"search.space.kind must be uniform, sensitivity or joint, got {space.kind!r}")


def scheme_speedup(targets, settings: dict, by: str, table: LatencyTable | None) -> float:
    """The estimated speed-up of ``settings`` (target -> any option of :mod:`compress.options`) by ``by``: Eq. 3
    for ranks alone, every technique's parameters (:meth:`Scheme.estimate`) otherwise, or the measured table."""
    if by == "latency" or all(not isinstance(v, dict) or set(v) == {"rank"} for v in settings.values()):
        plain = {name: v["rank"] if isinstance(v, dict) and set(v) == {"rank"} else v for name, v in settings.items()}
        return estimate_speedup(targets, plain if by != "latency" else settings, by, table)
    ranks, options = split_settings(settings)
    return Scheme(ranks, options=options).estimate(targets, by)


def search_signature(checkpoint_sha256: str, searcher: Searcher, baseline_wer: float) -> dict:
    """What the state in ``output_dir`` depends on: the checkpoint (its SHA-256) and the proxy set (its baseline
    WER), the searcher and its own signature (:meth:`Searcher.signature`)."""
    return {"checkpoint_sha256": checkpoint_sha256, "baseline_proxy_wer": round(float(baseline_wer), 6),
            "searcher": searcher.policy, "settings": searcher.signature()}


def run_search(cfg: DictConfig) -> dict:
    """Run (or resume) worker ``search.worker`` of the search of ``cfg``, and write its result and report; returns
    the report."""
    L.seed_everything(cfg.seed, workers=True)
    started = time.time()
    out, search = Path(cfg.output_dir), cfg.search
    check_by(cfg.by)
    if not 0 <= search.worker < search.workers:
        raise KnownError(f"search.worker={search.worker} must be in 0 .. search.workers - 1 ({search.workers - 1})")
    module = load_recognizer(cfg.ckpt, cfg.decoding)  # a checkpoint it cannot read stops it before any write
    with WorkerLock(out, search.worker):
        return search_worker(cfg, module, started)


def search_worker(cfg: DictConfig, module, started: float) -> dict:
    out, search, worker = Path(cfg.output_dir), cfg.search, cfg.search.worker
    clock = SearchClock(out / worker_file("wall_time.json", worker), started)
    model = module.model
    datamodule = data_module(cfg.data)
    proxy = eval_batches(datamodule, cfg.split, utt_ids=proxy_utterances(cfg, datamodule))
    targets = profiled_targets(module, proxy, cfg.targets.include, cfg.targets.exclude)
    cache = SvdCache()
    space = build_space(cfg, targets, cache, model)
    latency_table, _ = stage_table(cfg.by, cfg.latency, cfg.ckpt, model, targets,  # measured now, or reused
                                   lambda: eval_batches(datamodule, cfg.split), module.assets.features.frame_shift_ms,
                                   cache, extra_options=dict(zip(space.names, space.options, strict=True)))

    def estimate(ranks: dict) -> float:
        return scheme_speedup(targets, ranks, cfg.by, latency_table)

    if space.ragged:
        space.check_reach(estimate, search.target_speedup)
    else:
        space.check_reachable(targets, search.target_speedup, cfg.by, latency_table)
    score = wer_scorer(module, proxy)
    decode_started = time.perf_counter()
    baseline_wer = score(model)
    proxy_decode_seconds = time.perf_counter() - decode_started
    log.info("proxy set: %d utterances, baseline WER %.2f; search space %d x %d (%d options)",
             sum(len(b["utt_ids"]) for b in proxy), baseline_wer, *space.shape, sum(space.widths))

    # another latency table is another estimate: its state is stale
    by = f"latency@{key_hash(latency_table.key)}" if cfg.by == "latency" else cfg.by
    rises = None
    if space.ragged:  # every option's WER rise by the sensitivity tables: TPE's repair (and the Pareto front)
        tables = [Path(cfg.sensitivity_table), Path(search.space.sparsity_table or "")]
        tables = [load_table(t) if t.is_file() else None for t in tables]
        rises = option_rises(space, *tables)
        if search.space.pareto:
            space = pareto_options(space, space.costs(estimate), rises)
            rises = option_rises(space, *tables)
            log.info("joint space: %d options on the Pareto front of cost and estimated WER rise", sum(space.widths))
    problem = SearchProblem(space, estimate, search.target_speedup, search.reward, by, baseline_wer, cfg.seed,
                            worker, search.workers, out, rises)
    searcher: Searcher = hydra.utils.instantiate(search.searcher, _partial_=True)(problem=problem)
    checkpoint_sha256 = file_fingerprint(cfg.ckpt)
    guard_state(out, search_signature(checkpoint_sha256, searcher, baseline_wer), cfg.on_stale,
                (*STATE_FILES, *searcher.state_files()), searcher.stale_reason(out),
                note={"checkpoint": str(Path(cfg.ckpt).resolve()), "checkpoint_sha256": checkpoint_sha256})
    loggers = instantiate_group(cfg.get("logger"))
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    def log_metrics(metrics: dict, step: int) -> None:
        for logger in loggers:
            logger.log_metrics(metrics, step=step)

    w_b = baseline_wer
    reward = wer_reward(search.reward)
    loop = SearchLoop(searcher, ExploredSet.shared(out, worker),
                      lambda ranks: score(apply_scheme(model, Scheme.build(targets, ranks, "automl"), targets, cache)),
                      lambda wer: reward(wer, w_b), search.target_speedup, search.steps, search.max_decodes,
                      out / "checkpoints" / worker_file("last.ckpt", worker), cfg.checkpoint_every, worker, clock,
                      log_metrics).run()
    for logger in loggers:
        logger.save()
    # every worker's points; only this worker's own file may be repaired (another worker may be appending to its)
    report = finalize(cfg, module, targets, cache, datamodule, ExploredSet.shared(out, worker), baseline_wer, score,
                      searcher, loop.summary(), clock.total(), proxy_decode_seconds, clock.attempts,
                      latency_table=latency_table,
                      provenance=f"{searcher.provenance}-joint" if space.ragged else searcher.provenance)
    clock.save()
    for logger in loggers:
        if hasattr(logger, "log_image"):  # W&B
            logger.log_image("search/explored", [str(out / "explored.png")])
            logger.experiment.summary.update({k: v for k, v in report["summary"].items() if v is not None})
        logger.finalize("success")
    return report


def latency_of(scheme: Scheme, latency_table: LatencyTable | None) -> dict:
    """``{"speedup/latency": ...}`` of ``scheme`` with a measured latency table, else nothing."""
    return {"speedup/latency": scheme.estimates["speedup/latency"]} if latency_table is not None else {}


def manual_baselines(cfg: DictConfig, model, targets, cache: SvdCache, score: Callable, split_wers: Callable,
                     latency_table: LatencyTable | None) -> tuple[list[dict], dict[str, list[tuple[float, float]]]]:
    """Table 1's manual rows at ``a_t`` (naive; guided with a sensitivity table) and their Fig. 4 curves
    (``label -> [(speed-up, proxy WER)]`` at ``report.curve_speedups``)."""
    a_t = cfg.search.target_speedup
    weights = {t.name: t.weight(model) for t in targets}
    manual_dense = {"naive": []}
    if Path(cfg.sensitivity_table).is_file():
        table = load_table(cfg.sensitivity_table)
        manual_dense["guided"] = sensitive_targets(table, cfg.guided.energy, cfg.guided.max_delta)
    rows, curves = [], {}
    for method, dense in manual_dense.items():
        try:
            scheme = uniform_energy_scheme(targets, weights, cache, a_t, cfg.by, dense, provenance=method,
                                           latency_table=latency_table)
        except ValueError as err:
            log.warning("manual %s baseline at %.2fx: %s", method, a_t, err)
            continue
        compressed = apply_scheme(model, scheme, targets, cache)
        rows.append({"model": f"manual {method}", "speedup/params": scheme.estimates["speedup/params"],
                     **latency_of(scheme, latency_table), "proxy_wer": score(compressed), **split_wers(compressed)})
        curves[method] = []
        for a in cfg.report.curve_speedups:
            try:
                point = uniform_energy_scheme(targets, weights, cache, a, cfg.by, dense, provenance=method,
                                              latency_table=latency_table)
            except ValueError:
                continue
            curves[method].append((point.estimates[f"speedup/{cfg.by}"],
                                   score(apply_scheme(model, point, targets, cache))))
    return rows, curves


def fuller_report(path: Path, explored: int) -> dict | None:
    """The report at ``path`` when it was made from more than ``explored`` explored schemes (the explored set only
    grows, so such a report is a later snapshot's: another worker's, written first), else None. Several workers
    each report when they end; without this the one whose snapshot was older could overwrite the fuller report
    and result scheme. An unreadable file counts as none (it is rewritten)."""
    try:
        report = json.loads(path.read_text())
        return report if int(report["summary"]["explored"]) > explored else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def finalize(cfg, module, targets, cache, datamodule, explored: ExploredSet, baseline_wer: float, score,
             searcher: Searcher, loop_summary: dict, wall_seconds: float, proxy_decode_seconds: float, attempts: int,
             latency_table: LatencyTable | None = None, provenance: str | None = None) -> dict:
    """Re-evaluate the top-k explored schemes on the whole dev split and on the test splits, choose the
    result on dev, compare it with the manual baselines and the dense model, and write the result
    scheme, Table 1 and Fig. 4.

    The result scheme is the top-k scheme with the lowest WER on the whole dev split ``cfg.split``
    (greedy decoding), even when the search's proxy is a subset of it: the test splits are only
    reported, never looked at to choose, so the test WER of the retrained result stays unbiased.
    With a measured ``latency_table`` (required by ``by=latency``) every row also reports ``speedup/latency``.
    ``loop_summary``: :meth:`SearchLoop.summary` (acceptance, step times, the searcher's own entries).
    ``provenance``: the result scheme's (default: the searcher's; ``<searcher's>-joint`` from the joint space).
    """
    out, search, model = Path(cfg.output_dir), cfg.search, module.model
    a_t = search.target_speedup
    fuller = fuller_report(out / "report.json", len(explored))
    if fuller is not None:  # another worker of this search reported after more of the shared explored set
        log.info("%s reports %d explored schemes, more than this worker saw (%d): kept", out / "report.json",
                 fuller["summary"]["explored"], len(explored))
        return fuller

    tokenizer = module.assets.tokenizer
    dev = cfg.split
    dev_key = f"wer/{dev}"
    splits = {split: eval_batches(datamodule, split) for split in dict.fromkeys([dev, *cfg.test_splits])}

    def split_wers(compressed) -> dict:
        """``wer/<split>`` on the whole dev split (the choice) and the test splits (the report)."""
        return {f"wer/{split}": evaluate(compressed, batches, tokenizer).wer for split, batches in splits.items()}

    latency = {"speedup/latency": 1.0} if latency_table is not None else {}
    rows = [{"model": "baseline", "speedup/params": 1.0, **latency, "proxy_wer": baseline_wer, **split_wers(model)}]
    manual, curves = manual_baselines(cfg, model, targets, cache, score, split_wers, latency_table)
    rows += manual
    candidates = []
    for rank_in_search, point in enumerate(explored.best(a_t, cfg.report.top_k), start=1):
        scheme = Scheme.build(targets, point["ranks"], provenance or searcher.provenance, latency_table=latency_table)
        wers = split_wers(apply_scheme(model, scheme, targets, cache))
        row = {"model": f"{searcher.policy} #{rank_in_search}", "speedup/params": scheme.estimates["speedup/params"],
               **latency_of(scheme, latency_table), "proxy_wer": point["wer"], "found_at_step": point["step"], **wers,
               "selected": ""}
        rows.append(row)
        candidates.append((scheme, wers, point, row))
    summary = {"target_speedup": a_t, "policy": searcher.policy, "explored": len(explored), "steps": search.steps,
               "search_wall_seconds": round(wall_seconds, 1), "search_attempts": attempts,
               "baseline_proxy_wer": baseline_wer, "proxy_decode_seconds": round(proxy_decode_seconds, 3),
               **loop_summary}
    if latency_table is not None:  # runs/latency/<hash>.json
        summary["latency_table"] = key_hash(latency_table.key)
    if summary["mean_evaluated_step_seconds"] is not None:  # criterion: an evaluated step costs <= 1.2 decodes
        summary["evaluated_step_cost_in_decodes"] = summary["mean_evaluated_step_seconds"] / proxy_decode_seconds
    if not candidates:
        log.warning("no explored scheme reached a_t=%.2f: no result scheme written", a_t)
        summary["best"] = None
    else:
        # the lowest whole-dev WER; ties go to the better proxy WER (the search's order)
        scheme, wers, point, row = min(candidates, key=lambda c: c[1][dev_key])
        row["selected"] = f"on {dev}"
        scheme.metrics.update({"proxy_wer": point["wer"], **wers})
        scheme.meta.update(found_at_step=point["step"], search=search.name, target_speedup=a_t,
                           checkpoint=str(Path(cfg.ckpt).resolve()), checkpoint_sha256=file_fingerprint(cfg.ckpt),
                           search_wall_seconds=round(wall_seconds, 1), selected_on=dev)
        scheme.save(out / "best_scheme.json")
        summary.update({"best": str(out / "best_scheme.json"), "found_at_step": point["step"],
                        "provenance": scheme.provenance, "selected_on": dev,
                        "speedup/params": scheme.estimates["speedup/params"],
                        "speedup/macs": scheme.estimates.get("speedup/macs"), **latency_of(scheme, latency_table),
                        **wers})
    report = {"summary": summary, "rows": rows, "curves": curves}
    write_json_atomic(out / "report.json", report)
    columns = ["model", "speedup/params", *latency, "proxy_wer", *[f"wer/{s}" for s in splits], "found_at_step",
               "selected"]
    text = (f"# Search `{search.name}` (a_t = {a_t}, policy {searcher.policy}, {search.steps} steps, "
            f"{wall_seconds / 60:.1f} min)\n\nThe result is the top-{cfg.report.top_k} scheme with the lowest "
            f"WER on the whole `{dev}` split (greedy); the test splits are reported, not used to choose.\n\n"
            + markdown_table(rows, columns))
    write_text_atomic(out / "report.md", text)
    plot_explored(list(explored), out / "explored.png", a_t, baseline_wer, curves,
                  title=f"{search.name}: explored schemes (a_t = {a_t})")
    print(text)
    return report
