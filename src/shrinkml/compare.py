"""Compare the W&B runs of every stage: one table and the paper's figures (``make compare``).

Runs come from the W&B API when the user is online, or from local offline run directories
otherwise. Offline runs keep their config and summary inside ``run-<id>.wandb`` (wandb >= 0.2x
no longer writes ``files/config.yaml``/``files/wandb-summary.json``), so they are read with the
supported local reader, ``wandb leet inspect --summary --json RUN_DIR`` (FACTS.md).

A run becomes a row when its config names a ``stage`` and its summary describes one model: a WER
and a parameter count or estimated speed-up. Every other run is reported as skipped, with why.
Columns are the shared summary keys of DESIGN.md: stage, name, provenance, estimated speed-ups
(``speedup/params``, ``speedup/macs``), measured speed-up, params, size, WER per split, and the
WER before retraining (``seed/wer/<split>``) where a fine-tuning run measured it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from asr.train import write_text_atomic
from compress.figures import pyplot, save_figure

STAGE_ORDER = ("baseline", "search", "manual", "retrain", "quantize")
FIXED_COLUMNS = ("stage", "name", "provenance", "speedup/params", "speedup/macs", "speedup/measured", "params",
                 "size_mb")


@dataclass
class Comparison:
    rows: list[dict] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (run, reason)
    stage_times: dict[str, dict] = field(default_factory=dict)  # stage -> {seconds, finished} (scripts/timed.py)

    @property
    def columns(self) -> list[str]:
        wer_keys = sorted({k for row in self.rows for k in row if k.startswith(("wer/", "seed/wer/"))},
                          key=lambda k: (k.startswith("seed/"), k))
        return [*FIXED_COLUMNS, *wer_keys]


def find_offline_runs(root: str | Path) -> list[Path]:
    """Every W&B run directory under ``root`` (``offline-run-*`` or ``run-*`` holding a ``.wandb`` log)."""
    found = []
    for path in sorted(Path(root).rglob("*.wandb")):
        run_dir = path.parent
        if run_dir.name.startswith(("offline-run-", "run-")) and not run_dir.is_symlink():
            found.append(run_dir)
    return sorted(set(found))


def wandb_executable() -> str:
    beside = Path(sys.executable).parent / "wandb"
    return str(beside) if beside.is_file() else (shutil.which("wandb") or "wandb")


def read_offline_run(run_dir: Path, timeout: float = 120.0) -> dict:
    """``{name, state, config, summary}`` of an offline run, from ``wandb leet inspect``; raises
    ``ValueError`` with the reason when the log cannot be read."""
    try:
        done = subprocess.run([wandb_executable(), "leet", "inspect", "--summary", "--json", str(run_dir)],
                              capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise ValueError(f"wandb leet inspect failed: {err}") from err
    if done.returncode != 0:
        raise ValueError(f"wandb leet inspect exited {done.returncode}: {done.stderr.strip()[-200:]}")
    try:
        data = json.loads(done.stdout)
    except json.JSONDecodeError as err:
        raise ValueError(f"unreadable inspect output ({err})") from err
    return {"name": data.get("name") or run_dir.name, "state": data.get("state", "unknown"),
            "config": data.get("config") or {}, "summary": data.get("summary") or {}, "source": str(run_dir)}


def read_online_runs(project: str, entity: str | None = None, api=None) -> list[dict]:
    """The runs of ``entity/project`` from the W&B API (``api``: a ``wandb.Api``, made when None)."""
    if api is None:
        import wandb

        api = wandb.Api()
    path = f"{entity}/{project}" if entity else project
    return [{"name": run.name, "state": run.state, "config": dict(run.config),
             "summary": dict(run.summary), "source": f"{path}/{run.id}"} for run in api.runs(path)]


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return None
    return float(value)


def row_of(run: dict) -> dict:
    """The table row of one run; raises ``ValueError`` with the reason to skip it."""
    config, summary = run["config"], run["summary"]
    if run.get("state") == "unknown" and not config and not summary:
        raise ValueError("damaged run log (no config, no summary)")
    stage = config.get("stage") or summary.get("stage")
    if not stage:
        raise ValueError("no 'stage' in its config: not a shrinkml stage run")
    wers = {k: _number(v) for k, v in summary.items() if k.startswith(("wer/", "seed/wer/"))}
    wers = {k: v for k, v in wers.items() if v is not None}
    state = run.get("state")
    unfinished = f" (state {state}: unfinished, still running, or killed)" if state not in (None, "finished") else ""
    if not any(k.startswith("wer/") for k in wers):
        raise ValueError(f"stage {stage}: no final WER in its summary{unfinished or ' (unfinished or crashed run)'}")
    if _number(summary.get("params")) is None and _number(summary.get("speedup/params")) is None:
        raise ValueError(f"stage {stage}: the summary describes no single model (no params or speed-up){unfinished}")
    row = {"stage": stage, "name": run["name"],
           "provenance": summary.get("provenance") or ("dense" if stage == "baseline" else ""),
           "speedup/params": _number(summary.get("speedup/params")) or (1.0 if stage == "baseline" else None),
           "speedup/macs": _number(summary.get("speedup/macs")) or (1.0 if stage == "baseline" else None),
           "speedup/measured": _number(summary.get("speedup/measured")) or (1.0 if stage == "baseline" else None),
           "params": _number(summary.get("params")), "size_mb": _number(summary.get("size_mb")),
           "source": run["source"], "_order": run.get("order", 0.0), "_key": (stage, run["name"], _output_dir(config)),
           **wers}
    return row


def _output_dir(config: dict) -> str:
    """Where a stage run wrote its results: runs in the same directory are one run resumed."""
    paths = config.get("paths") if isinstance(config.get("paths"), dict) else {}
    return str(config.get("output_dir") or paths.get("output_dir") or "")


def compare(runs: Iterable[dict]) -> Comparison:
    """Rows for the readable runs, the newest kept per (stage, name, output directory): an older run of the
    same stage into the same directory (an interrupted run, resumed) is reported as superseded."""
    result = Comparison()
    latest: dict[tuple[str, str], dict] = {}
    for run in runs:
        try:
            row = row_of(run)
        except ValueError as err:
            result.skipped.append((run["source"], str(err)))
            continue
        key = row.pop("_key")
        if key in latest:
            older, newer = sorted([latest[key], row], key=lambda r: r["_order"])
            result.skipped.append((older["source"], f"superseded by the newer run {newer['source']}"))
            row = newer
        latest[key] = row
    order = {stage: i for i, stage in enumerate(STAGE_ORDER)}
    result.rows = sorted(latest.values(), key=lambda r: (order.get(r["stage"], len(order)), r["name"]))
    for row in result.rows:
        row.pop("_order")
    return result


def read_stage_times(path: str | Path) -> dict[str, dict]:
    """The wall time of each pipeline stage recorded by ``scripts/timed.py`` (empty when absent or unreadable)."""
    path = Path(path)
    try:
        times = json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        return {}
    return {k: v for k, v in times.items() if isinstance(v, dict) and isinstance(v.get("seconds"), int | float)}


def offline_runs(root: str | Path, reader: Callable[[Path], dict] = read_offline_run) -> Iterable[dict]:
    """Read every offline run under ``root``; a run that cannot be read comes back as a damaged run."""
    for run_dir in find_offline_runs(root):
        try:
            run = reader(run_dir)
        except ValueError as err:
            run = {"name": run_dir.name, "state": "unknown", "config": {}, "summary": {}, "source": str(run_dir),
                   "error": str(err)}
        run["order"] = max(p.stat().st_mtime for p in run_dir.glob("*.wandb"))  # the log's last write
        yield run


def _format(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.0f}" if value >= 1000 else f"{value:.2f}"
    return str(value)


def markdown(comparison: Comparison) -> str:
    columns = comparison.columns
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_format(row.get(c)) for c in columns) + " |" for row in comparison.rows]
    if comparison.stage_times:
        lines += ["", "| stage | wall time (min) | finished |", "|---|---|---|"]
        lines += [f"| {stage} | {entry['seconds'] / 60:.1f} | {entry.get('finished', '')} |"
                  for stage, entry in comparison.stage_times.items()]
    if comparison.skipped:
        lines += ["", "Skipped runs:", ""] + [f"- `{source}`: {reason}" for source, reason in comparison.skipped]
    return "\n".join(lines) + "\n"


def csv_text(comparison: Comparison) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*comparison.columns, "source"], extrasaction="ignore")
    writer.writeheader()
    for row in comparison.rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buffer.getvalue()


def plot_pareto(comparison: Comparison, split: str, path: Path) -> bool:
    """Estimated speed-up against ``wer/<split>`` for every model; False when no row has both."""
    points = [r for r in comparison.rows if r.get("speedup/params") and r.get(f"wer/{split}") is not None]
    if not points:
        return False
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for row in points:
        marker = "*" if row["stage"] == "baseline" else "o"
        ax.scatter(row["speedup/params"], row[f"wer/{split}"], marker=marker, s=90 if marker == "*" else 40)
        ax.annotate(f"{row['name']}", (row["speedup/params"], row[f"wer/{split}"]), fontsize=7,
                    xytext=(4, 3), textcoords="offset points")
    ax.set_xlabel("estimated speed-up (parameters, Eq. 3)")
    ax.set_ylabel(f"WER % ({split})")
    ax.set_title("Compressed models against the baseline")
    ax.grid(alpha=0.3)
    save_figure(fig, path)
    return True


def plot_retraining(comparison: Comparison, path: Path) -> bool:
    """The paper's Fig. 5 as bars: dev WER before (``seed/wer/<dev>``) and after retraining, per seed."""
    rows = [r for r in comparison.rows if r["stage"] == "retrain" and any(k.startswith("seed/wer/") for k in r)]
    if not rows:
        return False
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.0))
    width = 0.38
    for i, row in enumerate(rows):
        key = next(k for k in sorted(row) if k.startswith("seed/wer/"))
        after = row.get(key.removeprefix("seed/"))
        ax.bar(i - width / 2, row[key], width, color="tab:red", label="before retraining" if i == 0 else None)
        if after is not None:
            ax.bar(i + width / 2, after, width, color="tab:green", label="after retraining" if i == 0 else None)
    baseline = next((r for r in comparison.rows if r["stage"] == "baseline"), None)
    dev_key = next((k.removeprefix("seed/") for k in sorted(rows[0]) if k.startswith("seed/wer/")), None)
    if baseline is not None and dev_key and baseline.get(dev_key) is not None:
        ax.axhline(baseline[dev_key], color="black", linestyle="--", label="baseline")
    labels = [f"{r['name']}\n{r['provenance']} {r['speedup/params'] or 0:.2f}x" for r in rows]
    ax.set_xticks(range(len(rows)), labels, fontsize=8)
    ax.set_ylabel(f"WER % ({dev_key.removeprefix('wer/') if dev_key else 'dev'})")
    ax.set_title("Retraining the compressed seeds (paper Fig. 5)")
    ax.legend(fontsize=8)
    save_figure(fig, path)
    return True


def write_outputs(comparison: Comparison, out: str | Path, split: str) -> dict[str, str]:
    """``comparison.md``, ``comparison.csv`` and the figures in ``out``; returns what was written."""
    out = Path(out)
    written = {"markdown": out / "comparison.md", "csv": out / "comparison.csv"}
    write_text_atomic(written["markdown"], markdown(comparison))
    write_text_atomic(written["csv"], csv_text(comparison))
    if plot_pareto(comparison, split, out / "pareto.png"):
        written["pareto"] = out / "pareto.png"
    if plot_retraining(comparison, out / "retraining.png"):
        written["retraining"] = out / "retraining.png"
    return {k: str(v) for k, v in written.items()}
