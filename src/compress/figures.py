"""Figures of the compression stages (sensitivity, search, condense): one headless pyplot and one
atomic writer, so a killed run never leaves a half-written PNG."""

from __future__ import annotations

from pathlib import Path

from common.atomic import save_atomic


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (imported on first use: it is slow)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int = 120) -> None:
    """Lay out ``fig``, write it to ``path`` atomically (:mod:`common.atomic`; the format follows the
    suffix) and close it."""
    fig.tight_layout()
    try:
        save_atomic(path, lambda tmp: fig.savefig(tmp, dpi=dpi))
    finally:
        pyplot().close(fig)
