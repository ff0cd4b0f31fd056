"""The runs of ``scripts/budget.py``: one job per method and budget, run in order, resumable.

Every job is one of the project's own commands (``search.py``, ``scripts/manual_baselines.py``,
``train.py``, ``scripts/quantize.py``) in a subprocess, with its output in ``<output_dir>/<budget>/<method>``.
A job is done when its result file exists (a run's ``summary.json``, a search's ``report.json``), so a
second ``scripts/budget.py`` skips finished rows; an interrupted training resumes from its
``last.ckpt``, an interrupted search from its own state. A job that fails (e.g. a search space that cannot
reach the budget's speed-up) is recorded with the last line it printed, the jobs that need it are skipped,
and the others go on; the next run retries it.

Methods, all from the same baseline (docs/budget.md), one entry each in :data:`METHODS` (name, table label,
sparse or not, the shared job it needs, how its training job is built):

* ``svd_automl``: the search at the budget's ``a_t`` (``search.py``, its default searcher), its scheme retrained
  (``+experiment=retrain``);
* ``svd_guided``: the guided manual scheme at ``a_t``, retrained;
* ``magnitude``, ``csp``: pruned to the budget's sparsity while fine-tuned (``+experiment=prune``);
* ``student_kd``, ``student``: the baseline's architecture scaled to the budget, trained from scratch for
  the baseline's epochs plus the retraining budget's, with and without the baseline as teacher;
* ``svd_kd``: the AutoML scheme retrained with distillation from the baseline (``+experiment=retrain_kd``);
* ``svd_sparse``: the guided scheme at ``a_t ** svd_share``, its factors pruned to the rest of the budget
  while retrained;
* ``joint``: the joint search (``search.space.kind=joint``: per target a rank, a sparsity or both) at the budget's
  ``a_t`` by parameters, its scheme retrained (ranks factorized, sparsities on Zhu & Gupta's schedule);
* ``dense_control``: the baseline trained on for the retraining budget (``+experiment=retrain_dense``),
  the reference row of every budget (one run for all).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from common.atomic import write_json_atomic
from shrinkml.budget_plan import BudgetError
from shrinkml.results import SUMMARY, ResultsError, read_run

log = logging.getLogger(__name__)

@dataclass
class Job:
    """One command: ``script`` with Hydra ``overrides`` (a list, or a function of nothing that builds it once the
    jobs it ``needs`` are done), finished when ``done`` exists. ``run_dir``: a training run resumed from
    ``run_dir/checkpoints/last.ckpt`` when there is one."""

    name: str
    script: str
    overrides: Sequence[str] | Callable[[], Sequence[str]]
    done: Path
    needs: tuple[str, ...] = ()
    run_dir: Path | None = None

    def arguments(self) -> list[str]:
        overrides = list(self.overrides() if callable(self.overrides) else self.overrides)
        last = self.run_dir / "checkpoints" / "last.ckpt" if self.run_dir is not None else None
        if last is not None and last.is_file():
            overrides.append(f"ckpt_path={last}")
        return overrides


def launch_subprocess(argv: Sequence[str], log_path: Path) -> tuple[int, str]:
    """Run ``argv``, its output appended to ``log_path``; ``(exit status, last non-empty line)``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        out.write(f"\n$ {' '.join(argv)}\n".encode())
        out.flush()
        status = subprocess.call(list(argv), stdout=out, stderr=subprocess.STDOUT)
    lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    return status, lines[-1].strip() if lines else ""


def read_state(path: Path) -> dict:
    if not path.is_file():
        return {"jobs": {}}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise BudgetError(f"{path} is not valid JSON ({err}); delete it (finished rows are kept: their result files "
                          "decide)") from None


def run_jobs(jobs: Sequence[Job], state_path: Path,
             launch: Callable[[Sequence[str], Path], tuple[int, str]] = launch_subprocess,
             python: str = sys.executable) -> dict[str, dict]:
    """Run the ``jobs`` not yet done, in order; returns (and writes atomically to ``state_path`` after each job)
    ``{job name: {"status": done|failed|skipped, "seconds", "message"}}``; ``seconds`` adds up the wall time
    of every attempt, an interrupted one's included (:func:`count_interrupted`)."""
    state = read_state(state_path)
    records: dict[str, dict] = state.setdefault("jobs", {})
    for job in jobs:
        record = records.setdefault(job.name, {"seconds": 0.0})
        log_path = state_path.parent / "logs" / f"{job.name.replace('/', '_')}.log"
        count_interrupted(record, log_path)
        if job.done.is_file():
            record["status"] = "done"
            continue
        missing = [need for need in job.needs if records.get(need, {}).get("status") != "done"]
        if missing:
            record.update(status="skipped", message=f"needs {', '.join(missing)}")
            log.warning("%s: skipped (needs %s)", job.name, ", ".join(missing))
            write_json_atomic(state_path, state)
            continue
        try:
            argv = [python, job.script, *job.arguments()]
        except (BudgetError, ResultsError, FileNotFoundError, ValueError) as err:
            record.update(status="failed", message=str(err))
            log.error("%s: %s", job.name, err)
            write_json_atomic(state_path, state)
            continue
        log.info("%s: %s", job.name, " ".join(argv[1:]))
        record.update(status="running", started=round(time.time(), 1))
        write_json_atomic(state_path, state)
        start = time.perf_counter()
        status, last_line = launch(argv, log_path)
        record["seconds"] = round(record.get("seconds", 0.0) + time.perf_counter() - start, 1)
        del record["started"]
        if status == 0 and job.done.is_file():
            record.update(status="done", message="")
        else:
            record.update(status="failed", message=last_line or f"exit status {status}")
            log.error("%s failed (exit %s): %s", job.name, status, record["message"])
        write_json_atomic(state_path, state)
    return records


def count_interrupted(record: dict, log_path: Path) -> None:
    """Add to ``record["seconds"]`` the time of an attempt that never came back (the run was killed, the machine
    stopped): a record still ``running`` since ``started`` (Unix time), counted until its log was last written,
    and counted in ``record["interrupted"]``; the caller sets the status anew. Time the process spent stopped
    (SIGSTOP) is counted as run."""
    started = record.pop("started", None)
    if record.get("status") != "running" or started is None:
        return
    ended = log_path.stat().st_mtime if log_path.is_file() else started
    record["seconds"] = round(record.get("seconds", 0.0) + max(0.0, ended - started), 1)
    record["interrupted"] = record.get("interrupted", 0) + 1


def extra_overrides(settings: Mapping, kind: str, method: str | None = None) -> list[str]:
    """The user's overrides (``job_overrides``) for every job of ``kind`` (train, search, manual, quantize), then
    for ``method``'s; they come first, so the budget's own settings win."""
    extra = settings.get("extra") or {}
    return [*extra.get(kind, []), *(extra.get(method, []) if method else [])]


@dataclass(frozen=True)
class BudgetTargets:
    """What one budget asks of each method (:mod:`shrinkml.budget_plan`)."""

    label: str              # x3.7
    fraction: float
    params: int             # b P
    svd_speedup: float      # a_t by parameters
    sparsity: float
    combo_speedup: float    # a_t of svd_sparse's scheme
    student_model: Mapping[str, object]  # the student's model config keys (encoder.hidden_size) -> value: the
                                         # widths, and every key an explicit student.model gives
    goal_percent: float | None = None  # relative test WER rise against the dense control its best row may have


@dataclass(frozen=True)
class MethodJob:
    """What every method's training job is built from: one budget (``target``, its directory ``out``), the
    budget's ``settings`` (:func:`budget_jobs`) and ``combo_sparsity(scheme_file)``, svd_sparse's sparsity."""

    target: BudgetTargets
    out: Path
    settings: Mapping
    combo_sparsity: Callable[[Path], float]

    @property
    def baseline(self) -> str:
        return self.settings["baseline"]

    def scheme(self, shared: str) -> Path:
        """The scheme file of a shared job: the search's, or the guided manual one at the job's ``a_t``."""
        if shared in SEARCHES:
            return self.out / shared / "best_scheme.json"
        speedup = self.target.svd_speedup if shared == "manual" else self.target.combo_speedup
        return self.out / shared / "schemes" / f"guided-{speedup}x.json"

    def retrain(self, shared: str) -> list[str]:
        return ["+experiment=retrain", f"init_from={self.baseline}", f"compress.scheme={self.scheme(shared)}"]

    def student(self) -> list[str]:
        widths = [f"model.{key}={value if isinstance(value, str) else json.dumps(value)}"
                  for key, value in self.target.student_model.items()]
        return ["+experiment=baseline", *widths, f"trainer.max_epochs={self.settings['student_epochs']}",
                f"measure_speedup.reference={self.baseline}"]


Overrides = Sequence[str] | Callable[[], Sequence[str]]


@dataclass(frozen=True)
class Method:
    """One compression method of the budget: ``label`` (its row in the table), ``sparse`` (a pruned model: timed
    with the sparse kernels and without them), ``needs`` (the shared job its scheme comes from: ``search``,
    ``manual`` or ``manual_combo``; None), ``student`` (trained from scratch for the students' epochs) and
    ``train(job, method)``: the overrides of its ``train.py`` job (a function of nothing where they wait for a
    shared job's result)."""

    name: str
    label: str
    train: Callable[[MethodJob, Method], Overrides]
    sparse: bool = False
    needs: str | None = None
    student: bool = False


def _pruned(job: MethodJob, method: Method) -> list[str]:
    return ["+experiment=prune", f"init_from={job.baseline}", f"compress.method={method.name}",
            f"compress.sparsity={job.target.sparsity}"]


def _student_kd(job: MethodJob, method: Method) -> list[str]:
    distill = job.settings["distill"]
    return [*job.student(), f"module.distill.teacher={job.baseline}", f"module.distill.weight={distill['weight']}",
            f"module.distill.temperature={distill['temperature']}"]


def _svd_kd(job: MethodJob, method: Method) -> list[str]:
    return ["+experiment=retrain_kd", f"init_from={job.baseline}", f"compress.scheme={job.scheme('search')}",
            f"module.distill.teacher={job.baseline}"]


def _svd_sparse(job: MethodJob, method: Method) -> Callable[[], list[str]]:
    scheme = job.scheme("manual_combo")
    return lambda: [*job.retrain("manual_combo"), "prune=default", f"prune.sparsity={job.combo_sparsity(scheme)}"]


# every method, in the order its jobs run and its rows are listed (docs/budget.md); a new method is one entry
METHODS: dict[str, Method] = {method.name: method for method in (
    Method("svd_automl", "SVD, AutoML", lambda job, m: job.retrain("search"), needs="search"),
    Method("svd_guided", "SVD, guided manual", lambda job, m: job.retrain("manual"), needs="manual"),
    Method("magnitude", "magnitude sparsity", _pruned, sparse=True),
    Method("csp", "CSP sparsity", _pruned, sparse=True),
    Method("student_kd", "student + distillation", _student_kd, student=True),
    Method("student", "student, no teacher", lambda job, m: job.student(), student=True),
    Method("svd_kd", "SVD AutoML + distillation", _svd_kd, needs="search"),
    Method("svd_sparse", "SVD guided + sparsity", _svd_sparse, sparse=True, needs="manual_combo"),
    Method("joint", "joint search (rank, sparsity, both)", lambda job, m: job.retrain("joint_search"), sparse=True,
           needs="joint_search"),
)}
# the shared search jobs: their name -> search.py overrides of their own (beside the budget's search_overrides)
SEARCHES: dict[str, tuple[str, ...]] = {
    "search": (),
    "joint_search": ("search.space.kind=joint",),
}
DENSE_CONTROL_LABEL = "dense control"


def budget_jobs(target: BudgetTargets, methods: Sequence[str], out: Path, settings: Mapping,
                combo_sparsity: Callable[[Path], float]) -> list[Job]:
    """The jobs of one budget (``out``: its directory): the shared jobs the ``methods`` need (the search at the
    budget's ``a_t``, the guided manual schemes), then each method's training, then their 8 bits.
    ``settings``: ``baseline`` (checkpoint), ``group`` (W&B), ``search_overrides``, ``student_epochs``,
    ``distill`` (weight, temperature), ``quantize``, ``extra``; ``combo_sparsity(scheme_file)``: svd_sparse's
    sparsity once its scheme exists."""
    baseline, label = settings["baseline"], target.label
    common = [f"logger.wandb.group={settings['group']}"]
    wanted = [METHODS[name] for name in METHODS if name in set(methods)]
    shared = {method.needs for method in wanted}
    jobs: list[Job] = []
    for name, own in SEARCHES.items():
        if name not in shared:
            continue
        search_dir = out / name
        jobs.append(Job(f"{label}/{name}", "search.py",
                        [*extra_overrides(settings, "search"), *settings["search_overrides"], *own,
                         f"search.target_speedup={target.svd_speedup}", f"ckpt={baseline}",
                         f"output_dir={search_dir}", f"task_name=budget_{label}_{name}", *common],
                        search_dir / "report.json"))
    # one manual job per scheme, so that a guided scheme out of reach at a_t does not stop the combination's
    for name, a_t in (("manual", target.svd_speedup), ("manual_combo", target.combo_speedup)):
        if name in shared:
            jobs.append(Job(f"{label}/{name}", "scripts/manual_baselines.py",
                            [*extra_overrides(settings, "manual"), f"speedups=[{a_t}]", "methods=[guided]",
                             f"ckpt={baseline}", f"output_dir={out / name}", f"task_name=budget_{label}_{name}",
                             *common],
                            out / name / "manual.json"))
    context = MethodJob(target, out, settings, combo_sparsity)
    jobs += [train_job(context, method) for method in wanted]
    if settings.get("quantize"):
        jobs += [quantize_job(job, settings) for job in list(jobs) if job.script == "train.py"]
    return jobs


def train_job(context: MethodJob, method: Method) -> Job:
    """``method``'s ``train.py`` job in ``<budget>/<method>``: the user's overrides, the method's own, then the
    run's name, directory and W&B group; it needs the shared job its scheme comes from."""
    label, run_dir, settings = context.target.label, context.out / method.name, context.settings
    overrides = method.train(context, method)

    def arguments() -> list[str]:
        own = list(overrides() if callable(overrides) else overrides)
        return [*extra_overrides(settings, "train", method.name), *own, f"task_name=budget_{label}_{method.name}",
                f"hydra.run.dir={run_dir}", f"logger.wandb.group={settings['group']}"]

    needs = (f"{label}/{method.needs}",) if method.needs else ()
    return Job(f"{label}/{method.name}", "train.py", arguments, run_dir / SUMMARY, needs, run_dir)


def quantize_job(trained: Job, settings: Mapping) -> Job:
    """8 bits of ``trained``'s best checkpoint (``scripts/quantize.py``) in its ``int8/`` directory."""
    run_dir = trained.run_dir
    name = trained.name.replace("/", "_")

    def arguments() -> list[str]:
        best = read_run(run_dir).checkpoint
        return [*extra_overrides(settings, "quantize"), f"ckpt={best}", f"baseline={settings['baseline']}",
                f"name=budget_{name}", f"output_dir={run_dir / 'int8'}", f"logger.wandb.group={settings['group']}"]

    return Job(f"{trained.name}/int8", "scripts/quantize.py", arguments, run_dir / "int8" / "report.json",
               (trained.name,))


def dense_control_job(run_dir: Path, settings: Mapping) -> list[Job]:
    """The dense control (one for every budget) and its 8 bits."""
    job = Job("dense_control", "train.py",
              [*extra_overrides(settings, "train", "dense_control"), "+experiment=retrain_dense",
               f"init_from={settings['baseline']}", f"hydra.run.dir={run_dir}", "task_name=retrain_dense",
               f"logger.wandb.group={settings['group']}"],
              run_dir / SUMMARY, (), run_dir)
    return [job, quantize_job(job, settings)] if settings.get("quantize") else [job]

