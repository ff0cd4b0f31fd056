"""Measured-latency cost model: a lookup table of seconds per audio second per target and rank.

The table (built by measuring a model on one machine, e.g. :mod:`shrinkml.latency_table`; this module only
reads it) holds, for every target, its measured batch-1 time per second of audio when dense and at a grid
of ranks, plus ``fixed``: the measured whole-model time minus the sum of the dense target times (the part
that compression does not touch: attention energies, elementwise work, per-operation overhead). A rank
between grid points is interpolated linearly in rank; ``full``, or a rank that does not pay (the scheme
then keeps the matrix dense), costs the dense time. The estimated speed-up of ranks ``s`` is

    (fixed + sum_t dense_t) / (fixed + sum_t seconds_t(s_t))

A table belongs to one machine, one measurement setting and one checkpoint: its ``key`` (:data:`KEY_FIELDS`)
records the CPU model, the instruction sets the kernels dispatch on (torch's CPU capability and the CPU's
avx/fma/... flags: "AMD EPYC" names both an AVX2 and an AVX-512 generation), torch's version, the kernel
backend, the checkpoint's SHA-256 and the measurement settings (thread count, clock, statistic, repeats, grid,
utterances, ...); :func:`table_path` names its file by a hash of that key, and :meth:`LatencyTable.find` never
returns a table of another key, nor one whose key lacks a field (a table of an older key: stale).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from common.atomic import write_json_atomic
from compress.cost import FULL, CostModelError, pays
from compress.targets import Target

log = logging.getLogger(__name__)

FORMAT = "shrinkml-latency/1"
MACHINE_FIELDS = ("cpu", "cpu_capability", "cpu_flags", "torch", "backend", "checkpoint_sha256")
MEASUREMENT_FIELDS = ("threads", "clock", "statistic", "repeats", "grid", "utterances", "target_utterances",
                      "step_calls", "step_repeats")  # the latency config's settings that change the measured times
KEY_FIELDS = (*MACHINE_FIELDS, *MEASUREMENT_FIELDS)


def key_hash(key: Mapping) -> str:
    """16 hex digits of the SHA-256 of ``key`` (sorted JSON): the table's file name."""
    return hashlib.sha256(json.dumps(dict(key), sort_keys=True).encode()).hexdigest()[:16]


def table_path(directory: str | Path, key: Mapping) -> Path:
    """Where the table of ``key`` lives under ``directory``: ``<directory>/<key_hash>.json``."""
    return Path(directory) / f"{key_hash(key)}.json"


def isotonic(values: Sequence[float]) -> list[float]:
    """The non-decreasing sequence closest to ``values`` in least squares (pool adjacent violators).

    More rank is never less work, so a measured time that falls as the rank grows is noise; smoothing it
    away keeps the estimate falling as ranks shrink, which the search's feasibility mask relies on."""
    blocks: list[list[float]] = []  # [mean, count]
    for value in values:
        blocks.append([float(value), 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            mean, count = blocks.pop()
            blocks[-1] = [(blocks[-1][0] * blocks[-1][1] + mean * count) / (blocks[-1][1] + count),
                          blocks[-1][1] + count]
    return [mean for mean, count in blocks for _ in range(int(count))]


@dataclass
class TargetLatency:
    """One target's measured seconds per audio second: ``dense`` and ``points`` ``[(rank, seconds), ...]``
    (ascending ranks, every one paying). No points: the target is never factorized (no rank pays, or it was
    not measured) and always costs ``dense``."""

    shape: tuple[int, int]
    dense: float
    points: list[tuple[int, float]] = field(default_factory=list)
    info: dict = field(default_factory=dict)  # how it was measured (kind, uses per second, per-call seconds)

    def __post_init__(self):
        self.shape = (int(self.shape[0]), int(self.shape[1]))
        self.points = sorted((int(r), float(s)) for r, s in self.points)
        ranks = [r for r, _ in self.points]
        if len(set(ranks)) != len(ranks) or any(not pays(self.shape, r) or r < 1 for r in ranks):
            raise CostModelError(f"latency table points {ranks} must be distinct ranks that pay for a "
                                 f"{self.shape[0]} x {self.shape[1]} matrix")

    def seconds(self, rank: int | str) -> float:
        """Seconds per audio second at ``rank``: dense for ``full`` or a rank that does not pay, else linear
        interpolation between the nearest grid ranks (clamped to the first and last grid point)."""
        if rank == FULL or not pays(self.shape, int(rank)) or not self.points:
            return self.dense
        rank = int(rank)
        ranks = [r for r, _ in self.points]
        i = bisect.bisect_left(ranks, rank)
        if i < len(ranks) and ranks[i] == rank:
            return self.points[i][1]
        if i == 0:
            return self.points[0][1]
        if i == len(ranks):
            return self.points[-1][1]
        (r0, s0), (r1, s1) = self.points[i - 1], self.points[i]
        return s0 + (s1 - s0) * (rank - r0) / (r1 - r0)


@dataclass
class LatencyTable:
    """Measured seconds per audio second of every target (dense and at ranks) and of the rest (``fixed``)."""

    key: dict
    fixed: float
    targets: dict[str, TargetLatency]
    meta: dict = field(default_factory=dict)

    @property
    def dense_seconds(self) -> float:
        """Estimated seconds per audio second of the dense model: ``fixed`` plus every target's dense time
        (the measured whole-model time, by construction of ``fixed``)."""
        return self.fixed + sum(t.dense for t in self.targets.values())

    def check(self, targets: Sequence[Target], path: str | Path | None = None) -> None:
        """Raise :class:`CostModelError` unless every target of ``targets`` is in the table with its shape."""
        where = f"latency table {path}" if path else "the latency table"
        for target in targets:
            entry = self.targets.get(target.name)
            if entry is None:
                raise CostModelError(f"target '{target.name}' is not in {where} (it has {sorted(self.targets)}); "
                                     "build the table for this model and target list (delete the file to rebuild)")
            if entry.shape != tuple(target.shape):
                raise CostModelError(f"{where} measured '{target.name}' as {entry.shape}, but the model's is "
                                     f"{tuple(target.shape)}: it belongs to another model; delete it to rebuild")

    def latency(self, ranks: Mapping[str, int | str]) -> float:
        """Estimated seconds per audio second of the model at ``ranks`` (missing targets: dense)."""
        unknown = sorted(set(ranks) - set(self.targets))
        if unknown:
            raise CostModelError(f"ranks name targets {unknown} that the latency table does not hold "
                                 f"(it has {sorted(self.targets)}); rebuild the table for this model")
        return self.fixed + sum(t.seconds(ranks.get(name, FULL)) for name, t in self.targets.items())

    def speedup(self, ranks: Mapping[str, int | str]) -> float:
        """``(fixed + sum dense) / (fixed + sum chosen)``."""
        return self.dense_seconds / self.latency(ranks)

    # -- JSON --------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": FORMAT, "key": self.key, "fixed": self.fixed,
                "targets": {name: {"shape": list(t.shape), "dense": t.dense, "points": [list(p) for p in t.points],
                                   "info": t.info} for name, t in self.targets.items()},
                "meta": self.meta}

    @classmethod
    def from_dict(cls, data: Mapping) -> LatencyTable:
        if data.get("format") != FORMAT:
            raise CostModelError(f"not a latency table (format {data.get('format')!r}, expected {FORMAT!r})")
        targets = {name: TargetLatency(tuple(t["shape"]), float(t["dense"]), [tuple(p) for p in t["points"]],
                                       dict(t.get("info", {}))) for name, t in data["targets"].items()}
        return cls(dict(data["key"]), float(data["fixed"]), targets, dict(data.get("meta", {})))

    def save(self, path: str | Path) -> Path:
        """Write the table as JSON atomically (:mod:`common.atomic`)."""
        return write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        path = Path(path)
        if not path.is_file():
            raise CostModelError(f"latency table {path} not found")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise CostModelError(f"latency table {path} cannot be read ({err!r}); delete it to rebuild") from err

    @classmethod
    def find(cls, directory: str | Path, key: Mapping) -> LatencyTable | None:
        """The table of exactly ``key`` under ``directory``, or None: a missing file, one whose recorded key
        differs (another machine, instruction set, torch, backend, checkpoint or measurement setting) or lacks one
        of :data:`KEY_FIELDS` (written before the key held it: stale), is never used."""
        path = table_path(directory, key)
        if not path.is_file():
            return None
        table = cls.load(path)
        missing = [name for name in KEY_FIELDS if name not in table.key]
        if missing:
            log.warning("latency table %s is stale (its key lacks %s); it is not used", path, ", ".join(missing))
            return None
        return table if table.key == dict(key) else None
