"""The table and figure of ``make prune`` (``scripts/prune_report.py``): every pruned run against the dense control.

A row per finished run directory ``runs/prune_*`` (``train.py +experiment=prune``): method and pattern, the
sparsity asked and reached, the decoded model's nonzeros and bytes as shipped (float32 and int8, sparse formats
counted; the CTC head left out), the batch-1 speed-up against the dense baseline measured with the sparse kernels
and without them (all models timed in one alternating run, :mod:`shrinkml.timing`), dev WER (the checkpoint's
selection) and test WER against the dense control given the same training. Runs whose checkpoint was not chosen
on dev are left out and listed. The goals of the pruning experiments are evaluated on the table:

* CSP below magnitude in test WER at every sparsity from 70% (same pattern);
* at 80%: the run best on dev within +5% relative test WER of the dense control, and measured >= 2x.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from omegaconf import DictConfig

from common.atomic import write_json_atomic, write_text_atomic
from shrinkml.budget_report import decoded_size
from shrinkml.results import (
    SUMMARY,
    ResultsError,
    SelectionError,
    UnfinishedRun,
    check_selection,
    read_run,
    relative_change,
)
from shrinkml.timing import DENSE_KERNELS, measure_checkpoints


def _pattern(config: Mapping) -> str:
    """``unstructured`` or ``block RxC``, with ``, sensitivity`` for per-target sparsities from the table."""
    compress = config.get("compress") or {}
    pattern = "unstructured"
    if compress.get("pattern") == "block":
        pattern = "block " + "x".join(str(b) for b in compress.get("block", []))
    return pattern + (", sensitivity" if compress.get("allocation") == "sensitivity" else "")


def collect_runs(run_dirs: Sequence[Path], control_dir: Path, dev_splits: Sequence[str], test_split: str):
    """``(rows, not_reported)``: a row per finished run of ``run_dirs`` (and the dense control first)."""
    from shrinkml.inspect_ckpt import inspect_checkpoint

    rows, not_reported = [], {}
    for run_dir in [control_dir, *run_dirs]:
        try:
            run = read_run(run_dir)
            config = check_selection(run, dev_splits)
            checkpoint = run.checkpoint
        except UnfinishedRun:
            not_reported[run_dir.name] = f"unfinished (no {SUMMARY})"
            continue
        except (ResultsError, SelectionError) as err:
            not_reported[run_dir.name] = str(err)
            continue
        summary = run.summary
        stored = decoded_size(inspect_checkpoint(checkpoint))
        control = run_dir == control_dir
        rows.append({"run": run_dir.name, "checkpoint": checkpoint,
                     "method": "dense control" if control else summary.get("prune/method"),
                     "pattern": "-" if control else _pattern(config),
                     "target": 0.0 if control else float(config["compress"]["sparsity"]),
                     "sparsity": 0.0 if control else summary.get("sparsity"), "params": stored["nonzeros"],
                     "mb_fp32": stored["bytes_fp32"] / 2**20, "mb_int8": stored["bytes_int8"] / 2**20,
                     "wer_dev": summary.get(f"wer/{dev_splits[0]}"), "wer_test": summary.get(f"wer/{test_split}")})
    reference = next((r["wer_test"] for r in rows if r["method"] == "dense control"), None)
    for row in rows:
        row["vs_control"] = relative_change(row["wer_test"], reference)
    return rows, not_reported


def goals(rows: Sequence[Mapping]) -> list[str]:
    """The pruning goals, met or not, with the numbers (or what is missing)."""
    lines = []
    pruned = [r for r in rows if r["method"] != "dense control"]
    pairs = []
    for row in pruned:
        if row["method"] == "csp" and row["target"] >= 0.7 - 1e-9:
            twin = next((r for r in pruned if r["method"] == "magnitude" and r["pattern"] == row["pattern"]
                         and abs(r["target"] - row["target"]) < 1e-9), None)
            if twin is not None:
                pairs.append((row, twin))
    if pairs:
        wins = [p for p in pairs if p[0]["wer_test"] < p[1]["wer_test"]]
        detail = "; ".join(f"{c['target']:.0%} {c['pattern']}: CSP {c['wer_test']:.2f} vs magnitude {m['wer_test']:.2f}"
                           for c, m in sorted(pairs, key=lambda p: (p[0]["pattern"], p[0]["target"])))
        verdict = "met" if len(wins) == len(pairs) else "not met"
        lines.append(f"CSP below magnitude at every sparsity from 70%: {verdict} ({len(wins)} of {len(pairs)} pairs; "
                     f"{detail})")
    else:
        lines.append("CSP below magnitude at every sparsity from 70%: not measured yet (no CSP/magnitude pair)")
    at80 = [r for r in pruned if abs(r["target"] - 0.8) < 1e-9 and r.get("wer_dev") is not None]
    if at80:
        best = min(at80, key=lambda r: r["wer_dev"])
        wer_ok = best["vs_control"] is not None and best["vs_control"] <= 5.0
        fast_ok = best.get("speedup") is not None and best["speedup"] >= 2.0
        lines.append(f"at 80% (best on dev: {best['method']} {best['pattern']}): test WER {best['wer_test']:.2f}, "
                     f"{best['vs_control']:+.1f}% against the dense control: {'met' if wer_ok else 'not met'} "
                     f"(<= +5%); measured batch-1 speed-up {_x(best.get('speedup'))}: "
                     f"{'met' if fast_ok else 'not met'} (>= 2x)")
        fastest = max(at80, key=lambda r: r.get("speedup") or 0.0)
        if fastest is not best and fastest.get("speedup") is not None:
            lines.append(f"at 80%, fastest: {fastest['method']} {fastest['pattern']}, {_x(fastest.get('speedup'))}, "
                         f"test WER {fastest['wer_test']:.2f} ({fastest['vs_control']:+.1f}%)")
    else:
        lines.append("at 80%: not measured yet")
    return lines


def _x(value) -> str:
    return "-" if value is None else f"{value:.2f}x"


COLUMNS = (("method", "method"), ("pattern", "pattern"), ("target", "sparsity asked"), ("sparsity", "reached"),
           ("params", "nonzeros"), ("mb_fp32", "MB fp32"), ("mb_int8", "MB int8"), ("speedup", "measured x"),
           ("speedup_dense_kernels", "x, no sparse kernels"), ("wer_dev", "dev WER"), ("wer_test", "test WER"),
           ("vs_control", "test vs control %"))


def _cell(key: str, value) -> str:
    if value is None:
        return "-"
    if key in ("target", "sparsity"):
        return f"{value:.1%}"
    if key == "params":
        return f"{value:,}"
    if key.startswith("mb"):
        return f"{value:.3f}"
    if key == "vs_control":
        return f"{value:+.1f}"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def markdown(rows: Sequence[Mapping], not_reported: Mapping[str, str]) -> str:
    lines = ["| " + " | ".join(t for _, t in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(k, r.get(k)) for k, _ in COLUMNS) + " |" for r in rows]
    lines += [""] + [f"- {line}" for line in goals(rows)]
    lines += [f"- not reported: {name}: {why}" for name, why in not_reported.items()]
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[Mapping], path: Path) -> bool:
    """Test WER against sparsity, one line per method and pattern, the dense control dotted."""
    from compress.figures import pyplot, save_figure

    pruned = [r for r in rows if r["method"] != "dense control" and r.get("wer_test") is not None]
    if not pruned:
        return False
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 4.5))
    for key in sorted({(r["method"], r["pattern"]) for r in pruned}):
        points = sorted((r["target"], r["wer_test"]) for r in pruned if (r["method"], r["pattern"]) == key)
        ax.plot(*zip(*points, strict=True), marker="o", label=f"{key[0]} ({key[1]})")
    control = next((r for r in rows if r["method"] == "dense control"), None)
    if control is not None:
        ax.axhline(control["wer_test"], color="black", linestyle=":", label="dense control (same training)")
    ax.set_xlabel("sparsity of the targets")
    ax.set_ylabel("test WER (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("pruned while fine-tuned from the baseline (13 epochs)", fontsize=10)
    save_figure(fig, path)
    return True


def run_prune_report(cfg: DictConfig) -> dict:
    """Collect, time and tabulate the pruned runs of ``cfg``; returns ``{"rows", "not_reported", "files"}``."""
    runs_dir = Path(cfg.runs_dir)
    out = Path(cfg.output_dir)
    run_dirs = sorted(p for p in runs_dir.glob(cfg.runs) if p.is_dir() and p.resolve() != out.resolve())
    rows, not_reported = collect_runs(run_dirs, Path(cfg.dense_control), list(cfg.data.dev_splits),
                                      cfg.data.test_splits[0])
    if cfg.latency.measure and rows:
        checkpoints = {r["run"]: r["checkpoint"] for r in rows}
        measured = measure_checkpoints(cfg.baseline, checkpoints, cfg.decoding, cfg.data, cfg.latency,
                                       out / "latency.json",
                                       dense_kernels=[r["run"] for r in rows if r["method"] != "dense control"])
        for row in rows:
            row["speedup"] = measured[row["run"]]["speedup"]
            row["speedup_dense_kernels"] = measured.get(row["run"] + DENSE_KERNELS, {}).get("speedup")
    rows.sort(key=lambda r: (r["method"] != "dense control", r["pattern"], r["method"], r["target"]))
    write_json_atomic(out / "prune.json", {"rows": rows, "not_reported": not_reported, "goals": goals(rows)})
    figure = out / "prune_wer_sparsity.png"
    text = "# Pruning while fine-tuning (make prune)\n\n" + markdown(rows, not_reported)
    if plot(rows, figure):
        text += f"\n![WER against sparsity]({figure.name})\n"
    write_text_atomic(out / "prune.md", text)
    return {"rows": rows, "not_reported": not_reported, "files": [str(out / "prune.md"), str(figure)]}
