"""Which compression wins at a fixed parameter budget: the stage behind ``scripts/budget.py`` (``make budget``).

For each budget (a fraction of the baseline's decoded parameters, :mod:`shrinkml.budget_plan`), every method of
:mod:`shrinkml.budget_jobs` is run from the same baseline with equal training time (methods that start from the
baseline get the retraining budget R; students trained from scratch get the baseline's epochs plus R; the dense
control is the baseline continued for R), then measured and tabulated (:mod:`shrinkml.budget_report`).
The baseline's fingerprint is kept in ``<output_dir>/state.json``; results of another baseline are refused.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from asr.checkpoint import read_checkpoint
from asr.model.asr_model import AsrModel
from common.atomic import write_json_atomic
from compress.scheme import Scheme, file_fingerprint
from compress.targets import discover_targets
from shrinkml.budget_jobs import METHODS, SEARCHES, BudgetTargets, budget_jobs, dense_control_job, read_state, run_jobs
from shrinkml.budget_plan import (
    BaselineSize,
    BudgetError,
    baseline_size,
    budget_label,
    check_student,
    decoded_params,
    explicit_student,
    fit_student,
    parse_budget,
    student_sizes,
)
from shrinkml.budget_report import LABELS, SPARSE_METHODS, decoded_size, write_report
from shrinkml.results import (
    CONFIG,
    ResultsError,
    SelectionError,
    UnfinishedRun,
    check_selection,
    read_config,
    read_json,
    read_run,
    relative_change,
)
from shrinkml.timing import DENSE_KERNELS, measure_checkpoints

log = logging.getLogger(__name__)


class BaselineModel:
    """The baseline checkpoint's architecture: counts the decoded parameters of any model config like it."""

    def __init__(self, checkpoint: Mapping):
        hyper = checkpoint["hyper_parameters"]
        self.vocab_size, self.input_size = hyper["vocab_size"], hyper["input_size"]
        self.config = OmegaConf.to_container(OmegaConf.create(hyper["model"]), resolve=True)

    def build(self, model_cfg: Mapping | None = None) -> AsrModel:
        return AsrModel(self.vocab_size, self.input_size, **(model_cfg or self.config))

    def count(self, model_cfg: Mapping) -> int:
        return decoded_params(self.build(model_cfg))


def check_methods(methods) -> list[str]:
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise BudgetError(f"methods: {unknown} unknown; choose from {list(METHODS)}")
    return list(methods)


def goal_for(goals: Mapping | None, fraction: float) -> float | None:
    """The relative test WER rise (%) that ``goals`` (budget -> percent, e.g. ``{"1/3.7": 2}``) allows at
    ``fraction``; None when no goal names that budget."""
    for budget, percent in (goals or {}).items():
        try:
            matches = math.isclose(parse_budget(budget), fraction, rel_tol=1e-9)
        except BudgetError as err:
            raise BudgetError(f"goals: key {budget!r}: {err}") from None
        if matches:
            return float(percent)
    return None


def student_epochs(cfg: DictConfig) -> int:
    """``student.epochs``, or the baseline run's epochs (its saved config) plus the retraining budget's
    (``finetune.trainer.max_epochs``, conf/finetune/default.yaml)."""
    if cfg.student.epochs is not None:
        return int(cfg.student.epochs)
    run_dir = Path(cfg.baseline).resolve().parent.parent
    baseline = read_config(run_dir)
    if baseline is None:
        raise BudgetError(f"student.epochs=null needs the baseline run's {run_dir / CONFIG} to "
                          "read its epochs; set student.epochs (the baseline's epochs plus the retraining budget's)")
    epochs = OmegaConf.select(OmegaConf.create(baseline), "trainer.max_epochs")
    if epochs is None:
        raise BudgetError(f"the baseline run {run_dir} trained without trainer.max_epochs; set student.epochs")
    return int(epochs) + int(cfg.finetune.trainer.max_epochs)


def plan(cfg: DictConfig) -> tuple[BaselineSize, list[BudgetTargets]]:
    """The budgets of ``cfg``, each with what every method must reach and its goal; refuses unreachable budgets,
    students over budget and bad ``goals`` keys before anything runs."""
    checkpoint = read_checkpoint(cfg.baseline)
    baseline = BaselineModel(checkpoint)
    model = baseline.build()
    size = baseline_size(model, discover_targets(model, cfg.targets.include, cfg.targets.exclude))
    widths = list(cfg.student.widths)
    budgets = []
    for value in cfg.budgets:
        fraction = parse_budget(value)
        size.check(fraction)
        allowed = int(fraction * size.total)
        if cfg.student.model is not None:
            student, given = explicit_student(baseline.config, OmegaConf.to_container(cfg.student.model, resolve=True))
            check_student(baseline.count, student, widths, allowed)
        else:
            student, given = fit_student(baseline.count, baseline.config, widths, allowed, cfg.student.multiple), {}
        svd = size.svd_speedup(fraction)
        combo = round(svd ** float(cfg.svd_sparse.svd_share), 3)
        budgets.append(BudgetTargets(budget_label(fraction), fraction, allowed, svd, size.sparsity(fraction), combo,
                                     {**student_sizes(student, widths), **given}, goal_for(cfg.get("goals"), fraction)))
    return size, budgets


def guard_baseline(state_path: Path, baseline: str) -> None:
    """Record the baseline's SHA-256 in ``state.json``; refuse results of another baseline."""
    state = read_state(state_path)
    fingerprint = file_fingerprint(baseline)
    recorded = state.get("baseline_sha256")
    if recorded and recorded != fingerprint:
        raise BudgetError(f"{state_path.parent} holds results of baseline {recorded[:12]}, not of {baseline} "
                          f"({fingerprint[:12]}); move that directory aside (or set output_dir) to start over")
    state["baseline_sha256"] = fingerprint
    write_json_atomic(state_path, state)


def run_budget(cfg: DictConfig) -> dict:
    """Plan, run (unless ``collect_only``), measure and tabulate; returns ``{"budgets": [...], "files": {...}}``."""
    methods = check_methods(cfg.methods)
    missing = [script for script in ("train.py", "search.py", "scripts/quantize.py") if not Path(script).is_file()]
    if missing:
        raise BudgetError(f"{missing[0]} is not in {Path.cwd()}: run scripts/budget.py from the repository root "
                          "(make budget), whose commands it runs")
    size, budgets = plan(cfg)
    out = Path(cfg.output_dir)
    state_path = out / "state.json"
    guard_baseline(state_path, cfg.baseline)
    settings = {"baseline": cfg.baseline, "group": cfg.group, "search_overrides": list(cfg.search_overrides),
                "student_epochs": student_epochs(cfg) if any(METHODS[m].student for m in methods) else None,
                "distill": dict(cfg.student.distill), "quantize": cfg.quantize,
                "extra": OmegaConf.to_container(cfg.job_overrides, resolve=True)}
    for budget in budgets:
        print(f"{budget.label}: at most {budget.params:,} of {size.total:,} parameters; SVD a_t {budget.svd_speedup}, "
              f"sparsity {budget.sparsity}, SVD+sparsity a_t {budget.combo_speedup}, student {budget.student_model}")
    control_dir = Path(cfg.dense_control)
    jobs = dense_control_job(control_dir, settings)
    for budget in budgets:
        jobs += budget_jobs(budget, methods, out / budget.label, settings,
                            lambda scheme, b=budget: size.scheme_sparsity(b.fraction, Scheme.load(scheme)))
    if not cfg.collect_only:
        run_jobs(jobs, state_path)
    records = read_state(state_path).get("jobs", {})
    needs = {job.name: job.needs for job in jobs}
    tables = [collect(cfg, size, budget, methods, out / budget.label, control_dir, records, needs)
              for budget in budgets]
    wall = sum(record.get("seconds", 0.0) for record in records.values())
    files = write_report(tables, out, wall)
    if cfg.wandb:
        log_wandb(cfg, tables, files)
    return {"budgets": tables, "files": files}


def _seconds(records: Mapping, *names: str) -> float:
    return sum(records.get(name, {}).get("seconds", 0.0) for name in names)


def collect(cfg: DictConfig, size: BaselineSize, budget: BudgetTargets, methods, out: Path, control_dir: Path,
            records: Mapping, needs: Mapping[str, tuple[str, ...]]) -> dict:
    """One budget's rows (finished runs only), measured; rows whose selection is not on dev are left out, and
    listed under ``not_reported`` with why. ``needs``: job name -> the jobs it needs (a row's time adds theirs)."""
    from shrinkml.inspect_ckpt import inspect_checkpoint

    dev, test = cfg.data.dev_splits, cfg.data.test_splits[0]
    runs = [("dense_control", control_dir, None, ("dense_control",))]
    for method in methods:
        shared = METHODS[method].needs
        search = out / shared / "report.json" if shared in SEARCHES else None
        name = f"{budget.label}/{method}"
        runs.append((method, out / method, search, (name, *needs.get(name, ()))))
    rows, not_reported, checkpoints = [], {}, {}
    for method, run_dir, search, jobs in runs:
        try:
            run = read_run(run_dir)
            check_selection(run, dev, search)
            best = run.checkpoint
        except UnfinishedRun:
            record = records.get(jobs[0], {})
            not_reported[method] = f"{record.get('status', 'not run')} {record.get('message', '')}".strip()
            continue
        except (ResultsError, SelectionError) as err:
            not_reported[method] = str(err)
            continue
        summary = run.summary
        stored = decoded_size(inspect_checkpoint(best))
        row = {"method": LABELS[method], "key": method, "checkpoint": best, "params": stored["nonzeros"],
               "fits": None if method == "dense_control" else stored["nonzeros"] <= budget.params,
               "mb_fp32": stored["bytes_fp32"] / 2**20, "mb_int8": stored["bytes_int8"] / 2**20,
               "speedup_est": size.total / stored["nonzeros"], "wer_dev": summary.get(f"wer/{dev[0]}"),
               "wer_test": summary.get(f"wer/{test}"), "hours": _seconds(records, *jobs) / 3600 or None}
        int8 = run_dir / "int8" / "report.json"
        if int8.is_file():
            report = read_json(int8, "delete it and run scripts/budget.py again")
            row.update(wer_test_int8=report.get(f"wer/{test}"), speedup_int8=report.get("speedup/measured"))
        rows.append(row)
        checkpoints[method] = best
    measured = measure(cfg, out, checkpoints)
    control = next((r for r in rows if r["key"] == "dense_control"), None)
    for row in rows:
        timing = measured.get(row["key"], {})
        row.update(speedup=timing.get("speedup"), rtf=timing.get("rtf"),
                   speedup_dense_kernels=measured.get(row["key"] + DENSE_KERNELS, {}).get("speedup"),
                   vs_control=relative_change(row["wer_test"], control["wer_test"] if control else None))
    return {"label": budget.label, "fraction": budget.fraction, "params": budget.params, "baseline_params": size.total,
            "svd_speedup": budget.svd_speedup, "sparsity": budget.sparsity, "combo_speedup": budget.combo_speedup,
            "student_model": dict(budget.student_model), "goal_percent": budget.goal_percent,
            "rows": rows, "not_reported": not_reported}


def measure(cfg: DictConfig, out: Path, checkpoints: Mapping[str, str]) -> dict[str, dict]:
    """Batch-1 speed-up against the baseline of every checkpoint (sparse ones also on dense kernels), timed in one
    alternating run; cached in ``out/latency.json`` while the checkpoints and settings are unchanged."""
    if not checkpoints or not cfg.latency.measure:
        return {}
    return measure_checkpoints(cfg.baseline, checkpoints, cfg.decoding, cfg.data, cfg.latency, out / "latency.json",
                               dense_kernels=[name for name in checkpoints if name in SPARSE_METHODS])


def log_wandb(cfg: DictConfig, tables, files: Mapping[str, str]) -> None:
    """The tables and figures as one W&B run of group ``cfg.group`` (offline unless logged in)."""
    import wandb

    from asr.tracking import wandb_mode

    run = wandb.init(project=cfg.project, group=cfg.group, job_type="budget", name="budget", mode=wandb_mode(),
                     dir=str(Path(cfg.output_dir)), config=OmegaConf.to_container(cfg, resolve=True), reinit=True)
    keys = ["method", "params", "fits", "mb_fp32", "mb_int8", "speedup_est", "speedup", "speedup_dense_kernels",
            "wer_dev", "wer_test", "vs_control", "wer_test_int8", "speedup_int8"]
    for table in tables:
        run.log({f"budget/{table['label']}": wandb.Table(columns=keys, data=[[r.get(k) for k in keys]
                                                                            for r in table["rows"]])})
    for name, path in files.items():
        if path.endswith(".png"):
            run.log({f"budget/{name}": wandb.Image(path)})
    run.finish()
