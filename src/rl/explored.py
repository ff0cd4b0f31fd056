"""The explored set ``W`` of Algorithm 1: every evaluated scheme with its proxy WER.

Stored as an append-only JSON-lines file, one point per line, flushed and fsynced as soon as it is
evaluated, so that a search killed at any moment loses nothing and, when run again, never
re-evaluates a scheme it has already scored. A damaged line (e.g. half-written when the machine
died) is reported with its line number and skipped; the other points are kept.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

log = logging.getLogger(__name__)


def scheme_key(ranks: dict) -> str:
    """A canonical key of a scheme (target -> rank)."""
    return json.dumps(ranks, sort_keys=True)


class ExploredSet:
    """Points ``{"ranks", "wer", "speedup", ...}`` keyed by scheme, backed by JSON-lines ``paths[0]``
    (more paths, e.g. other DDP ranks' files, are read too)."""

    def __init__(self, path: str | Path, also_read: Sequence[str | Path] = ()):
        self.path = Path(path)
        self.points: list[dict] = []
        self._by_key: dict[str, dict] = {}
        self.damaged: list[tuple[Path, int]] = []
        for source in [self.path, *map(Path, also_read)]:
            self._read(source)

    def _read(self, path: Path) -> None:
        if not path.is_file():
            return
        with path.open() as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    point = json.loads(line)
                    if not isinstance(point, dict) or "ranks" not in point or "wer" not in point:
                        raise ValueError("missing 'ranks' or 'wer'")
                except ValueError as err:
                    self.damaged.append((path, number))
                    log.warning("explored set %s: line %d is damaged (%s); skipped, the other points are kept",
                                path, number, err)
                    continue
                self._remember(point)

    def _remember(self, point: dict) -> None:
        key = scheme_key(point["ranks"])
        if key not in self._by_key:
            self._by_key[key] = point
            self.points.append(point)

    def __len__(self) -> int:
        return len(self.points)

    def __iter__(self) -> Iterable[dict]:
        return iter(self.points)

    def get(self, ranks: dict) -> dict | None:
        """The stored point of this scheme, or None when it was never evaluated."""
        return self._by_key.get(scheme_key(ranks))

    def add(self, point: dict) -> None:
        """Append ``point`` to the file (flushed and fsynced) and to memory."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(point, sort_keys=True)
        with self.path.open("a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._remember(point)

    def best(self, target_speedup: float, count: int = 5, key: str = "speedup") -> list[dict]:
        """The ``count`` points with the lowest WER among those meeting ``target_speedup``."""
        meeting = [p for p in self.points if p[key] >= target_speedup]
        return sorted(meeting, key=lambda p: (p["wer"], -p[key]))[:count]
