"""Compression schemes: per target, the settings of its techniques (or ``full``), with provenance, saved as JSON.

The same format serves the manual baselines, the searches and retraining. Format ``shrinkml-scheme/2`` maps each
target to its settings, one key per technique (:mod:`compress.techniques`)::

    {"format": "shrinkml-scheme/2", "provenance": "automl",
     "targets": {"encoder.layers.0": {"rank": 96}, "encoder.layers.1": {"sparsity": 0.8, "pattern": "4x1"},
                 "decoder.pre_output": {"rank": 96, "sparsity": 0.5}, "decoder.output": "full"},
     "shapes": {"encoder.layers.0": [1024, 512], ...}, "estimates": {...}, "metrics": {...}, "meta": {...}}

Format 1 files (``"ranks": {target: rank or "full"}``) still load. :attr:`Scheme.ranks` is the rank part (every
target named, ``full`` where no rank), :attr:`Scheme.options` the other techniques' settings. A scheme records the
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

import torch
from torch import nn

from common.atomic import write_json_atomic
from compress.cost import FULL, estimate_speedup
from compress.lowrank import LowRankConv, LowRankLinear, kernel_rank
from compress.svd import SvdCache
from compress.targets import Target
from compress.techniques.base import TECHNIQUES, SchemeError, Settings, own_settings, owner
from compress.techniques.lowrank import LOWRANK, check_rank, factorize

if TYPE_CHECKING:
    from compress.latency_cost import LatencyTable

FORMAT = "shrinkml-scheme/2"
FORMAT_V1 = "shrinkml-scheme/1"  # rank-only: {"ranks": {target: rank or "full"}}
__all__ = ["FORMAT", "FORMAT_V1", "Scheme", "SchemeError", "apply_scheme", "count_parameters", "current_ranks",
           "dense_equivalent", "file_fingerprint", "split_settings"]


def file_fingerprint(path: str | Path) -> str:
    """SHA-256 of a file's bytes (a scheme records the checkpoint it was made from, to catch stale results)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def split_settings(settings: Mapping[str, object]) -> tuple[dict[str, int | str], dict[str, dict]]:
    """``{target: rank | "full" | {"rank": .., "sparsity": .., ...}}`` as the rank part (every target, ``full``
    where no rank) and the other techniques' settings (only targets that have some)."""
    ranks: dict[str, int | str] = {}
    options: dict[str, dict] = {}
    for name, value in settings.items():
        if isinstance(value, Mapping):
            ranks[name] = value.get("rank", FULL)
            rest = {k: v for k, v in value.items() if k != "rank"}
            if rest:
                options[name] = rest
        else:
            ranks[name] = value
    return ranks, options


@dataclass
class Scheme:
    """Settings per target (:attr:`ranks`, the rank part, and :attr:`options`, the other techniques'), plus where
    they came from (``automl``, ``uniform``, ``guided``, ...)."""

    ranks: dict[str, int | str]
    provenance: str = "manual"
    shapes: dict[str, list[int]] = field(default_factory=dict)  # target name -> [m, n] it was made for
    estimates: dict[str, float] = field(default_factory=dict)  # e.g. speedup/params, speedup/macs
    metrics: dict[str, float] = field(default_factory=dict)  # e.g. wer/dev measured on it
    meta: dict = field(default_factory=dict)
    options: dict[str, dict] = field(default_factory=dict)  # target -> e.g. {"sparsity": 0.8, "pattern": "4x1"}

    @classmethod
    def build(cls, targets: Sequence[Target], ranks: Mapping[str, object], provenance: str,
              latency_table: LatencyTable | None = None, **meta) -> Scheme:
        """A validated scheme for ``targets`` with its estimated speed-ups filled in: ``speedup/params``,
        ``speedup/macs`` (profiled targets) and ``speedup/latency`` (whenever a measured ``latency_table`` is given
        that holds the scheme's options: every rank, and every other option it was measured at). ``ranks``: target
        -> rank, ``full``, or its settings (``{"rank": 96, "sparsity": 0.5}``)."""
        rank_part, options = split_settings(ranks)
        scheme = cls(rank_part, provenance, {t.name: list(t.shape) for t in targets}, meta=dict(meta),
                     options=options)
        scheme.validate(targets)
        scheme.estimates["speedup/params"] = scheme.estimate(targets, "params")
        if all(t.uses_per_second > 0 for t in targets):
            scheme.estimates["speedup/macs"] = scheme.estimate(targets, "macs")
        if latency_table is not None and latency_table.holds(scheme.settings):
            scheme.estimates["speedup/latency"] = estimate_speedup(targets, scheme.settings, "latency", latency_table)
        return scheme

    @property
    def settings(self) -> dict[str, Settings | str]:
        """``{target: {"rank": .., "sparsity": .., ...} or "full"}``: the format-2 view of the scheme."""
        names = [*self.ranks, *(n for n in self.options if n not in self.ranks)]
        return {name: self.target_settings(name) or FULL for name in names}

    def target_settings(self, name: str) -> dict:
        """One target's settings as a dict (``{}`` for ``full``): its rank, if any, and its other settings."""
        rank = self.ranks.get(name, FULL)
        return {**({} if rank == FULL else {"rank": rank}), **self.options.get(name, {})}

    def techniques(self) -> list[str]:
        """The names of the techniques the scheme uses, in registry (application) order."""
        used = {key for entry in self.settings.values() if entry != FULL for key in entry}
        return [t.name for t in TECHNIQUES.values() if used & set(t.keys)]

    def estimate(self, targets: Sequence[Target], by: str = "params") -> float:
        """Model-level speed-up by ``params`` (every matrix once) or ``macs`` (weighted by uses per second): the
        summed dense cost over the summed cost after the techniques (in registry order). Ranks alone: Eq. 3
        (:func:`compress.cost.estimate_speedup`)."""
        if not self.options:
            return estimate_speedup(targets, self.ranks, by)
        dense = compressed = 0.0
        for target in targets:
            weight = 1.0 if by == "params" else target.uses_per_second
            settings = self.target_settings(target.name)
            params = target.params
            for tech in TECHNIQUES.values():
                if tech.owns(settings):
                    params = tech.params(target, own_settings(tech, settings), params)
            dense += weight * target.params
            compressed += weight * params
        return dense / compressed if compressed else 1.0

    def validate(self, targets: Sequence[Target]) -> None:
        """Raise :class:`SchemeError` for unknown targets, ranks outside ``1..min(m, n)``, settings a technique
        refuses, or another model shape."""
        by_name = {t.name: t for t in targets}
        for name in [*self.ranks, *self.options]:
            if name not in by_name:
                known = ", ".join(sorted(by_name)) or "none"
                raise SchemeError(f"scheme names unknown target '{name}'; this model's targets are: {known}")
        for name, rank in self.ranks.items():
            check_rank(by_name[name], rank)
        for name, settings in self.options.items():
            for key in settings:
                tech = owner(key)
                if tech is LOWRANK:
                    raise SchemeError(f"target '{name}': the rank belongs in the scheme's ranks")
            for tech in TECHNIQUES.values():
                if tech.owns(settings):
                    tech.validate(by_name[name], own_settings(tech, settings))
        for name, shape in self.shapes.items():
            if name in by_name and tuple(shape) != by_name[name].shape:
                raise SchemeError(f"scheme was made for target '{name}' of shape {tuple(shape)} but this model's is "
                                  f"{by_name[name].shape}: it belongs to another model shape")

    # -- JSON --------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": FORMAT, "provenance": self.provenance, "targets": self.settings, "shapes": self.shapes,
                "estimates": self.estimates, "metrics": self.metrics, "meta": self.meta}

    @classmethod
    def from_dict(cls, data: Mapping) -> Scheme:
        """A scheme from its JSON form, format 2 or format 1 (rank-only)."""
        version = data.get("format")
        if version == FORMAT_V1:
            ranks, options = dict(data["ranks"]), {}
        elif version == FORMAT:
            ranks, options = split_settings(data["targets"])
        else:
            raise SchemeError(f"not a compression scheme (format {version!r}, expected {FORMAT!r} or {FORMAT_V1!r})")
        return cls(ranks, data.get("provenance", "manual"), dict(data.get("shapes", {})),
                   dict(data.get("estimates", {})), dict(data.get("metrics", {})), dict(data.get("meta", {})),
                   options)

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
    compressed checkpoint's weights. Targets whose rank does not pay stay dense. The scheme's other
    settings are then applied by their techniques at once, in registry order (a sparsity by magnitude
    on the factors; retraining applies it gradually instead, :mod:`compress.callback`).
    """
    scheme.validate(targets)
    compressed = factorize(model, targets, scheme.ranks, cache)
    if scheme.options:
        for tech in TECHNIQUES.values():
            if tech is LOWRANK:
                continue
            own = {name: own_settings(tech, s) for name, s in scheme.options.items() if tech.owns(s)}
            if own:
                compressed = tech.apply(compressed, targets, own)
    return compressed


@torch.no_grad()
def dense_equivalent(model: nn.Module, compressed: nn.Module, targets: Sequence[Target]) -> nn.Module:
    """A copy of the dense ``model`` whose every target holds ``compressed``'s matrix (``U' V*`` of a factorized one,
    a pruned one with its zeros): the reference that ``compressed``'s forward matches to float rounding, so its
    distance from ``model``'s forward is the technique's own error."""
    reference = copy.deepcopy(model)
    for target in targets:
        target.weight(reference).copy_(target.weight(compressed))
    return reference


def current_ranks(model: nn.Module, targets: Sequence[Target]) -> dict[str, int | str]:
    """The ranks a (possibly compressed) model runs with, read from its modules."""
    ranks: dict[str, int | str] = {}
    for target in targets:
        module = target.module(model)
        if isinstance(module, LowRankLinear | LowRankConv):
            ranks[target.name] = module.rank
        else:
            rank = kernel_rank(module, target.attribute) if target.kind in ("lstm", "weight") else None
            ranks[target.name] = FULL if rank is None else rank
    return ranks


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
