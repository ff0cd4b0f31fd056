"""Measured-latency cost model: a lookup table of seconds per audio second per target and option.

The table (built by measuring a model on one machine, e.g. :mod:`shrinkml.latency_table`; this module only
reads it) holds, for every target, its measured batch-1 time per second of audio when dense and at a grid
of ranks, plus ``fixed``: the measured whole-model time minus the sum of the dense target times (the part
that compression does not touch: attention energies, elementwise work, per-operation overhead). A rank
between grid points is interpolated linearly in rank; ``full``, or a rank that does not pay (the scheme
then keeps the matrix dense), costs the dense time. Every other option (:mod:`compress.options`: a sparsity,
a rank with pruned factors) is looked up exactly in the target's ``options``, keyed by
:func:`compress.options.option_key` (``s0.8``, ``s0.8@4x1``, ``r96+s0.5@4x1``); one the table was not measured
at is a :class:`CostModelError` naming the target and the option, never a dense time. The estimated speed-up
of settings ``s`` (target -> option in any form of :mod:`compress.options`) is

    (fixed + sum_t dense_t) / (fixed + sum_t seconds_t(s_t))

where, for the targets of the decoder step (``step_targets``), ``seconds_t(s_t)`` is ``dense_t - step_scale *
(dense_t - measured_t(s_t))``: their savings, measured one target at a time in a tight loop of steps, scaled by
what whole greedy decodes of models with all of them compressed together measured (``step_scale``, fitted when
the table is built; 1 when not measured).

A table belongs to one machine, one measurement setting and one checkpoint: its ``key`` (:data:`KEY_FIELDS`)
records the CPU model, the instruction sets the kernels dispatch on (torch's CPU capability and the CPU's
avx/fma/... flags: "AMD EPYC" names both an AVX2 and an AVX-512 generation), torch's version, the kernel
backend, the checkpoint's SHA-256 and the measurement settings (thread count, clock, statistic, repeats, grid,
utterances, ...) and the share of zeros from which decoding runs a pruned matrix on the sparse kernels
(``decoding.sparse_min_sparsity``: another threshold is another decoding path); :func:`table_path` names its file
by a hash of that key, and :meth:`LatencyTable.find` never returns a table of another key, nor one whose key
lacks a field (a table of an older key: stale), nor one of an older :data:`FORMAT` (ranks only: measured again).
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
from compress.options import Option, normalize, option_key
from compress.targets import Target

log = logging.getLogger(__name__)

FORMAT = "shrinkml-latency/2"  # 2: per target also ``options`` (sparse and rank+sparse options); 1: ranks only
FORMAT_PREFIX = "shrinkml-latency/"
MACHINE_FIELDS = ("cpu", "cpu_capability", "cpu_flags", "torch", "backend", "kernels", "checkpoint_sha256",
                  "method")  # method: the version of the measuring code (a changed method measures again)
MEASUREMENT_FIELDS = ("threads", "clock", "statistic", "repeats", "grid", "utterances", "target_utterances",
                      "step_calls", "step_repeats")  # the latency config's settings that change the measured times
DECODING_FIELDS = ("sparse_min_sparsity",)  # the decoding settings that choose the kernels a pruned matrix runs on
KEY_FIELDS = (*MACHINE_FIELDS, *MEASUREMENT_FIELDS, *DECODING_FIELDS)


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
    """One target's measured seconds per audio second: ``dense``, ``points`` ``[(rank, seconds), ...]``
    (ascending ranks, every one paying) and ``options`` ``{option_key: seconds}`` (the options that are not a
    rank alone: sparsities, ranks with pruned factors). No points: a rank alone costs ``dense`` (no rank pays,
    or none was measured)."""

    shape: tuple[int, int]
    dense: float
    points: list[tuple[int, float]] = field(default_factory=list)
    info: dict = field(default_factory=dict)  # how it was measured (kind, uses per second, per-call seconds)
    options: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        self.shape = (int(self.shape[0]), int(self.shape[1]))
        self.points = sorted((int(r), float(s)) for r, s in self.points)
        self.options = {str(k): float(v) for k, v in sorted(self.options.items())}
        ranks = [r for r, _ in self.points]
        if len(set(ranks)) != len(ranks) or any(not pays(self.shape, r) or r < 1 for r in ranks):
            raise CostModelError(f"latency table points {ranks} must be distinct ranks that pay for a "
                                 f"{self.shape[0]} x {self.shape[1]} matrix")

    def holds(self, option: Option) -> bool:
        """Whether :meth:`seconds` has a time for ``option`` (``full`` and ranks always: interpolated)."""
        setting = normalize(option)
        return setting == FULL or set(setting) == {"rank"} or option_key(setting) in self.options

    def seconds(self, option: Option, name: str = "this target") -> float:
        """Seconds per audio second at ``option`` (any form of :mod:`compress.options`). ``full``, or a rank alone
        that does not pay: dense; a rank alone: linear interpolation between the nearest grid ranks (clamped to
        the first and last grid point); any other option: its measured time, :class:`CostModelError` (naming
        ``name`` and the option) when it was not measured."""
        setting = normalize(option)
        if setting != FULL and set(setting) != {"rank"}:
            key = option_key(setting)
            if key not in self.options:
                raise CostModelError(f"the latency table has no time for target '{name}' at option {key} (it holds "
                                     f"{', '.join(self.options) or 'ranks only'}); build the table with this option "
                                     "(extra_options, as the search passes its space's options)")
            return self.options[key]
        rank = FULL if setting == FULL else setting["rank"]
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
    step_scale: float = 1.0  # measured savings of the decoder step's targets together / the sum of their own
    step_targets: list[str] = field(default_factory=list)  # the targets ``step_scale`` applies to

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

    def holds(self, settings: Mapping[str, Option]) -> bool:
        """Whether every option of ``settings`` was measured (ranks: always; a target the table lacks is left to
        :meth:`check` and :meth:`latency`, which raise)."""
        return all(name not in self.targets or self.targets[name].holds(option) for name, option in settings.items())

    def latency(self, settings: Mapping[str, Option]) -> float:
        """Estimated seconds per audio second of the model at ``settings`` (target -> option in any form of
        :mod:`compress.options`; missing targets: dense)."""
        unknown = sorted(set(settings) - set(self.targets))
        if unknown:
            raise CostModelError(f"ranks name targets {unknown} that the latency table does not hold "
                                 f"(it has {sorted(self.targets)}); rebuild the table for this model")
        return self.fixed + sum(self.seconds(name, settings.get(name, FULL)) for name in self.targets)

    def seconds(self, name: str, option: Option) -> float:
        """Target ``name``'s estimated seconds per audio second at ``option``: its measured time, or for a target of
        the decoder step its dense time less ``step_scale`` times its measured saving."""
        entry = self.targets[name]
        seconds = entry.seconds(option, name)
        if name in self.step_targets:
            return entry.dense - self.step_scale * (entry.dense - seconds)
        return seconds

    def speedup(self, settings: Mapping[str, Option]) -> float:
        """``(fixed + sum dense) / (fixed + sum chosen)``."""
        return self.dense_seconds / self.latency(settings)

    # -- JSON --------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": FORMAT, "key": self.key, "fixed": self.fixed,
                "targets": {name: {"shape": list(t.shape), "dense": t.dense, "points": [list(p) for p in t.points],
                                   "options": t.options, "info": t.info} for name, t in self.targets.items()},
                "meta": self.meta, "step_scale": self.step_scale, "step_targets": list(self.step_targets)}

    @classmethod
    def from_dict(cls, data: Mapping) -> LatencyTable:
        version = data.get("format")
        if isinstance(version, str) and version.startswith(FORMAT_PREFIX) and version != FORMAT:
            raise CostModelError(f"latency table of format {version!r}, not {FORMAT!r} (older: ranks only); measure it "
                                 "again (latency.rebuild=true, or delete it)")
        if version != FORMAT:
            raise CostModelError(f"not a latency table (format {data.get('format')!r}, expected {FORMAT!r})")
        targets = {name: TargetLatency(tuple(t["shape"]), float(t["dense"]), [tuple(p) for p in t["points"]],
                                       dict(t.get("info", {})), dict(t["options"]))
                   for name, t in data["targets"].items()}
        return cls(dict(data["key"]), float(data["fixed"]), targets, dict(data.get("meta", {})),
                   float(data.get("step_scale", 1.0)), list(data.get("step_targets", [])))

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
        of :data:`KEY_FIELDS` (written before the key held it: stale), or is of an older :data:`FORMAT`, is never
        used (the last two say so in one line)."""
        path = table_path(directory, key)
        if not path.is_file():
            return None
        try:
            version = json.loads(path.read_text()).get("format")
        except (json.JSONDecodeError, AttributeError):
            version = None
        if isinstance(version, str) and version.startswith(FORMAT_PREFIX) and version != FORMAT:
            log.warning("latency table %s is of format %s, not %s (it lacks the sparse options); it is not used and "
                        "is measured again", path, version, FORMAT)
            return None
        table = cls.load(path)
        missing = [name for name in KEY_FIELDS if name not in table.key]
        if missing:
            log.warning("latency table %s is stale (its key lacks %s); it is not used", path, ", ".join(missing))
            return None
        return table if table.key == dict(key) else None
