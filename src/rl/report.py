"""Search reports: the paper's Fig. 4 (explored points in the speed-up/WER plane over search steps,
with the manual baselines' curves) and Table 1 (AutoML vs manual vs baseline) as Markdown."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from compress.figures import pyplot, save_figure


def plot_explored(points: Sequence[dict], path: str | Path, target_speedup: float, baseline_wer: float,
                  curves: Mapping[str, Sequence[tuple[float, float]]] | None = None, title: str = "") -> None:
    """Fig. 4: each explored scheme at (estimated speed-up, proxy WER), coloured by its search step;
    ``curves`` maps a label (e.g. ``naive``) to ``[(speed-up, WER), ...]``."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if points:
        scatter = ax.scatter([p["speedup"] for p in points], [p["wer"] for p in points],
                             c=[p["step"] for p in points], cmap="viridis", s=14, alpha=0.8, label="explored")
        fig.colorbar(scatter, ax=ax, label="search step")
    for (label, curve), style in zip((curves or {}).items(), ("r--o", "m--s", "k--^"), strict=False):
        if curve:
            ax.plot(*zip(*sorted(curve), strict=True), style, label=f"manual {label}", markersize=4)
    ax.axvline(target_speedup, color="gray", linestyle=":", label=f"target a_t = {target_speedup}")
    ax.axhline(baseline_wer, color="gray", linestyle="-.", linewidth=0.8, label=f"baseline {baseline_wer:.2f}")
    ax.set_xlabel("estimated speed-up")
    ax.set_ylabel("proxy WER (%)")
    ax.set_title(title or "Explored compression schemes")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def markdown_table(rows: Sequence[Mapping], columns: Sequence[str]) -> str:
    """A Markdown table of ``rows`` (missing cells blank, floats with 2 decimals)."""
    def cell(value) -> str:
        if value is None:
            return ""
        return f"{value:.2f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"
