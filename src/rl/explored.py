"""The explored set ``W`` of Algorithm 1: every evaluated scheme with its proxy WER.

Stored as an append-only JSON-lines file, one point per line, flushed and fsynced as soon as it is
evaluated, so that a search killed at any moment loses nothing and, when run again, never
re-evaluates a scheme it has already scored.

Every line is checked when the file is read: a point needs ``ranks``, ``wer``, ``speedup`` and
``step``. A kill can cut off only the last line; that line is reported and skipped, and in the
file this process appends to it is repaired before the next append (a cut-off line is truncated
away; a complete point that only lost its newline gets it back), so that the next point does not
land on the damaged line and get lost with it. Any other bad line stops the search at once with
its file and line number, rather than the report failing after the whole search.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from numbers import Real
from pathlib import Path

log = logging.getLogger(__name__)

REQUIRED = {"ranks": dict, "wer": Real, "speedup": Real, "step": int}
"""The fields every point has, with their types."""


class ExploredSetError(ValueError):
    """An explored-set file with a bad line that is not a cut-off last line."""


def scheme_key(ranks: dict) -> str:
    """A canonical key of a scheme (target -> rank)."""
    return json.dumps(ranks, sort_keys=True)


def parse_point(line: str) -> dict:
    """The point of one line; ``ValueError`` naming what is wrong."""
    point = json.loads(line)
    if not isinstance(point, dict):
        raise ValueError(f"not a JSON object: {line[:80]!r}")
    for field, kind in REQUIRED.items():
        if field not in point:
            raise ValueError(f"missing '{field}'")
        if not isinstance(point[field], kind) or isinstance(point[field], bool):
            raise ValueError(f"'{field}' is {point[field]!r}, expected {kind.__name__}")
    return point


class ExploredSet:
    """Points ``{"ranks", "wer", "speedup", "step", ...}`` keyed by scheme, backed by JSON-lines
    ``path`` (this process's file, repaired on open if a kill cut off its last line); the files
    ``also_read`` (e.g. other DDP ranks', possibly being written right now) are read, never changed."""

    def __init__(self, path: str | Path, also_read: Sequence[str | Path] = ()):
        self.path = Path(path)
        self.points: list[dict] = []
        self._by_key: dict[str, dict] = {}
        self.damaged: list[tuple[Path, int]] = []
        self._read(self.path, repair=True)
        for source in map(Path, also_read):
            self._read(source, repair=False)

    def _read(self, path: Path, repair: bool) -> None:
        if not path.is_file():
            return
        data = path.read_bytes()
        lines = data.split(b"\n")  # the piece after the final newline is b"" (or the cut-off line)
        last = max((i for i, raw in enumerate(lines) if raw.strip()), default=-1)
        offset = 0
        for i, raw in enumerate(lines):
            start, offset = offset, offset + len(raw) + 1
            if not raw.strip():
                continue
            try:
                point = parse_point(raw.decode())
            except (ValueError, UnicodeDecodeError) as err:
                if i != last or not _unparseable(raw):
                    raise ExploredSetError(f"explored set {path}: line {i + 1} is bad ({err}); fix or delete that "
                                           "line (every point needs ranks, wer, speedup and step) and run again"
                                           ) from err
                self.damaged.append((path, i + 1))
                log.warning("explored set %s: the last line, %d, was cut off (%s); skipped, the other points are "
                            "kept%s", path, i + 1, err, "; truncated before the next append" if repair else "")
                if repair:
                    self._truncate(path, start)
                continue
            if i == last and i == len(lines) - 1 and repair:  # a complete point without its newline
                log.warning("explored set %s: the last line, %d, lacked its newline; terminated", path, i + 1)
                with path.open("ab") as f:
                    f.write(b"\n")
                    f.flush()
                    os.fsync(f.fileno())
            self._remember(point)

    @staticmethod
    def _truncate(path: Path, size: int) -> None:
        with path.open("r+b") as f:
            f.truncate(size)
            f.flush()
            os.fsync(f.fileno())

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
        """Check ``point``, append it to the file (flushed and fsynced) and to memory."""
        line = json.dumps(point, sort_keys=True)
        parse_point(line)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._remember(point)

    def best(self, target_speedup: float, count: int = 5, key: str = "speedup") -> list[dict]:
        """The ``count`` points with the lowest WER among those meeting ``target_speedup``."""
        meeting = [p for p in self.points if p[key] >= target_speedup]
        return sorted(meeting, key=lambda p: (p["wer"], -p[key]))[:count]


def _unparseable(raw: bytes) -> bool:
    """Whether ``raw`` is not JSON at all (what a cut-off write leaves), as opposed to a complete JSON
    value that lacks a field (a format error, never the result of a kill)."""
    try:
        json.loads(raw.decode())
    except (ValueError, UnicodeDecodeError):
        return True
    return False
