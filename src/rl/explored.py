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

Several workers share one explored set (:meth:`ExploredSet.shared`): each appends to its own file and reads
the others' (:meth:`refresh` picks up their new complete lines), and a worker claims a scheme before decoding it
(:meth:`claim`: a claim file created exclusively under ``claims/``, naming its process and host), so that a scheme
another worker has decoded or is decoding is never decoded twice. The claim of a process that died (same host,
no such pid) is taken over.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
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

    def __init__(self, path: str | Path, also_read: Sequence[str | Path] = (), pattern: str | None = None):
        self.path = Path(path)
        self.points: list[dict] = []
        self._by_key: dict[str, dict] = {}
        self.damaged: list[tuple[Path, int]] = []
        self.pattern = pattern  # other workers' files: a glob beside ``path`` read again by refresh()
        self._offsets: dict[Path, int] = {}  # other files: bytes read up to the last complete line
        self._read(self.path, repair=True)
        for source in map(Path, also_read):
            self._read(source, repair=False)
        self.refresh()

    @classmethod
    def shared(cls, directory: str | Path, worker: int) -> ExploredSet:
        """Worker ``worker``'s explored set in ``directory``: its own ``explored-rank<worker>.jsonl``, and every
        other worker's file read (now and on :meth:`refresh`)."""
        directory = Path(directory)
        return cls(directory / f"explored-rank{worker}.jsonl", pattern="explored-rank*.jsonl")

    def refresh(self) -> None:
        """Read the complete lines the other workers' files got since the last read (new files too)."""
        if self.pattern is None:
            return
        for path in sorted(self.path.parent.glob(self.pattern)):
            if path != self.path:
                self._read(path, repair=False, start=self._offsets.get(path))

    def _read(self, path: Path, repair: bool, start: int | None = None) -> None:
        if not path.is_file():
            return
        if start is not None:  # a refresh: only the complete lines after ``start``
            with path.open("rb") as f:
                f.seek(start)
                data = f.read()
            end = data.rfind(b"\n") + 1
            for raw in data[:end].split(b"\n"):
                if raw.strip():
                    try:
                        self._remember(parse_point(raw.decode()))
                    except (ValueError, UnicodeDecodeError) as err:
                        raise ExploredSetError(f"explored set {path}: a line after byte {start} is bad ({err}); "
                                               "fix or delete that line and run again") from err
            self._offsets[path] = start + end
            return
        data = path.read_bytes()
        if not repair:
            self._offsets[path] = data.rfind(b"\n") + 1
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

    # -- several workers: claims ---------------------------------------------------------------------------
    def claim_path(self, ranks: dict) -> Path:
        return self.path.parent / "claims" / f"{hashlib.sha1(scheme_key(ranks).encode()).hexdigest()}.json"

    def claim(self, ranks: dict) -> bool:
        """Claim the scheme ``ranks`` for decoding by this process: True when it is ours now (created, or taken
        over from a process of this host that is gone, or from this process itself: an earlier attempt that
        raised); False while another live process holds it."""
        path = self.claim_path(ranks)
        path.parent.mkdir(parents=True, exist_ok=True)
        mine = json.dumps({"pid": os.getpid(), "host": socket.gethostname()})
        for _ in range(3):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not _abandoned(path):
                    return False
                try:  # one taker wins the rename; the others find the file gone and try again
                    os.rename(path, path.with_suffix(f".taken{os.getpid()}"))
                    os.unlink(path.with_suffix(f".taken{os.getpid()}"))
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                f.write(mine)
            return True
        return False

    def release(self, ranks: dict) -> None:
        """Drop this process's claim of ``ranks`` (after its point is added, or when decoding it failed)."""
        self.claim_path(ranks).unlink(missing_ok=True)

    def best(self, target_speedup: float, count: int = 5, key: str = "speedup") -> list[dict]:
        """The ``count`` points with the lowest WER among those meeting ``target_speedup``."""
        meeting = [p for p in self.points if p[key] >= target_speedup]
        return sorted(meeting, key=lambda p: (p["wer"], -p[key]))[:count]


def _abandoned(claim: Path) -> bool:
    """Whether the claim file's process is gone: this process (an earlier attempt that raised), or a pid of this
    host that no longer runs. A claim of another host is never taken over (it cannot be checked from here)."""
    try:
        owner = json.loads(claim.read_text())
    except FileNotFoundError:
        return True
    except ValueError:  # being written this instant: its owner is alive
        return False
    if owner.get("host") != socket.gethostname():
        return False
    pid = int(owner.get("pid", -1))
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _unparseable(raw: bytes) -> bool:
    """Whether ``raw`` is not JSON at all (what a cut-off write leaves), as opposed to a complete JSON
    value that lacks a field (a format error, never the result of a kill)."""
    try:
        json.loads(raw.decode())
    except (ValueError, UnicodeDecodeError):
        return True
    return False
