"""The interface every compression technique implements, and the registry that finds one by name or scheme key.

A technique (low-rank factorization, sparse pruning, int8 rounding, ...) owns some keys of a scheme's per-target
settings (:mod:`compress.scheme`: ``{"rank": 96}``, ``{"sparsity": 0.8, "pattern": "4x1"}``) and answers, for
one target (:class:`compress.targets.Target`, an ``m x n`` matrix):

* :meth:`Technique.options`: the settings it offers (a search space's choices);
* :meth:`Technique.validate`: whether a setting is allowed (else :class:`SchemeError` naming target and key);
* :meth:`Technique.params`: the parameters the target stores after it, given those it stored before it (the
  techniques of a scheme apply in registry order: ``rank`` first, then ``sparsity`` prunes the factors);
* :meth:`Technique.apply`: the compressed model, built at once (a copy, or the model changed in place);
* :meth:`Technique.restore`: the structure a checkpoint records (:attr:`Technique.record_key`), rebuilt on a
  freshly built dense model before its ``state_dict`` loads.

Shapes learned from ``torch.ao.pruning`` (per-tensor configs, one ``update_mask`` per method subclass, the
schedule its own class) and AIMET (the choice of ratios apart from the technique that applies them).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence

from torch import nn

from common.errors import KnownError
from compress.targets import Target

Settings = Mapping[str, object]  # one target's settings for the techniques of a scheme, e.g. {"rank": 96}


class SchemeError(KnownError, ValueError):
    """A scheme that does not fit the model or breaks a rule; the message names the target or key."""


class Technique(ABC):
    """One compression technique; subclasses set :attr:`name` and :attr:`keys` and are registered with
    :func:`register`."""

    name: str = ""
    keys: tuple[str, ...] = ()  # the per-target scheme keys this technique owns
    record_key: str | None = None  # the checkpoint entry that records it (None: nothing to restore)

    def owns(self, settings: Settings) -> bool:
        """Whether ``settings`` (one target's) use this technique."""
        return any(key in settings for key in self.keys)

    @abstractmethod
    def options(self, target: Target) -> list[dict]:
        """The settings this technique offers for ``target`` (each a dict of its keys)."""

    @abstractmethod
    def validate(self, target: Target, settings: Settings) -> None:
        """Raise :class:`SchemeError` when ``settings`` (this technique's keys) are not allowed for ``target``."""

    @abstractmethod
    def params(self, target: Target, settings: Settings, params: int) -> int:
        """The parameters ``target`` stores under ``settings``, given ``params`` before this technique applies."""

    @abstractmethod
    def apply(self, model: nn.Module, targets: Sequence[Target], settings: Mapping[str, Settings]) -> nn.Module:
        """The model with ``settings[target.name]`` applied to every target that has them (this technique's
        keys only); may return a copy or ``model`` changed in place."""

    def restore(self, root: nn.Module, checkpoint: Mapping) -> object | None:
        """Rebuild on ``root`` the structure :attr:`record_key` of ``checkpoint`` records; returns what was
        restored, or None (nothing recorded, or nothing structural: the weights alone carry it)."""
        return None


TECHNIQUES: dict[str, Technique] = {}


def register(technique: Technique) -> Technique:
    """Add ``technique`` to the registry (its keys must not clash with a registered one's)."""
    for other in TECHNIQUES.values():
        clash = set(other.keys) & set(technique.keys)
        if clash and other.name != technique.name:
            raise ValueError(f"technique {technique.name!r} claims scheme keys {sorted(clash)} of {other.name!r}")
    TECHNIQUES[technique.name] = technique
    return technique


def unregister(name: str) -> None:
    TECHNIQUES.pop(name, None)


def technique(name: str) -> Technique:
    """The registered technique called ``name``."""
    if name not in TECHNIQUES:
        raise SchemeError(f"unknown compression technique {name!r}; registered: {', '.join(TECHNIQUES) or 'none'}")
    return TECHNIQUES[name]


def owner(key: str) -> Technique:
    """The registered technique that owns scheme key ``key``."""
    for candidate in TECHNIQUES.values():
        if key in candidate.keys:
            return candidate
    known = ", ".join(k for t in TECHNIQUES.values() for k in t.keys)
    raise SchemeError(f"scheme key {key!r} belongs to no compression technique; known keys: {known}")


def own_settings(tech: Technique, settings: Settings) -> dict:
    """The part of one target's ``settings`` that ``tech`` owns."""
    return {k: v for k, v in settings.items() if k in tech.keys}
