"""Compressible matrices ("targets") of any ``nn.Module``.

Two kinds, found by structure, never by class name of a particular model:

* ``linear``: every ``nn.Linear``; its matrix is ``weight`` (``out x in``);
* ``lstm``: every module holding one concatenated LSTM kernel ``[W_ih | W_hh]`` of shape
  ``4H x (in + H)`` as a parameter named ``kernel`` next to integer ``input_size`` and
  ``hidden_size`` attributes (the TensorFlow/RETURNN layout the paper counts, docs/architecture.md "Target").

Each target also knows how often it is applied per second of audio (matrix-vector products),
measured by :func:`profile_uses`, for the multiply-accumulate cost model.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn


@dataclass(frozen=True)
class Target:
    """One compressible ``m x n`` matrix: ``name`` is the path of the module that holds it."""

    name: str
    kind: str  # "linear" or "lstm"
    shape: tuple[int, int]
    uses_per_second: float = 0.0

    @property
    def max_rank(self) -> int:
        return min(self.shape)

    @property
    def params(self) -> int:
        return self.shape[0] * self.shape[1]

    def weight(self, model: nn.Module) -> torch.Tensor:
        """The dense matrix of this target in ``model``, ``(m, n)``."""
        module = model.get_submodule(self.name)
        return module.weight if self.kind == "linear" else module.kernel


def is_lstm_kernel_module(module: nn.Module) -> bool:
    kernel = getattr(module, "kernel", None)
    sizes = getattr(module, "input_size", None), getattr(module, "hidden_size", None)
    return (isinstance(kernel, torch.Tensor) and kernel.dim() == 2 and all(isinstance(s, int) for s in sizes)
            and tuple(kernel.shape) == (4 * module.hidden_size, module.input_size + module.hidden_size))


def discover_targets(model: nn.Module, include: Sequence[str] = ("*",), exclude: Sequence[str] = ()) -> list[Target]:
    """Every compressible matrix of ``model`` whose name matches an ``include`` pattern and no
    ``exclude`` pattern (shell-style, e.g. ``encoder.*``), in module order."""
    targets = []
    for name, module in model.named_modules():
        if not name or not any(fnmatch.fnmatchcase(name, p) for p in include):
            continue
        if any(fnmatch.fnmatchcase(name, p) for p in exclude):
            continue
        if isinstance(module, nn.Linear):
            targets.append(Target(name, "linear", (module.out_features, module.in_features)))
        elif is_lstm_kernel_module(module):
            targets.append(Target(name, "lstm", tuple(module.kernel.shape)))
    return targets


def profile_uses(model: nn.Module, targets: Sequence[Target], run: Callable[[], object],
                 audio_seconds: float) -> list[Target]:
    """Count each target's matrix-vector products while ``run()`` processes ``audio_seconds`` of
    audio; returns the targets with ``uses_per_second`` filled in.

    A Linear applied to ``(..., n)`` inputs counts one product per leading element; an LSTM
    kernel counts one per sequence element and batch row (one per call for a cell).
    """
    counts = {t.name: 0 for t in targets}
    handles = []
    for target in targets:
        module = model.get_submodule(target.name)

        def hook(mod, args, _out, name=target.name, kind=target.kind):
            x = args[0]
            if kind == "linear":
                counts[name] += x.numel() // x.shape[-1]
            else:  # sequence layer (B, T, in) or cell (B, in)
                counts[name] += x.shape[0] * (x.shape[1] if x.dim() == 3 else 1)

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    return [replace(t, uses_per_second=counts[t.name] / audio_seconds) for t in targets]
