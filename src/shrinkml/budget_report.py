"""The table and figures of ``scripts/budget.py``: one row per method and budget, the dense control first.

Per row: the decoded model's parameters (nonzeros for a sparse model; the CTC head, a training aid, left out)
and whether they fit the budget; bytes as shipped in float32 and in 8 bits (sparse targets in their cheapest
sparse format, :mod:`compress.storage`); the estimated speed-up (baseline parameters / the row's) and the
measured batch-1 one (with the sparse kernels, and without them for sparse rows); dev WER (what the
checkpoint was chosen on) and test WER, and the 8-bit model's test WER and measured speed-up.

Honest selection is checked, not assumed: a row is reported only when its run chose its checkpoint on a dev
split (the training run's ``ModelCheckpoint`` monitor) and, for the AutoML rows, the search chose its scheme
on dev (``selected_on`` of its report); otherwise :class:`shrinkml.results.SelectionError` names the run.

Latency: every model of a budget is timed in one alternating measurement against the baseline
(:func:`asr.latency.measured_speedups`: batch 1, the first ``latency.utterances`` test utterances, one thread,
median of the per-repeat ratios), cached in ``<budget>/latency.json`` by the checkpoints' sizes and times.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from common.atomic import write_json_atomic, write_text_atomic
from shrinkml.budget_jobs import DENSE_CONTROL_LABEL, METHODS
from shrinkml.budget_plan import CTC_HEAD
from shrinkml.results import relative_change

LABELS = {"dense_control": DENSE_CONTROL_LABEL, **{name: method.label for name, method in METHODS.items()}}
SPARSE_METHODS = tuple(name for name, method in METHODS.items() if method.sparse)


def decoded_size(inspected: Mapping) -> dict:
    """``params``, ``nonzeros`` and bytes (``bytes_fp32`` sparse format counted, ``bytes_int8``) of an
    :func:`shrinkml.inspect_ckpt.inspect_checkpoint` result, without the CTC head's weight and bias."""
    totals = dict(inspected["totals"])
    head = [row for row in inspected["targets"] if row["target"].split(".")[-1] == CTC_HEAD]
    for row in head:
        bias = row["shape"][0]  # the head's bias, float32 in every format
        totals["params"] -= row["params"] + bias
        totals["nonzeros"] -= row["nonzeros"] + bias
        totals["bytes_sparse"] -= row["bytes_sparse"] + 4 * bias
        totals["bytes_int8"] -= row["bytes_int8"] + 4 * bias
    return {"params": totals["params"], "nonzeros": totals["nonzeros"], "bytes_fp32": totals["bytes_sparse"],
            "bytes_int8": totals["bytes_int8"]}


def _fmt(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


COLUMNS = (("method", "method"), ("params", "params (nonzero)"), ("fits", "fits"), ("mb_fp32", "MB fp32"),
           ("mb_int8", "MB int8"), ("speedup_est", "est. x"), ("speedup", "measured x"),
           ("speedup_dense_kernels", "measured x, no sparse kernels"), ("wer_dev", "dev WER"),
           ("wer_test", "test WER"), ("vs_control", "test vs control %"), ("wer_test_int8", "int8 test WER"),
           ("speedup_int8", "int8 measured x"), ("hours", "train h"))


def markdown_table(rows: Sequence[Mapping]) -> str:
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = []
        for key, _ in COLUMNS:
            value = row.get(key)
            cells.append(_fmt(value, 1 if key == "vs_control" else 3 if key.startswith("mb") else 2))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _speed(row: Mapping, sparse_kernels: bool) -> float | None:
    """A row's measured speed-up; without the sparse kernels a sparse row's is its dense-kernel one."""
    return row.get("speedup") if sparse_kernels or row["key"] not in SPARSE_METHODS else row.get(
        "speedup_dense_kernels")


def verdict(budget: Mapping) -> list[str]:
    """Lines naming, per budget, the row best on dev and its test WER against the dense control; the goal
    (``budget["goal_percent"]``: the relative test WER rise allowed, or None) met or not by that row; and the
    fastest measured row among those whose *dev* WER is within the goal of the control's, with the sparse
    kernels and without them (sparse rows on dense kernels). Every choice is made on dev; test is only reported."""
    label, goal = budget["label"], budget.get("goal_percent")
    rows = [r for r in budget["rows"] if r["key"] != "dense_control" and r.get("wer_dev") is not None
            and r.get("fits")]
    if not rows:
        return [f"{label}: no finished row fits the budget yet"]
    best = min(rows, key=lambda r: r["wer_dev"])
    lines = [f"{label}: best on dev: {best['method']} (dev {best['wer_dev']:.2f}, test {best['wer_test']:.2f}, "
             f"{_fmt(best.get('vs_control'), 1)}% against the dense control, measured {_fmt(best.get('speedup'))}x)"]
    control = next((r for r in budget["rows"] if r["key"] == "dense_control"), None)
    if goal is None or control is None or best.get("vs_control") is None:
        return lines
    met = "met" if best["vs_control"] <= goal else "not met"
    lines.append(f"{label}: goal, the best method within +{goal:g}% of the dense control's test WER: {met} "
                 f"({best['method']}, {best['vs_control']:+.1f}%)")
    rises = [(relative_change(r["wer_dev"], control.get("wer_dev")), r) for r in rows]
    close = [r for rise, r in rises if rise is not None and rise <= goal]
    for kernels, sparse_kernels in (("with the sparse kernels", True), ("without them", False)):
        speeds = [(_speed(r, sparse_kernels), r) for r in close]
        timed = [(speed, r) for speed, r in speeds if speed is not None]
        if not timed:
            lines.append(f"{label}: no measured row within +{goal:g}% of the control on dev ({kernels})")
            continue
        speed, fastest = max(timed, key=lambda pair: pair[0])
        lines.append(f"{label}: fastest within +{goal:g}% of the control on dev, {kernels}: {fastest['method']} "
                     f"{speed:.2f}x (test {fastest['wer_test']:.2f}, {_fmt(fastest.get('vs_control'), 1)}%)")
    return lines


def write_report(budgets: Sequence[Mapping], out: Path, wall_seconds: float = 0.0) -> dict[str, str]:
    """``budget.json``, ``budget.md`` and the two figures in ``out``; returns their paths. ``wall_seconds``: the
    wall time of every job run so far."""
    write_json_atomic(out / "budget.json", {"budgets": list(budgets), "wall_seconds": wall_seconds})
    parts = ["# Compression at a fixed parameter budget (scripts/budget.py)", "",
             f"Wall time of every job so far: {wall_seconds / 3600:.2f} h.", ""]
    for budget in budgets:
        parts += [f"## {budget['label']}: at most {budget['params']:,} parameters ({budget['fraction']:.4f} of the "
                  f"baseline's {budget['baseline_params']:,}); SVD a_t {budget['svd_speedup']}, sparsity "
                  f"{budget['sparsity']}, student {budget['student_model']}", "", markdown_table(budget["rows"]), ""]
        parts += [f"- {line}" for line in verdict(budget)] + [""]
        if budget.get("not_reported"):
            parts += [f"- not reported: {name}: {why}" for name, why in budget["not_reported"].items()] + [""]
    files = {"json": str(out / "budget.json"), "markdown": str(out / "budget.md")}
    figures = plot_fronts(budgets, out)
    parts += [f"![{Path(path).stem}]({Path(path).name})" for path in figures.values()]
    write_text_atomic(out / "budget.md", "\n".join(parts) + "\n")
    return {**files, **figures}


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">")


def plot_fronts(budgets: Sequence[Mapping], out: Path) -> dict[str, str]:
    """Test WER against parameters and against measured batch-1 latency (RTF), one colour per method and one
    marker per budget, each budget's Pareto front drawn; ``{name: path}`` of the figures written."""
    from compress.figures import pyplot, save_figure

    points = [(b["label"], r) for b in budgets for r in b["rows"] if r.get("wer_test") is not None]
    if not points:
        return {}
    plt = pyplot()
    methods = list(dict.fromkeys(r["method"] for _, r in points))
    labels = list(dict.fromkeys(label for label, _ in points))
    colours = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    written = {}
    for name, key, xlabel, log_x in (("budget_params", "params", "parameters (nonzero, decoded model)", True),
                                     ("budget_latency", "rtf", "batch-1 decoding time per audio second (RTF)", False)):
        fig, ax = plt.subplots(figsize=(8.0, 5.0))
        for label, row in points:
            if row.get(key) is None:
                continue
            marker = MARKERS[labels.index(label) % len(MARKERS)]
            ax.scatter(row[key], row["wer_test"], color=colours[row["method"]], marker=marker, s=60,
                       edgecolors="black", linewidths=0.5, zorder=3)
        for label in labels:
            front = pareto_front([(r[key], r["wer_test"]) for lab, r in points if lab == label and r.get(key)])
            if len(front) > 1:
                ax.plot(*zip(*front, strict=True), color="0.5", linewidth=0.8, linestyle="--", zorder=2)
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], linestyle="", marker="o", color=colours[m], markeredgecolor="black") for m in methods]
        handles += [Line2D([], [], linestyle="", marker=MARKERS[i % len(MARKERS)], color="white",
                           markeredgecolor="black") for i in range(len(labels))]
        ax.legend(handles, methods + labels, fontsize=7, loc="best")
        if log_x:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test WER (%)")
        ax.grid(alpha=0.3)
        ax.set_title("test WER at fixed parameter budgets (dashed: Pareto front per budget)", fontsize=10)
        path = out / f"{name}.png"
        save_figure(fig, path)
        written[name] = str(path)
    return written


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats in both coordinates (lower is better), sorted by the first."""
    front, best = [], math.inf
    for x, y in sorted(points):
        if y < best:
            front.append((x, y))
            best = y
    return front
