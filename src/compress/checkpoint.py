"""Compressed checkpoints carry their scheme, so they load back without knowing it in advance.

A checkpoint written while :class:`compress.callback.LowRankCompression` is active holds, under
:data:`SCHEME_KEY`, the scheme and where it was applied (``attribute``: the sub-module of the
Lightning module that was compressed, ``include``/``exclude``: the target patterns).
:func:`restore_compression` rebuilds that low-rank structure on a freshly built dense module, after
which the checkpoint's ``state_dict`` loads as usual. A pruned model's mask buffers (record
:data:`compress.prune.PRUNE_KEY`, docs/pruning.md) are registered too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

from compress.prune import restore_pruning
from compress.scheme import Scheme, SchemeError, apply_scheme
from compress.targets import discover_targets

SCHEME_KEY = "compression_scheme"


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
    """Give ``root`` (a dense module, as built from the checkpoint's hyper-parameters) the low-rank
    structure recorded in ``checkpoint``; returns the scheme, or None for a dense checkpoint.

    The factors are left at zero: load the checkpoint's ``state_dict`` afterwards.
    """
    record = checkpoint.get(SCHEME_KEY)
    if record is None:
        restore_pruning(root, checkpoint)
        return None
    attribute = record.get("attribute", "")
    if not attribute:
        raise SchemeError("a compressed checkpoint of a whole module (attribute '') cannot be restored in place; "
                          "compress a sub-module (callback attribute=model)")
    scheme = Scheme.from_dict(record["scheme"])
    holder = get_submodule(root, attribute)
    targets = discover_targets(holder, record.get("include", ["*"]), record.get("exclude", []))
    set_submodule(root, attribute, apply_scheme(holder, scheme, targets, cache=None))
    restore_pruning(root, checkpoint)  # a pruned low-rank model: the factors' masks
    return scheme
