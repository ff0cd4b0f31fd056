"""The search stage behind ``search.py``: baseline + proxy set in, RL search (Algorithm 1), report out.

Output directory (``output_dir``), every file enough to resume or reproduce:
``explored-rank<r>.jsonl`` (the explored set W, append-only), ``checkpoints/last.ckpt`` (controller,
optimizer, reward baseline), ``best_scheme.json`` (the result, chosen on the whole dev split: the input of retraining),
``report.json`` / ``report.md`` (Table 1), ``explored.png`` (Fig. 4) and ``wall_time.json`` (the wall
time of every attempt: a resumed search reports the total). ``search=optuna_tpe`` adds ``study.db``, its Optuna
study (:mod:`rl.optuna_search`); ``search=greedy`` adds ``greedy_curves.json``, its decoded single-target curves
(:mod:`rl.greedy_search`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from pathlib import Path

import hydra
import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from asr.data.errors import DataError
from asr.evaluate import evaluate
from asr.train import instantiate_group
from common.atomic import write_json_atomic, write_text_atomic
from common.errors import KnownError
from compress.cost import check_by, estimate_speedup
from compress.latency_cost import LatencyTable, key_hash
from compress.manual import uniform_energy_scheme
from compress.scheme import Scheme, apply_scheme, file_fingerprint
from compress.sensitivity import load_table, sensitive_targets
from compress.svd import SvdCache
from rl.explored import ExploredSet
from rl.report import markdown_table, plot_explored
from rl.search_module import SearchModule
from rl.space import SearchSpace, sensitivity_space, uniform_space, widened_sensitivity_space
from shrinkml.latency_table import stage_table
from shrinkml.stage import data_module, eval_batches, load_recognizer, profiled_targets, wer_scorer

log = logging.getLogger(__name__)


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
    space = cfg.search.space
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
    raise ValueError(f"search.space.kind must be uniform or sensitivity, got {space.kind!r}")


def mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def open_explored(out: Path, rank: int) -> ExploredSet:
    """Rank ``rank``'s explored-set file, reading the other ranks' files too (one W across DDP ranks)."""
    own = out / f"explored-rank{rank}.jsonl"
    return ExploredSet(own, [p for p in sorted(out.glob("explored-rank*.jsonl")) if p != own])


# of a result scheme, by search.policy (others: random)
PROVENANCE = {"rl": "automl", "optuna_tpe": "optuna", "greedy": "greedy"}


class StaleSearchError(KnownError, RuntimeError):
    """The search state in ``output_dir`` was made from another baseline checkpoint."""


STATE_FILES = ("explored-rank*.jsonl", "checkpoints", "best_scheme.json", "report.json", "report.md", "explored.png",
               "wall_time.json", "study.db*", "greedy_curves.json")


class SearchClock(L.Callback):
    """Wall time of a search over all its attempts (running the command again to resume is a new attempt).

    ``path`` (``wall_time.json``) lists the seconds of every attempt; this attempt's entry is rewritten
    atomically after every search step and at the end, so an attempt that is killed still counts up
    to its last step.
    """

    def __init__(self, path: Path, started: float):
        self.path, self.started = Path(path), started
        self.earlier: list[float] = []
        if self.path.is_file():
            try:
                self.earlier = [float(s) for s in json.loads(self.path.read_text())["attempt_seconds"]]
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(f"{self.path} is not a search wall-time record ({err!r}); delete it (the total "
                                 "then counts from this attempt) or restore it") from err

    @property
    def attempts(self) -> int:
        return len(self.earlier) + 1

    def total(self) -> float:
        """Seconds over every attempt, this one up to now."""
        return sum(self.earlier) + time.time() - self.started

    def save(self) -> None:
        write_json_atomic(self.path, {"attempt_seconds": [*self.earlier, round(time.time() - self.started, 3)]})

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.is_global_zero:
            self.save()


def guard_search_state(out: Path, ckpt: str | Path, on_stale: str) -> None:
    """Make sure the search state in ``out`` belongs to checkpoint ``ckpt`` before resuming it.

    ``source.json`` records the checkpoint's SHA-256 when a search starts. State made from another
    checkpoint (or with no record) is stale: resuming it would mix WERs of two models. With
    ``on_stale=error`` the search stops and says what to do; with ``restart`` the stale files move
    into ``out/stale-<sha>/`` (nothing is deleted) and the search starts afresh.
    """
    if on_stale not in ("error", "restart"):
        raise ValueError(f"on_stale={on_stale!r}; choose error or restart")
    sha = file_fingerprint(ckpt)
    record = out / "source.json"
    state = [p for pattern in STATE_FILES for p in out.glob(pattern)]
    made_from = json.loads(record.read_text()).get("checkpoint_sha256") if record.is_file() else None
    if state and made_from != sha:
        if on_stale == "error":
            raise StaleSearchError(f"{out} holds a search of another baseline checkpoint than {ckpt} "
                             f"({'recorded ' + made_from[:12] if made_from else 'no record'}, now {sha[:12]}): "
                             "run with on_stale=restart to keep it aside and start afresh, or choose another "
                             "output_dir")
        aside = out / f"stale-{(made_from or 'unknown')[:12]}"
        aside.mkdir(parents=True, exist_ok=True)
        for path in state:
            path.rename(aside / path.name)
        log.warning("search state of another checkpoint moved to %s; starting afresh", aside)
    write_json_atomic(record, {"checkpoint": str(Path(ckpt).resolve()), "checkpoint_sha256": sha})


def guard_study(out: Path, study_signature: dict, on_stale: str) -> None:
    """``search=optuna_tpe``: an Optuna study in ``out`` made for another search space, a_t, reward or estimate
    (or a file that is no study) is stale like state of another checkpoint (:func:`guard_search_state`): an
    error, or with ``on_stale=restart`` the state moves into ``out/stale-study-<hash>/`` and the search starts
    afresh."""
    from rl.optuna_search import STUDY_FILE, StudyMismatchError, stored_signature

    path = out / STUDY_FILE
    try:
        stored = stored_signature(path)
        reason = None if stored in (None, study_signature) else ("holds a study of another search space, a_t, reward "
                                                                 "or estimate")
    except StudyMismatchError as err:
        stored, reason = None, f"cannot be resumed ({err})"
    if reason is None:
        return
    if on_stale == "error":
        raise StaleSearchError(f"{path} {reason}: run with on_stale=restart to keep it aside and start afresh, or "
                               "choose another output_dir")
    digest = hashlib.sha1(json.dumps(stored, sort_keys=True).encode()).hexdigest()[:12] if stored else "unreadable"
    aside = out / f"stale-study-{digest}"
    aside.mkdir(parents=True, exist_ok=True)
    for state in [p for pattern in STATE_FILES for p in out.glob(pattern)]:
        state.rename(aside / state.name)
    log.warning("search state of another search space or settings moved to %s; starting afresh", aside)


def guard_curves(out: Path, baseline_wer: float, on_stale: str) -> None:
    """``search=greedy``: curves decoded on another proxy set (another baseline proxy WER), or a file that is no
    curves file, are stale like state of another checkpoint: an error, or with ``on_stale=restart`` the state
    moves into ``out/stale-curves-<date-time>/`` and the search starts afresh."""
    from rl.greedy_search import CURVES_FILE, CurvesMismatchError, read_points

    try:
        read_points(out / CURVES_FILE, baseline_wer)
        return
    except CurvesMismatchError as err:
        if on_stale == "error":
            raise StaleSearchError(f"{err}: run with on_stale=restart to keep it aside and start afresh, or choose "
                                   "another output_dir") from err
    aside = out / f"stale-curves-{time.strftime('%Y%m%d-%H%M%S')}"
    aside.mkdir(parents=True, exist_ok=True)
    for state in [p for pattern in STATE_FILES for p in out.glob(pattern)]:
        state.rename(aside / state.name)
    log.warning("greedy curves of another proxy set moved to %s with the other search state; starting afresh", aside)


def run_search(cfg: DictConfig) -> dict:
    """Run (or resume) the search of ``cfg`` and write its result and report; returns the report."""
    L.seed_everything(cfg.seed, workers=True)
    started = time.time()
    out = Path(cfg.output_dir)
    check_by(cfg.by)
    module = load_recognizer(cfg.ckpt, cfg.decoding)  # a checkpoint it cannot read stops it before any write
    guard_search_state(out, cfg.ckpt, cfg.on_stale)
    clock = SearchClock(out / "wall_time.json", started)
    model = module.model
    datamodule = data_module(cfg.data)
    proxy = eval_batches(datamodule, cfg.split, utt_ids=proxy_utterances(cfg, datamodule))
    targets = profiled_targets(module, proxy, cfg.targets.include, cfg.targets.exclude)
    cache = SvdCache()
    search = cfg.search
    space = build_space(cfg, targets, cache, model)
    latency_table, _ = stage_table(cfg.by, cfg.latency, cfg.ckpt, model, targets,  # measured now, or reused
                                   lambda: eval_batches(datamodule, cfg.split), module.assets.features.frame_shift_ms,
                                   cache, dict(zip(space.names, space.options, strict=True)))
    space.check_reachable(targets, search.target_speedup, cfg.by, latency_table)
    if search.policy == "optuna_tpe":
        from rl.optuna_search import signature

        # another latency table is another estimate: its study is stale
        by = f"latency@{key_hash(latency_table.key)}" if cfg.by == "latency" else cfg.by
        study_signature = signature(space, search.target_speedup, search.reward, by)
        guard_study(out, study_signature, cfg.on_stale)
    score = wer_scorer(module, proxy)
    decode_started = time.perf_counter()
    baseline_wer = score(model)
    proxy_decode_seconds = time.perf_counter() - decode_started
    if search.policy == "greedy":
        guard_curves(out, baseline_wer, cfg.on_stale)
    log.info("proxy set: %d utterances, baseline WER %.2f; search space %d x %d", sum(len(b["utt_ids"]) for b in proxy),
             baseline_wer, *space.shape)

    def estimate(ranks: dict) -> float:
        return estimate_speedup(targets, ranks, cfg.by, latency_table)

    def evaluate_ranks(ranks: dict) -> float:
        return score(apply_scheme(model, Scheme.build(targets, ranks, "automl"), targets, cache))

    checkpoints = ModelCheckpoint(dirpath=out / "checkpoints", save_last=True, save_top_k=0,
                                  every_n_train_steps=cfg.checkpoint_every)
    trainer = hydra.utils.instantiate(cfg.trainer, max_steps=search.steps, callbacks=[checkpoints, clock],
                                      logger=instantiate_group(cfg.get("logger")) or False)
    rank = trainer.global_rank
    explored = open_explored(out, rank)
    optimizer = hydra.utils.instantiate(search.optimizer, _partial_=True)
    if search.policy == "greedy":
        from rl.greedy_search import CURVES_FILE, GreedySearch

        def on_decode(metrics: dict, step: int) -> None:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)
            clock.save()

        table = load_table(cfg.sensitivity_table) if Path(cfg.sensitivity_table).is_file() else None
        searcher = GreedySearch(space, estimate, evaluate_ranks, baseline_wer, search.target_speedup, search.reward,
                                explored, out / CURVES_FILE, table, search.curves, search.monotonic, search.steps,
                                on_decode)
    elif search.policy == "optuna_tpe":
        from rl.optuna_search import STUDY_FILE, OptunaSearchModule

        searcher = OptunaSearchModule(space, estimate, evaluate_ranks, baseline_wer, search.target_speedup,
                                      search.reward, explored, out / STUDY_FILE, study_signature, optimizer, cfg.seed,
                                      search.n_startup_trials, search.n_ei_candidates, search.multivariate,
                                      search.feasible_draws, trainer.world_size, search.max_decodes)
    else:
        searcher = SearchModule(space, estimate, evaluate_ranks, baseline_wer, search.target_speedup, search.reward,
                                explored, optimizer, search.baseline_decay, search.policy, cfg.seed,
                                normalize_advantage=search.normalize_advantage, entropy_weight=search.entropy_weight,
                                feasibility=search.feasibility, max_decodes=search.max_decodes)
    for logger in trainer.loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    last = out / "checkpoints" / "last.ckpt"
    steps = torch.utils.data.DataLoader(list(range(search.steps)), batch_size=None)
    if search.policy == "greedy":  # one process, no training: the curves file and W are its state
        searcher.run()
    else:
        trainer.fit(searcher, train_dataloaders=steps, ckpt_path=str(last) if last.is_file() else None,
                    weights_only=False)
    if rank != 0:
        return {}
    explored = open_explored(out, 0)
    report = finalize(cfg, module, targets, cache, datamodule, explored, baseline_wer, score, searcher,
                      clock.total(), proxy_decode_seconds, clock.attempts, latency_table=latency_table)
    clock.save()
    for logger in trainer.loggers:
        if hasattr(logger, "log_image"):
            logger.log_image("search/explored", [str(out / "explored.png")])
            logger.experiment.summary.update({k: v for k, v in report["summary"].items() if v is not None})
    return report


def finalize(cfg, module, targets, cache, datamodule, explored: ExploredSet, baseline_wer: float, score,
             searcher: SearchModule, wall_seconds: float, proxy_decode_seconds: float, attempts: int,
             latency_table: LatencyTable | None = None) -> dict:
    """Re-evaluate the top-k explored schemes on the whole dev split and on the test splits, choose the
    result on dev, compare it with the manual baselines and the dense model, and write the result
    scheme, Table 1 and Fig. 4.

    The result scheme is the top-k scheme with the lowest WER on the whole dev split ``cfg.split``
    (greedy decoding), even when the search's proxy is a subset of it: the test splits are only
    reported, never looked at to choose, so the test WER of the retrained result stays unbiased.
    With a measured ``latency_table`` (required by ``by=latency``) every row also reports ``speedup/latency``.
    """
    out, search, model = Path(cfg.output_dir), cfg.search, module.model
    a_t = search.target_speedup

    def latency_estimate(scheme: Scheme) -> dict:
        return {"speedup/latency": scheme.estimates["speedup/latency"]} if latency_table is not None else {}

    tokenizer = module.assets.tokenizer
    dev = cfg.split
    dev_key = f"wer/{dev}"
    splits = {split: eval_batches(datamodule, split) for split in dict.fromkeys([dev, *cfg.test_splits])}

    def split_wers(compressed) -> dict:
        """``wer/<split>`` on the whole dev split (the choice) and the test splits (the report)."""
        return {f"wer/{split}": evaluate(compressed, batches, tokenizer).wer for split, batches in splits.items()}

    latency = {"speedup/latency": 1.0} if latency_table is not None else {}
    rows = [{"model": "baseline", "speedup/params": 1.0, **latency, "proxy_wer": baseline_wer, **split_wers(model)}]
    weights = {t.name: t.weight(model) for t in targets}
    manual_dense = {"naive": []}
    if Path(cfg.sensitivity_table).is_file():
        table = load_table(cfg.sensitivity_table)
        manual_dense["guided"] = sensitive_targets(table, cfg.guided.energy, cfg.guided.max_delta)
    curves: dict[str, list[tuple[float, float]]] = {}
    for method, dense in manual_dense.items():
        try:
            scheme = uniform_energy_scheme(targets, weights, cache, a_t, cfg.by, dense, provenance=method,
                                           latency_table=latency_table)
        except ValueError as err:
            log.warning("manual %s baseline at %.2fx: %s", method, a_t, err)
            continue
        compressed = apply_scheme(model, scheme, targets, cache)
        rows.append({"model": f"manual {method}", "speedup/params": scheme.estimates["speedup/params"],
                     **latency_estimate(scheme), "proxy_wer": score(compressed), **split_wers(compressed)})
        curves[method] = []
        for a in cfg.report.curve_speedups:
            try:
                point = uniform_energy_scheme(targets, weights, cache, a, cfg.by, dense, provenance=method,
                                              latency_table=latency_table)
            except ValueError:
                continue
            curves[method].append((point.estimates[f"speedup/{cfg.by}"],
                                   score(apply_scheme(model, point, targets, cache))))
    candidates = []
    for rank_in_search, point in enumerate(explored.best(a_t, cfg.report.top_k), start=1):
        scheme = Scheme.build(targets, point["ranks"], PROVENANCE.get(search.policy, "random"),
                              latency_table=latency_table)
        wers = split_wers(apply_scheme(model, scheme, targets, cache))
        row = {"model": f"{search.policy} #{rank_in_search}", "speedup/params": scheme.estimates["speedup/params"],
               **latency_estimate(scheme), "proxy_wer": point["wer"], "found_at_step": point["step"], **wers,
               "selected": ""}
        rows.append(row)
        candidates.append((scheme, wers, point, row))
    summary = {"target_speedup": a_t, "explored": len(explored), "steps": search.steps,
               "acceptance": searcher.counts["accepted"] / max(searcher.counts["samples"], 1),
               "search_wall_seconds": round(wall_seconds, 1), "search_attempts": attempts,
               "baseline_proxy_wer": baseline_wer,
               "mean_step_seconds": mean(searcher.step_seconds),
               "mean_evaluated_step_seconds": mean(searcher.evaluated_step_seconds),
               "proxy_decode_seconds": round(proxy_decode_seconds, 3)}
    if latency_table is not None:  # runs/latency/<hash>.json
        summary["latency_table"] = key_hash(latency_table.key)
    if hasattr(searcher, "study_summary"):  # search=optuna_tpe: its study's trial counts and decodes
        summary.update(searcher.study_summary())
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
                        "speedup/macs": scheme.estimates.get("speedup/macs"), **latency_estimate(scheme), **wers})
    report = {"summary": summary, "rows": rows, "curves": curves}
    write_json_atomic(out / "report.json", report)
    columns = ["model", "speedup/params", *latency, "proxy_wer", *[f"wer/{s}" for s in splits], "found_at_step",
               "selected"]
    text = (f"# Search `{search.name}` (a_t = {a_t}, policy {search.policy}, {search.steps} steps, "
            f"{wall_seconds / 60:.1f} min)\n\nThe result is the top-{cfg.report.top_k} scheme with the lowest "
            f"WER on the whole `{dev}` split (greedy); the test splits are reported, not used to choose.\n\n"
            + markdown_table(rows, columns))
    write_text_atomic(out / "report.md", text)
    plot_explored(list(explored), out / "explored.png", a_t, baseline_wer, curves,
                  title=f"{search.name}: explored schemes (a_t = {a_t})")
    print(text)
    return report
