"""Low-rank factorization (the paper's technique): scheme key ``rank``, an SVD rank per target (Eq. 1-2).

A target of rank ``k`` becomes ``U' V*`` (:mod:`compress.lowrank`): a :class:`compress.lowrank.LowRankLinear` (a
:class:`compress.lowrank.LowRankConv` for a convolution), or
an LSTM kernel (or a ``weight`` target: ``nn.LSTM``'s, ``nn.MultiheadAttention``'s) parametrized as the product.
Its cost is Eq. 3's ``k (m + n)`` parameters, or the dense ``m n`` when the rank does not pay
(:func:`compress.cost.pays`; the target then stays dense). Checkpoints record the scheme under
:data:`compress.checkpoint.SCHEME_KEY`; :meth:`LowRank.restore` rebuilds the factors' structure.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

from torch import nn

from compress.cost import FULL, compressed_params, pays
from compress.lowrank import LowRankConv, LowRankLinear, factorize_weight
from compress.svd import SvdCache
from compress.targets import Target
from compress.techniques.base import SchemeError, Settings, Technique, register


def check_rank(target: Target, rank: object) -> None:
    """Raise :class:`SchemeError` unless ``rank`` is ``full`` or an integer in ``1..min(m, n)``."""
    if rank != FULL and (not isinstance(rank, int) or isinstance(rank, bool) or not 1 <= rank <= target.max_rank):
        m, n = target.shape
        raise SchemeError(f"rank {rank!r} for target '{target.name}' is outside the allowed range "
                          f"1..{target.max_rank} (or '{FULL}') of its {m} x {n} matrix")


def factorize(model: nn.Module, targets: Sequence[Target], ranks: Mapping[str, int | str],
              cache: SvdCache | None = None) -> nn.Module:
    """A copy of ``model`` with every target whose rank pays factorized; ``model`` itself is left untouched.

    The SVD factors ``U'`` (``m x k``) and ``V*`` (``k x n``) come from ``cache`` (computed once per target and
    sliced); ``cache=None`` builds the structure only (zero factors), e.g. to load a compressed checkpoint."""
    compressed = copy.deepcopy(model)
    for target in targets:
        rank = ranks.get(target.name, FULL)
        if rank == FULL or not pays(target.shape, rank):
            continue
        module = target.module(compressed)
        dense = target.weight(model)
        if cache is None:
            u = dense.new_zeros(target.shape[0], rank)
            v = dense.new_zeros(rank, target.shape[1])
        else:
            u, v = cache.get(target.name, dense).factors(rank, dtype=dense.dtype)
        if target.kind in ("linear", "conv"):
            parent_name, _, child = target.name.rpartition(".")
            parent = compressed.get_submodule(parent_name) if parent_name else compressed
            bias = module.bias.detach() if module.bias is not None else None
            setattr(parent, child, LowRankLinear(u, v, bias) if target.kind == "linear" else LowRankConv(u, v, module))
        else:  # an LSTM kernel or a weight its module reads directly: parametrized in place as U' V*
            factorize_weight(module, target.attribute, u.contiguous(), v.contiguous())
    return compressed


class LowRank(Technique):
    """SVD ranks per target (``{"rank": k}``)."""

    name = "lowrank"
    keys = ("rank",)
    record_key = "compression_scheme"  # compress.checkpoint.SCHEME_KEY

    def options(self, target: Target) -> list[dict]:
        """Every rank ``1..min(m, n)`` (the ones that do not pay leave the target dense)."""
        return [{"rank": k} for k in range(1, target.max_rank + 1)]

    def validate(self, target: Target, settings: Settings) -> None:
        check_rank(target, settings.get("rank", FULL))

    def params(self, target: Target, settings: Settings, params: int) -> int:
        """Eq. 3: ``k (m + n)`` when the rank pays, else ``params`` (the dense ``m n``)."""
        rank = settings.get("rank", FULL)
        return params if rank == FULL or not pays(target.shape, int(rank)) else compressed_params(target.shape, rank)

    def apply(self, model: nn.Module, targets: Sequence[Target], settings: Mapping[str, Settings],
              cache: SvdCache | None = None) -> nn.Module:
        return factorize(model, targets, {name: s["rank"] for name, s in settings.items() if "rank" in s}, cache)

    def restore(self, root: nn.Module, checkpoint: Mapping) -> object | None:
        """The low-rank structure (zero factors) of the scheme recorded under :attr:`record_key`; returns it."""
        from compress.checkpoint import get_submodule, set_submodule  # the record's helpers (checkpoint uses us)
        from compress.scheme import Scheme
        from compress.targets import discover_targets

        record = checkpoint.get(self.record_key)
        if record is None:
            return None
        attribute = record.get("attribute", "")
        if not attribute:
            raise SchemeError("a compressed checkpoint of a whole module (attribute '') cannot be restored in place; "
                              "compress a sub-module (callback attribute=model)")
        scheme = Scheme.from_dict(record["scheme"])
        holder = get_submodule(root, attribute)
        targets = discover_targets(holder, record.get("include", ["*"]), record.get("exclude", []))
        scheme.validate(targets)
        set_submodule(root, attribute, factorize(holder, targets, scheme.ranks, cache=None))
        return scheme


LOWRANK = register(LowRank())
