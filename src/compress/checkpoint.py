"""Compressed checkpoints carry their scheme, so they load back without knowing it in advance.

A checkpoint written while :class:`compress.callback.Compression` is active holds, under
:data:`SCHEME_KEY`, the scheme and where it was applied (``attribute``: the sub-module of the
Lightning module that was compressed, ``include``/``exclude``: the target patterns).
:func:`restore_compression` rebuilds that low-rank structure on a freshly built dense module, after
which the checkpoint's ``state_dict`` loads as usual. A pruned model's mask buffers (record
:data:`compress.prune.PRUNE_KEY`, docs/pruning.md) are registered too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

from compress.scheme import Scheme, SchemeError
from compress.techniques import TECHNIQUES
from compress.techniques.lowrank import LOWRANK

SCHEME_KEY = LOWRANK.record_key  # "compression_scheme"


def compression_record(scheme: Scheme, attribute: str, include: Sequence[str], exclude: Sequence[str]) -> dict:
    """What a checkpoint stores under :data:`SCHEME_KEY`."""
    return {"scheme": scheme.to_dict(), "attribute": attribute, "include": list(include), "exclude": list(exclude)}


def get_submodule(root: nn.Module, attribute: str) -> nn.Module:
    """``root`` itself for ``""``, else its sub-module at dotted path ``attribute``."""
    if not attribute:
        return root
    try:
        return root.get_submodule(attribute)
    except AttributeError as err:
        raise SchemeError(f"compression attribute '{attribute}' is not a sub-module of {type(root).__name__}; "
                          "set it to the path of the model to compress (e.g. 'model', or '' for the whole module)"
                          ) from err


def set_submodule(root: nn.Module, attribute: str, module: nn.Module) -> None:
    parent_name, _, child = attribute.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)


def restore_compression(root: nn.Module, checkpoint: Mapping) -> Scheme | None:
    """Give ``root`` (a dense module, as built from the checkpoint's hyper-parameters) the structure every
    technique recorded in ``checkpoint`` (:meth:`compress.techniques.base.Technique.restore`, in registry order: the
    low-rank factors, then the pruning masks); returns the scheme, or None for a checkpoint without one.

    The factors are left at zero: load the checkpoint's ``state_dict`` afterwards.
    """
    restored = {tech.name: tech.restore(root, checkpoint) for tech in TECHNIQUES.values()}
    return restored[LOWRANK.name]
