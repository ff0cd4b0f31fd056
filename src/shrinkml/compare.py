"""Compare the W&B runs of every stage: one table and the paper's figures (``make compare``).

Runs come from the W&B API when the user is online, or from local offline run directories
otherwise, each as a :class:`shrinkml.results.RunResult` (the record the other reports read from run
directories). Offline runs keep their config and summary inside ``run-<id>.wandb`` (wandb >= 0.2x
no longer writes ``files/config.yaml``/``files/wandb-summary.json``), so they are read with the
supported local reader, ``wandb leet inspect --summary --json RUN_DIR`` (docs/).

A run becomes a row when its config names a ``stage`` and its summary describes one model: a WER
and a parameter count or estimated speed-up. Every other run is reported as skipped, with why.
Columns are the shared summary keys of the design notes (docs/): a readable model label, stage,
name, provenance, the estimated speed-ups (``speedup/params``, ``speedup/macs`` and, where a scheme or
search summary has it, ``speedup/latency``) beside the measured one (``speedup/measured``), params,
size, the bytes the model ships in with its sparse targets stored sparse (``bytes/sparse``) and its nonzero
parameters (``params/nonzero``) where the run counted them (:mod:`compress.storage`; empty otherwise), WER per
split, and the WER before retraining (``seed/wer/<split>``) where a fine-tuning run
measured it. A speed-up a run's summary lacks is shown as ``-`` (empty in the CSV); the references'
are 1 by definition. Where a run measured the spread of its speed-up over repeats
(``speedup/measured_min``, ``speedup/measured_max``, :mod:`asr.latency`), the measured cell shows it
as ``median (lowest-highest)`` and the CSV has both columns.

Stage summaries reach this table through W&B only (online, or the offline run logs): the training
stages (baseline, retrain) log the summary they also write to ``summary.json``, with the estimated
speed-ups of the compression callback (every ``speedup/*`` estimate of the scheme); the search logs
its ``report.json`` summary, and the quantize stage its ``report.json``, each with the scheme's
estimates.

Two rows are references: the baseline, and the dense control (a ``retrain`` run of the dense
baseline for the same budget as the compressed seeds, ``task_name=retrain_dense``; its summary has
no provenance or ``dense``, and no estimated speed-up other than 1). The Markdown output states the
WER of every retrained and quantized model as a relative change against both.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from common.atomic import write_text_atomic
from compress.figures import pyplot, save_figure
from shrinkml.results import RunResult, relative_change

STAGE_ORDER = ("baseline", "search", "manual", "retrain", "quantize")
ESTIMATES = ("speedup/params", "speedup/macs", "speedup/latency")  # estimated speed-ups, shown before the measured
FIXED_COLUMNS = ("model", "stage", "name", "provenance", *ESTIMATES, "speedup/measured", "params", "size_mb",
                 "bytes/sparse", "params/nonzero")  # bytes/params/nonzero: the model stored sparse (compress.storage)
SPREAD_COLUMNS = ("speedup/measured_min", "speedup/measured_max")  # the measured speed-up's spread: CSV columns
# stages whose rows are schemes not retrained, with the search's own WER (greedy): in the main table only
PROXY_STAGES = ("search", "manual")
PROVENANCE_NAMES = {"automl": "AutoML", "dense": "dense"}
# one (colour, marker) per figure row: the references fixed, the others from two cycles of coprime lengths
REFERENCE_STYLES = {"baseline": ("black", "*"), "control": ("dimgray", "s")}
COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive",
           "tab:cyan")
MARKERS = ("o", "^", "D", "v", "P", "X", "<", ">", "h", "p")
LABEL_BOX = {"facecolor": "white", "edgecolor": "none", "pad": 0.5}  # a value stays readable over a line


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

    def reference(self, role: str) -> dict | None:
        """The first row of ``role`` (``baseline`` or ``control``), None when there is none."""
        return next((row for row in self.rows if row["role"] == role), None)


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


def read_offline_run(run_dir: Path, timeout: float = 120.0) -> RunResult:
    """An offline run's name, state, config and summary, from ``wandb leet inspect``; raises ``ValueError`` with
    the reason when the log cannot be read."""
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
    return RunResult(name=data.get("name") or run_dir.name, state=data.get("state", "unknown"),
                     config=data.get("config") or {}, summary=data.get("summary") or {}, source=str(run_dir))


def read_online_runs(project: str, entity: str | None = None, api=None) -> list[RunResult]:
    """The runs of ``entity/project`` from the W&B API (``api``: a ``wandb.Api``, made when None)."""
    if api is None:
        import wandb

        api = wandb.Api()
    path = f"{entity}/{project}" if entity else project
    return [RunResult(name=run.name, state=run.state, config=dict(run.config), summary=dict(run.summary),
                      source=f"{path}/{run.id}") for run in api.runs(path)]


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return None
    return float(value)


def is_dense_control(stage: str, provenance: str, estimated_speedup: float | None) -> bool:
    """A ``retrain`` run of the uncompressed baseline: no provenance (or ``dense``) and no speed-up but 1."""
    return (stage == "retrain" and provenance in ("", "dense")
            and (estimated_speedup is None or abs(estimated_speedup - 1.0) < 1e-6))


def model_label(stage: str, provenance: str, role: str, linear: str | None = None) -> str:
    """What a reader calls the row's model: ``baseline``, ``dense control``, ``AutoML retrained``,
    ``AutoML int8 weight-only`` (the quantize stage's Linear mode when its summary records it)."""
    if role in ("baseline", "control"):
        return "baseline" if role == "baseline" else "dense control"
    source = PROVENANCE_NAMES.get(provenance, provenance)
    if stage == "quantize":
        mode = f" {linear.replace('_', '-')}" if linear else ""
        return f"{source or 'model'} int8{mode}"
    if stage == "retrain":
        return f"{source or 'compressed'} retrained"
    return f"{source} {stage}".strip()


def row_of(run: RunResult) -> dict:
    """The table row of one run; raises ``ValueError`` with the reason to skip it."""
    config, summary = run.config or {}, run.summary
    if run.state == "unknown" and not config and not summary:
        raise ValueError("damaged run log (no config, no summary)")
    stage = config.get("stage") or summary.get("stage")
    if not stage:
        raise ValueError("no 'stage' in its config: not a shrinkml stage run")
    wers = {k: _number(v) for k, v in summary.items() if k.startswith(("wer/", "seed/wer/"))}
    wers = {k: v for k, v in wers.items() if v is not None}
    state = run.state
    unfinished = f" (state {state}: unfinished, still running, or killed)" if state not in (None, "finished") else ""
    if not any(k.startswith("wer/") for k in wers):
        raise ValueError(f"stage {stage}: no final WER in its summary{unfinished or ' (unfinished or crashed run)'}")
    estimate = _number(summary.get("speedup/params"))
    if _number(summary.get("params")) is None and estimate is None:
        raise ValueError(f"stage {stage}: the summary describes no single model (no params or speed-up){unfinished}")
    provenance = summary.get("provenance") or ""
    role = "baseline" if stage == "baseline" else ("control" if is_dense_control(stage, provenance, estimate)
                                                     else "model")
    dense = 1.0 if role != "model" else None  # the references are the dense model: speed-up 1 by definition
    linear = summary.get("linear") if stage == "quantize" and isinstance(summary.get("linear"), str) else None
    row = {"model": model_label(stage, provenance, role, linear), "stage": stage, "name": run.name,
           "provenance": provenance or ("dense" if role != "model" else ""), "role": role,
           "speedup/params": estimate or dense, "speedup/macs": _number(summary.get("speedup/macs")) or dense,
           "speedup/latency": _number(summary.get("speedup/latency")) or dense,
           "speedup/measured": _number(summary.get("speedup/measured")) or dense,
           **{k: _number(summary.get(k)) for k in SPREAD_COLUMNS},
           "params": _number(summary.get("params")), "size_mb": _number(summary.get("size_mb")),
           **{k: _number(summary.get(k)) for k in ("bytes/sparse", "params/nonzero")},
           "source": run.source, "_order": run.order, "_key": (stage, run.name, _output_dir(config)),
           **wers}
    if linear:
        row["linear"] = linear
    return row


def _output_dir(config: dict) -> str:
    """Where a stage run wrote its results: runs in the same directory are one run resumed."""
    paths = config.get("paths") if isinstance(config.get("paths"), dict) else {}
    return str(config.get("output_dir") or paths.get("output_dir") or "")


def compare(runs: Iterable[RunResult]) -> Comparison:
    """Rows for the readable runs, the newest kept per (stage, name, output directory): an older run of the
    same stage into the same directory (an interrupted run, resumed) is reported as superseded. Rows come in
    stage order, the dense control first among the retrained; model labels shared by two rows get the name."""
    result = Comparison()
    latest: dict[tuple[str, str], dict] = {}
    for run in runs:
        try:
            row = row_of(run)
        except ValueError as err:
            result.skipped.append((run.source, str(err)))
            continue
        key = row.pop("_key")
        if key in latest:
            older, newer = sorted([latest[key], row], key=lambda r: r["_order"])
            result.skipped.append((older["source"], f"superseded by the newer run {newer['source']}"))
            row = newer
        latest[key] = row
    order = {stage: i for i, stage in enumerate(STAGE_ORDER)}
    result.rows = sorted(latest.values(),
                         key=lambda r: (order.get(r["stage"], len(order)), r["role"] != "control", r["name"]))
    labels = Counter(row["model"] for row in result.rows)
    for row in result.rows:
        row.pop("_order")
        if labels[row["model"]] > 1:
            row["model"] = f"{row['model']} ({row['name']})"
    return result


def read_stage_times(path: str | Path) -> dict[str, dict]:
    """The wall time of each pipeline stage recorded by ``scripts/timed.py`` (empty when absent or unreadable)."""
    path = Path(path)
    try:
        times = json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        return {}
    return {k: v for k, v in times.items() if isinstance(v, dict) and isinstance(v.get("seconds"), int | float)}


def offline_runs(root: str | Path, reader: Callable[[Path], RunResult] = read_offline_run) -> Iterable[RunResult]:
    """Read every offline run under ``root``; a run that cannot be read comes back as a damaged run."""
    for run_dir in find_offline_runs(root):
        try:
            run = reader(run_dir)
        except ValueError as err:
            run = RunResult(name=run_dir.name, state="unknown", config={}, source=str(run_dir), error=str(err))
        run.order = max(p.stat().st_mtime for p in run_dir.glob("*.wandb"))  # the log's last write
        yield run


def wall_seconds(row: dict, comparison: Comparison) -> float | None:
    """The recorded wall time of the stage that made ``row``: ``scripts/timed.py`` names it after the run
    (``retrain_dense`` -> ``retrain dense``), or after the stage alone when the stage made only this row."""
    candidates = [row["name"].replace("_", " "), row["name"]]
    if sum(r["stage"] == row["stage"] for r in comparison.rows) == 1:
        candidates.append(row["stage"])
    entry = next((comparison.stage_times[c] for c in candidates if c in comparison.stage_times), None)
    return float(entry["seconds"]) if entry else None


def against_references(comparison: Comparison, split: str) -> list[dict]:
    """The final models (every row but the search's and manual schemes: baseline, retrained, quantized) with
    the relative change of ``wer/<split>`` against the dense control and against the baseline (None against
    itself or a missing reference) and wall time."""
    key = f"wer/{split}"
    baseline, control = comparison.reference("baseline"), comparison.reference("control")
    rows = []
    for row in comparison.rows:
        if row["stage"] in PROXY_STAGES:
            continue
        rows.append({"row": row, "wer": row.get(key),
                     "vs_control": None if row is control or control is None
                     else relative_change(row.get(key), control.get(key)),
                     "vs_baseline": None if row is baseline or baseline is None
                     else relative_change(row.get(key), baseline.get(key)),
                     "wall_seconds": wall_seconds(row, comparison)})
    return rows


def _format(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.0f}" if value >= 1000 else f"{value:.2f}"
    return str(value)


def _cell(row: dict, column: str) -> str:
    """A Markdown cell: a speed-up the run lacks is ``-``; the measured one with its spread where measured."""
    value = row.get(column)
    if not column.startswith("speedup/"):
        return _format(value)
    if value is None:
        return "-"
    low, high = (row.get(k) for k in SPREAD_COLUMNS)
    if column == "speedup/measured" and low is not None and high is not None:
        return f"{_format(value)} ({low:.2f}-{high:.2f})"
    return _format(value)


def _rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _signed(value: float | None, reference: bool) -> str:
    return "reference" if reference else ("" if value is None else f"{value:+.1f}")


def references_markdown(comparison: Comparison, split: str) -> list[str]:
    """The "against the dense control" section: one line per final model."""
    baseline, control = comparison.reference("baseline"), comparison.reference("control")
    lines = ["", f"Against the dense control ({split} WER; relative change, negative is better):", ""]
    if control is None:
        lines += ["No dense control run (stage `retrain`, task_name `retrain_dense`, no provenance or `dense`): "
                  "the retrained models are compared with the baseline only.", ""]
    else:
        lines += [f"Dense control: `{control['name']}` (the baseline trained on for the retraining budget)"
                  + (f"; baseline: `{baseline['name']}`." if baseline else "; no baseline run."), ""]
    lines += [f"| model | name | est. speed-up (params) | est. (MACs) | est. (latency) | measured speed-up "
              f"| size MB | {split} WER | Δ {split} WER vs control (%) | Δ {split} WER vs baseline (%) "
              "| wall time (min) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for entry in against_references(comparison, split):
        row, seconds = entry["row"], entry["wall_seconds"]
        cells = [row["model"], row["name"], *(_cell(row, c) for c in (*ESTIMATES, "speedup/measured")),
                 _format(row.get("size_mb")), _format(entry["wer"]), _signed(entry["vs_control"], row is control),
                 _signed(entry["vs_baseline"], row is baseline), "" if seconds is None else f"{seconds / 60:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(comparison: Comparison, split: str, figures: Sequence[str] = ()) -> str:
    """The figures (links, first: they are read before the tables), the table of every row, the final models
    against the dense control and the baseline, the stage wall times and the skipped runs."""
    lines = [f"![{Path(figure).stem}]({Path(figure).name})" for figure in figures]
    if figures:
        lines.append("")
    columns = comparison.columns
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row, c) for c in columns) + " |" for row in comparison.rows]
    if any(row["stage"] not in PROXY_STAGES for row in comparison.rows):
        lines += references_markdown(comparison, split)
    if comparison.stage_times:
        lines += ["", "| stage | wall time (min) | finished |", "|---|---|---|"]
        lines += [f"| {stage} | {entry['seconds'] / 60:.1f} | {entry.get('finished', '')} |"
                  for stage, entry in comparison.stage_times.items()]
    if comparison.skipped:
        lines += ["", "Skipped runs:", ""] + [f"- `{source}`: {reason}" for source, reason in comparison.skipped]
    return "\n".join(lines) + "\n"


def csv_text(comparison: Comparison, split: str) -> str:
    """Every row with its columns, the relative WER changes against the references (``<split>``) and wall time."""
    extra = {entry["row"]["name"] + "\0" + entry["row"]["source"]: entry
             for entry in against_references(comparison, split)}
    buffer = io.StringIO()
    change = (f"wer/{split}_change_vs_control_pct", f"wer/{split}_change_vs_baseline_pct")
    writer = csv.DictWriter(buffer, fieldnames=[*comparison.columns, *SPREAD_COLUMNS, *change, "wall_seconds",
                                                "source"],
                            extrasaction="ignore")
    writer.writeheader()
    for row in comparison.rows:
        entry = extra.get(row["name"] + "\0" + row["source"], {})
        values = {**row, change[0]: _rounded(entry.get("vs_control")), change[1]: _rounded(entry.get("vs_baseline")),
                  "wall_seconds": entry.get("wall_seconds")}
        writer.writerow({k: ("" if v is None else v) for k, v in values.items()})
    return buffer.getvalue()


def row_styles(rows: Sequence[dict]) -> list[tuple[str, str]]:
    """A distinct (colour, marker) per row: the baseline a black star, the dense control a grey square."""
    styles, i = [], 0
    for row in rows:
        if row["role"] in REFERENCE_STYLES:
            styles.append(REFERENCE_STYLES[row["role"]])
        else:
            styles.append((COLOURS[i % len(COLOURS)], MARKERS[i % len(MARKERS)]))
            i += 1
    return styles


def legend_label(row: dict) -> str:
    """The model label over its run name (two lines; the name alone when it is already in the label)."""
    return row["model"] if row["name"] in row["model"] else f"{row['model']}\n{row['name']}"


def pareto_figure(comparison: Comparison, split: str):
    """Two panels sharing the ``wer/<split>`` axis: WER against the estimated speed-up (``speedup/params``)
    and against the measured one (``speedup/measured``; rows without it are left out there and marked in
    the legend), for the final models (the search's schemes, not retrained, are left out and the legend
    says so). One legend entry, colour and marker per row; no text at the points. None when no row has a
    WER and a speed-up."""
    key = f"wer/{split}"
    rows = [r for r in comparison.rows if r.get(key) is not None and r["stage"] not in PROXY_STAGES
            and (r.get("speedup/params") or r.get("speedup/measured"))]
    if not rows:
        return None
    left_out = sorted({r["stage"] for r in comparison.rows if r["stage"] in PROXY_STAGES})
    from matplotlib.lines import Line2D

    plt = pyplot()
    fig = plt.figure(figsize=(13.0, max(4.8, 0.45 * len(rows) + 1.5)))
    grid = fig.add_gridspec(1, 3, width_ratios=(1.0, 1.0, 0.8))
    estimated = fig.add_subplot(grid[0])
    measured = fig.add_subplot(grid[1], sharey=estimated)
    legend_axes = fig.add_subplot(grid[2])
    legend_axes.axis("off")
    baseline = comparison.reference("baseline")
    handles, labels, n_measured = [], [], 0
    for row, (colour, marker) in zip(rows, row_styles(rows), strict=True):
        style = {"color": colour, "marker": marker, "s": 170 if marker == "*" else 65, "edgecolors": "black",
                 "linewidths": 0.6, "alpha": 0.9, "zorder": 3}
        if row.get("speedup/params"):
            estimated.scatter(row["speedup/params"], row[key], **style)
        if row.get("speedup/measured"):
            measured.scatter(row["speedup/measured"], row[key], **style)
            n_measured += 1
        handles.append(Line2D([], [], linestyle="", marker=marker, color=colour, markeredgecolor="black",
                              markeredgewidth=0.6, markersize=13 if marker == "*" else 8))
        labels.append(legend_label(row) + ("" if row.get("speedup/measured") else " (not measured)"))
    for ax in (estimated, measured):
        ax.axvline(1.0, color="0.6", linestyle="--", linewidth=0.8, zorder=1)
        if baseline is not None and baseline.get(key) is not None:
            ax.axhline(baseline[key], color="black", linestyle=":", linewidth=0.8, zorder=1)
        ax.grid(alpha=0.3)
        ax.margins(x=0.12, y=0.12)
    estimated.set_xlabel("estimated speed-up (×)\nparameters: dense / compressed (Eq. 3)")
    estimated.set_ylabel(f"WER on {split} (%)")
    estimated.set_title("against the estimated speed-up", fontsize=10)
    measured.set_xlabel("measured speed-up (×)\nbatch-1 decoding time: baseline / model")
    measured.tick_params(labelleft=False)
    measured.set_title(f"against the measured speed-up ({n_measured} of {len(rows)} models measured)",
                       fontsize=10)
    legend_axes.legend(handles, labels, loc="center left", fontsize=8, frameon=False, labelspacing=0.9,
                       title="models (dotted: baseline WER;\ndashed: 1×, the dense model)"
                       + (f"\n{' and '.join(left_out)} rows (not retrained): in the table" if left_out else ""),
                       title_fontsize=8)
    fig.suptitle(f"{split} WER against speed-up (lower right is better)", fontsize=11)
    return fig


def plot_pareto(comparison: Comparison, split: str, path: Path) -> bool:
    """``pareto_figure`` written to ``path``; False when no row has a WER and a speed-up."""
    fig = pareto_figure(comparison, split)
    if fig is None:
        return False
    save_figure(fig, path)
    return True


def retraining_figure(comparison: Comparison):
    """The paper's Fig. 5 as bars: dev WER before (``seed/wer/<dev>``) and after retraining, per retrained
    model (the dense control's "before" is the baseline), values over the bars. None without such rows."""
    rows = [r for r in comparison.rows if r["stage"] == "retrain" and any(k.startswith("seed/wer/") for k in r)]
    if not rows:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(6.5, 2.0 * len(rows) + 2.5), 4.6))
    width = 0.38
    for i, row in enumerate(rows):
        key = next(k for k in sorted(row) if k.startswith("seed/wer/"))
        after = row.get(key.removeprefix("seed/"))
        bars = ax.bar(i - width / 2, row[key], width, color="tab:red", label="before retraining" if i == 0 else None)
        ax.bar_label(bars, fmt="%.1f", fontsize=8, padding=2, bbox=LABEL_BOX)
        if after is not None:
            bars = ax.bar(i + width / 2, after, width, color="tab:green", label="after retraining" if i == 0 else None)
            ax.bar_label(bars, fmt="%.1f", fontsize=8, padding=2, bbox=LABEL_BOX)
    baseline = comparison.reference("baseline")
    dev_key = next((k.removeprefix("seed/") for k in sorted(rows[0]) if k.startswith("seed/wer/")), None)
    if baseline is not None and dev_key and baseline.get(dev_key) is not None:
        ax.axhline(baseline[dev_key], color="black", linestyle="--", label="baseline")
    labels = [f"{r['model']}\n{r['name']}\n{r['speedup/params'] or 0:.2f}× estimated" for r in rows]
    ax.set_xticks(range(len(rows)), labels, fontsize=8)
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.margins(y=0.12)
    ax.set_ylabel(f"WER on {dev_key.removeprefix('wer/') if dev_key else 'dev'} (%)")
    ax.set_title("Retraining the compressed seeds and the dense control (paper Fig. 5)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


def plot_retraining(comparison: Comparison, path: Path) -> bool:
    """``retraining_figure`` written to ``path``; False when no retrain row measured its seed."""
    fig = retraining_figure(comparison)
    if fig is None:
        return False
    save_figure(fig, path)
    return True


def write_outputs(comparison: Comparison, out: str | Path, split: str) -> dict[str, str]:
    """The figures, then ``comparison.md`` (linking them first) and ``comparison.csv`` in ``out``; returns
    what was written."""
    out = Path(out)
    written = {}
    if plot_pareto(comparison, split, out / "pareto.png"):
        written["pareto"] = out / "pareto.png"
    if plot_retraining(comparison, out / "retraining.png"):
        written["retraining"] = out / "retraining.png"
    figures = [str(path) for path in written.values()]
    written["markdown"], written["csv"] = out / "comparison.md", out / "comparison.csv"
    write_text_atomic(written["markdown"], markdown(comparison, split, figures))
    write_text_atomic(written["csv"], csv_text(comparison, split))
    return {k: str(v) for k, v in written.items()}
