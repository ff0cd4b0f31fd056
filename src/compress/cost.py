"""Cost model: Eq. 3 per matrix, and the model-level estimated speed-up by parameters, MACs or measured latency.

For an ``m x n`` matrix factorized at rank ``k``: ``speedup = m n / (k (m + n))`` (Eq. 3), which is
also its size reduction. A rank with ``k (m + n) >= m n`` does not pay and the matrix stays dense.
The model-level estimate is the ratio of summed dense cost to summed compressed cost over the
targets, weighted by 1 (parameters, the paper's proxy) or by uses per second of audio
(multiply-accumulates: encoder layers after time reduction run less often, decoder matrices once
per output token). ``by="latency"`` reads a table of measured times instead
(:class:`compress.latency_cost.LatencyTable`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from common.errors import KnownError
from compress.targets import Target

if TYPE_CHECKING:
    from compress.latency_cost import LatencyTable

FULL = "full"
BY = ("params", "macs", "latency")  # the cost models of estimate_speedup


class CostModelError(KnownError, ValueError):
    """A cost model that cannot estimate: an unknown ``by``, a latency estimate without its table, a table of
    another model; the message names the key or file and the fix."""


def check_by(by: str, key: str = "by") -> str:
    """``by`` when it names a cost model of :data:`BY`, else :class:`CostModelError` naming config ``key``."""
    if by not in BY:
        raise CostModelError(f"{key}={by!r} is not a cost model; choose one of {', '.join(BY)}")
    return by


def pays(shape: tuple[int, int], rank: int) -> bool:
    """Whether rank ``k`` costs less than the dense matrix: ``k (m + n) < m n``."""
    m, n = shape
    return rank * (m + n) < m * n


def matrix_speedup(shape: tuple[int, int], rank: int | str) -> float:
    """Eq. 3, ``m n / (k (m + n))``; 1.0 for ``full`` or a rank that does not pay."""
    if rank == FULL or not pays(shape, int(rank)):
        return 1.0
    m, n = shape
    return m * n / (int(rank) * (m + n))


def compressed_params(shape: tuple[int, int], rank: int | str) -> int:
    """Parameters of the matrix as it will be stored (dense when the rank does not pay)."""
    m, n = shape
    if rank == FULL or not pays(shape, int(rank)):
        return m * n
    return int(rank) * (m + n)


def estimate_speedup(targets: Sequence[Target], ranks: Mapping[str, int | str], by: str = "params",
                     table: LatencyTable | None = None) -> float:
    """Model-level estimated speed-up of ``ranks`` (target name -> rank or ``full``; missing = full).

    ``by="params"``: every matrix weighted once (the paper's proxy); ``by="macs"``: weighted by
    ``uses_per_second`` (targets must have been profiled); ``by="latency"``: the measured ``table``
    (required; every target must be in it), ``(fixed + sum dense) / (fixed + sum chosen)``, where ``ranks`` may
    hold any option of :mod:`compress.options` (a sparsity, a rank with pruned factors: looked up in the table,
    :class:`CostModelError` when it was not measured).
    """
    check_by(by)
    if by == "latency":
        if table is None:
            raise CostModelError("by=latency needs a measured latency table (compress.latency_cost.LatencyTable, "
                                 "built by shrinkml.latency_table.ensure_table); pass table=, or use by=params or macs")
        table.check(targets)
        return table.speedup({t.name: ranks.get(t.name, FULL) for t in targets})
    dense = compressed = 0.0
    for target in targets:
        weight = 1.0 if by == "params" else target.uses_per_second
        if by == "macs" and weight <= 0:
            raise ValueError(f"target {target.name} has no uses_per_second; profile the model (profile_uses) first")
        dense += weight * target.params
        compressed += weight * compressed_params(target.shape, ranks.get(target.name, FULL))
    return dense / compressed if compressed else 1.0
