"""Type checks of a composed config against a dataclass schema, right after composition (before any work).

A schema is a dataclass whose fields are annotated with ``int``, ``float``, ``bool``, ``str``, ``list``,
``dict``, ``None``, unions of them, or a nested schema (a config node)::

    @dataclass
    class Trainer:
        max_epochs: int | None

    check_types(cfg.trainer, Trainer, "trainer")   # trainer.max_epochs=abc: ConfigTypeError

Only the keys a schema names are checked, and only where the config has them: the schema is a list of the keys
whose type is known, not the whole config (other keys pass as they are). ``float`` accepts an integer; ``int``
and ``float`` never accept a boolean.
"""

from __future__ import annotations

import dataclasses
import types
import typing

from omegaconf import DictConfig, ListConfig, OmegaConf

from common.errors import KnownError

_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string", list: "a list",
          dict: "a mapping", type(None): "null"}
_VALUE_TYPES = {list: (list, ListConfig), dict: (dict, DictConfig)}


class ConfigTypeError(KnownError, TypeError):
    """A config value of the wrong type: the message names the key, the value and the expected type."""


class ConfigValueError(KnownError, ValueError):
    """A config value of the right type that the stage cannot run with: the message names the key and the fix."""


def _options(annotation) -> tuple:
    """The types of a field's annotation: ``int | None`` -> ``(int, NoneType)``."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return typing.get_args(annotation)
    return (annotation,)


def _fits(value, kind) -> bool:
    if kind is type(None):
        return value is None
    if kind in (int, float) and isinstance(value, bool):
        return False
    if kind is float:
        return isinstance(value, int | float)
    return isinstance(value, _VALUE_TYPES.get(kind, kind))


def check_types(cfg: DictConfig, schema: type, prefix: str = "") -> None:
    """Raise :class:`ConfigTypeError` for the first key of ``schema`` whose value in ``cfg`` (interpolations
    resolved) has another type; ``prefix`` is ``cfg``'s own key in the root config, for the message."""
    hints = typing.get_type_hints(schema)
    for field in dataclasses.fields(schema):
        if field.name not in cfg:
            continue
        key = f"{prefix}.{field.name}" if prefix else field.name
        node = cfg[field.name]
        options = _options(hints[field.name])  # a nested schema (alone or in a union) is checked inside
        nested = [option for option in options if dataclasses.is_dataclass(option)]
        if nested and isinstance(node, DictConfig):
            check_types(node, nested[0], key)
            continue
        options = tuple(dict if dataclasses.is_dataclass(option) else option for option in options)
        if not any(_fits(node, kind) for kind in options):
            expected = " or ".join(_NAMES[kind] for kind in options)
            shown = OmegaConf.to_container(node) if isinstance(node, DictConfig | ListConfig) else node
            raise ConfigTypeError(f"config: {key}={shown!r} is of type {type(shown).__name__}, expected {expected}. "
                                  f"Fix: give {key} {_NAMES[options[0]]}")
