"""Compression schemes: target name -> rank (or ``full``), with provenance, saved as JSON.

The same format serves the manual baselines, the RL search and retraining. A scheme records the
shape of every target it was made for, so it is refused on a model of another shape.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from common.atomic import write_json_atomic
from common.errors import KnownError
from compress.cost import FULL, estimate_speedup, pays
from compress.lowrank import LowRankLinear, factorize_kernel, kernel_rank
from compress.svd import SvdCache
from compress.targets import Target

if TYPE_CHECKING:
    from compress.latency_cost import LatencyTable

FORMAT = "shrinkml-scheme/1"


def file_fingerprint(path: str | Path) -> str:
    """SHA-256 of a file's bytes (a scheme records the checkpoint it was made from, to catch stale results)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class SchemeError(KnownError, ValueError):
    """A scheme that does not fit the model or breaks a rule; the message names the target or key."""


@dataclass
class Scheme:
    """Ranks per target, plus where they came from (``automl``, ``uniform``, ``guided``, ...)."""

    ranks: dict[str, int | str]
    provenance: str = "manual"
    shapes: dict[str, list[int]] = field(default_factory=dict)  # target name -> [m, n] it was made for
    estimates: dict[str, float] = field(default_factory=dict)  # e.g. speedup/params, speedup/macs
    metrics: dict[str, float] = field(default_factory=dict)  # e.g. wer/dev measured on it
    meta: dict = field(default_factory=dict)

    @classmethod
    def build(cls, targets: Sequence[Target], ranks: Mapping[str, int | str], provenance: str,
              latency_table: LatencyTable | None = None, **meta) -> Scheme:
        """A validated scheme for ``targets`` with its estimated speed-ups filled in: ``speedup/params``,
        ``speedup/macs`` (profiled targets) and ``speedup/latency`` (whenever a measured ``latency_table`` is given)."""
        scheme = cls(dict(ranks), provenance, {t.name: list(t.shape) for t in targets}, meta=dict(meta))
        scheme.validate(targets)
        scheme.estimates["speedup/params"] = estimate_speedup(targets, scheme.ranks, "params")
        if all(t.uses_per_second > 0 for t in targets):
            scheme.estimates["speedup/macs"] = estimate_speedup(targets, scheme.ranks, "macs")
        if latency_table is not None:
            scheme.estimates["speedup/latency"] = estimate_speedup(targets, scheme.ranks, "latency", latency_table)
        return scheme

    def validate(self, targets: Sequence[Target]) -> None:
        """Raise :class:`SchemeError` for unknown targets, ranks outside ``1..min(m, n)`` or another model shape."""
        by_name = {t.name: t for t in targets}
        for name, rank in self.ranks.items():
            if name not in by_name:
                known = ", ".join(sorted(by_name)) or "none"
                raise SchemeError(f"scheme names unknown target '{name}'; this model's targets are: {known}")
            target = by_name[name]
            if rank != FULL and (not isinstance(rank, int) or isinstance(rank, bool)
                                 or not 1 <= rank <= target.max_rank):
                m, n = target.shape
                raise SchemeError(f"rank {rank!r} for target '{name}' is outside the allowed range "
                                  f"1..{target.max_rank} (or '{FULL}') of its {m} x {n} matrix")
        for name, shape in self.shapes.items():
            if name in by_name and tuple(shape) != by_name[name].shape:
                raise SchemeError(f"scheme was made for target '{name}' of shape {tuple(shape)} but this model's is "
                                  f"{by_name[name].shape}: it belongs to another model shape")

    # -- JSON --------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": FORMAT, "provenance": self.provenance, "ranks": self.ranks, "shapes": self.shapes,
                "estimates": self.estimates, "metrics": self.metrics, "meta": self.meta}

    @classmethod
    def from_dict(cls, data: Mapping) -> Scheme:
        if data.get("format") != FORMAT:
            raise SchemeError(f"not a compression scheme (format {data.get('format')!r}, expected {FORMAT!r})")
        return cls(dict(data["ranks"]), data.get("provenance", "manual"), dict(data.get("shapes", {})),
                   dict(data.get("estimates", {})), dict(data.get("metrics", {})), dict(data.get("meta", {})))

    def save(self, path: str | Path) -> None:
        """Write the scheme as JSON atomically (:mod:`common.atomic`)."""
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Scheme:
        path = Path(path)
        if not path.is_file():
            raise SchemeError(f"scheme file {path} not found")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as err:
            raise SchemeError(f"scheme file {path} is not valid JSON: {err}") from err


def apply_scheme(model: nn.Module, scheme: Scheme, targets: Sequence[Target],
                 cache: SvdCache | None = None) -> nn.Module:
    """A compressed copy of ``model``; ``model`` itself is left untouched.

    Each target with a rank that pays gets its SVD factors from ``cache`` (computed once per
    target and sliced); ``cache=None`` builds the structure only (zero factors), e.g. to load a
    compressed checkpoint's weights. Targets whose rank does not pay stay dense.
    """
    scheme.validate(targets)
    compressed = copy.deepcopy(model)
    for target in targets:
        rank = scheme.ranks.get(target.name, FULL)
        if rank == FULL or not pays(target.shape, rank):
            continue
        module = compressed.get_submodule(target.name)
        dense = target.weight(model)
        if cache is None:
            u = dense.new_zeros(target.shape[0], rank)
            v = dense.new_zeros(rank, target.shape[1])
        else:
            u, v = cache.get(target.name, dense).factors(rank, dtype=dense.dtype)
        if target.kind == "linear":
            parent_name, _, child = target.name.rpartition(".")
            parent = compressed.get_submodule(parent_name) if parent_name else compressed
            setattr(parent, child, LowRankLinear(u, v, module.bias.detach() if module.bias is not None else None))
        else:
            factorize_kernel(module, u.contiguous(), v.contiguous())
    return compressed


def current_ranks(model: nn.Module, targets: Sequence[Target]) -> dict[str, int | str]:
    """The ranks a (possibly compressed) model runs with, read from its modules."""
    ranks: dict[str, int | str] = {}
    for target in targets:
        module = model.get_submodule(target.name)
        if isinstance(module, LowRankLinear):
            ranks[target.name] = module.rank
        else:
            rank = kernel_rank(module) if target.kind == "lstm" else None
            ranks[target.name] = FULL if rank is None else rank
    return ranks


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
