#!/usr/bin/env python
"""Dev WER against training minutes of a run, from its CSV log (printed as Markdown, drawn as PNG).

    python scripts/training_curve.py runs/baseline [--split dev] [--png runs/baseline/curve.png]
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from common.cli import cli_main
from common.errors import KnownError
from compress.figures import pyplot, save_figure


class CurveLogError(KnownError, ValueError):
    """A run's CSV log without the validation rows the curve needs."""


def read_curve(run_dir: Path, split: str) -> list[tuple[int, float, float]]:
    """``(epoch, minutes, WER)`` per validation, from ``run_dir/csv/version_*/metrics.csv`` (all versions, in order)."""
    files = sorted((run_dir / "csv").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    if not files:
        raise FileNotFoundError(f"no CSV log under {run_dir}/csv; train with logger=default or logger=csv")
    points = []
    for path in files:
        with path.open() as f:
            for row in csv.DictReader(f):
                if row.get("train/minutes") and row.get(f"wer/{split}"):
                    points.append((int(float(row["epoch"])), float(row["train/minutes"]), float(row[f"wer/{split}"])))
    if not points:
        raise CurveLogError(f"{run_dir} has no validation rows with train/minutes and wer/{split}")
    return points


@cli_main("training_curve")
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--split", default="dev")
    parser.add_argument("--png", type=Path, default=None, help="figure path (default: RUN_DIR/wer_curve.png)")
    args = parser.parse_args()
    points = read_curve(args.run_dir, args.split)
    print(f"| epoch | minutes | WER {args.split} (greedy) |\n|---|---|---|")
    for epoch, minutes, wer in points:
        print(f"| {epoch} | {minutes:.1f} | {wer:.1f} |")
    fig, ax = pyplot().subplots(figsize=(6, 3.5))
    ax.plot([p[1] for p in points], [min(p[2], 100.0) for p in points], "b-o", markersize=4)
    ax.set_xlabel("training minutes")
    ax.set_ylabel(f"{args.split} WER % (greedy, capped at 100)")
    ax.grid(alpha=0.3)
    png = args.png or args.run_dir / "wer_curve.png"
    save_figure(fig, png)
    print(f"figure: {png}")


if __name__ == "__main__":
    sys.exit(main())
