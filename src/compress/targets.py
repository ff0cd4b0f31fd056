"""Compressible matrices ("targets") of any ``nn.Module``.

Four kinds, found by structure, never by class name of a particular model:

* ``linear``: every ``nn.Linear``; its matrix is ``weight`` (``out x in``);
* ``conv``: every ``nn.Conv1d``/``nn.Conv2d``/``nn.Conv3d`` with ``groups=1``; its matrix is ``weight`` seen as
  ``out x (in * kernel elements)`` (the layout of the product it computes per output position);
* ``lstm``: every module holding one concatenated LSTM kernel ``[W_ih | W_hh]`` of shape
  ``4H x (in + H)`` as a parameter named ``kernel`` next to integer ``input_size`` and
  ``hidden_size`` attributes (the TensorFlow/RETURNN layout the paper counts, docs/architecture.md "Target");
* ``weight``: a 2-D weight that its module's forward reads directly, so the module cannot be swapped for a
  low-rank one: every matrix of PyTorch's own recurrent layers (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``: one target
  per layer, direction and side, ``weight_ih_l0`` (``gates*H x in``), ``weight_hh_l0`` (``gates*H x H``),
  ``weight_hr_l0`` with ``proj_size``) and of ``nn.MultiheadAttention`` (``in_proj_weight`` ``3E x E``, or
  ``q/k/v_proj_weight`` with other key/value sizes, and ``out_proj.weight``). The target's name is the module's
  path and the attribute (``lm.rnn.weight_ih_l0``, ``blocks.0.attn.out_proj.weight``); it is compressed in
  place (a parametrization, masks, rounding), so the module keeps its class and its forward.

Grouped (depthwise) and transposed convolutions are not targets (:data:`UNSUPPORTED`); a model without any target
stops with :class:`NoTargetsError`.

Each target also knows how often it is applied per second of audio (matrix-vector products),
measured by :func:`profile_uses`, for the multiply-accumulate cost model.
"""

from __future__ import annotations

import fnmatch
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.nn.utils import parametrize

from common.errors import KnownError

KINDS = ("linear", "conv", "lstm", "weight")
SUPPORTED = ("nn.Linear, nn.Conv1d/2d/3d with groups=1, nn.LSTM, nn.GRU, nn.RNN, nn.MultiheadAttention and "
             "concatenated LSTM kernels (a 'kernel' parameter of shape 4H x (in + H))")
CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
UNSUPPORTED = (nn.modules.conv._ConvNd, nn.Embedding)  # weight-bearing, never targets: named when nothing else is


class NoTargetsError(KnownError, ValueError):
    """A model with no compressible matrix at all; the message names the model and what is supported."""


@dataclass(frozen=True)
class Target:
    """One compressible ``m x n`` matrix: ``name`` is the path of the module that holds it (of a ``weight`` target:
    that path and the attribute, ``rnn.weight_hh_l0``)."""

    name: str
    kind: str  # one of KINDS: "linear", "conv", "lstm" or "weight"
    shape: tuple[int, int]
    uses_per_second: float = 0.0

    @property
    def max_rank(self) -> int:
        return min(self.shape)

    @property
    def params(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def module_name(self) -> str:
        """The path of the module that holds the matrix (the name itself, but for a ``weight`` target)."""
        return self.name.rpartition(".")[0] if self.kind == "weight" else self.name

    @property
    def attribute(self) -> str:
        """The matrix's attribute on :attr:`module_name`: ``weight``, ``kernel`` or e.g. ``weight_ih_l0``."""
        return {"linear": "weight", "conv": "weight", "lstm": "kernel"}.get(self.kind) or self.name.rpartition(".")[2]

    def module(self, model: nn.Module) -> nn.Module:
        return model.get_submodule(self.module_name)

    def weight(self, model: nn.Module) -> torch.Tensor:
        """The dense matrix of this target in ``model``, ``(m, n)`` (a convolution's weight viewed so)."""
        weight = getattr(self.module(model), self.attribute)
        return weight.flatten(1) if self.kind == "conv" else weight


def is_lstm_kernel_module(module: nn.Module) -> bool:
    kernel = getattr(module, "kernel", None)
    sizes = getattr(module, "input_size", None), getattr(module, "hidden_size", None)
    return (isinstance(kernel, torch.Tensor) and kernel.dim() == 2 and all(isinstance(s, int) for s in sizes)
            and tuple(kernel.shape) == (4 * module.hidden_size, module.input_size + module.hidden_size))


def is_conv_target(module: nn.Module) -> bool:
    """A convolution (1-, 2- or 3-D, not transposed) without groups: a ``conv`` target."""
    return isinstance(module, CONVOLUTIONS) and module.groups == 1


def conv_shape(module: nn.Module) -> tuple[int, int]:
    """``(out, in * kernel elements)``: the matrix of a convolution target."""
    return module.out_channels, module.weight[0].numel()


def weight_attributes(module: nn.Module, parent: nn.Module | None = None) -> list[str]:
    """The attributes of ``module`` that are ``weight`` targets (module docstring): a recurrent layer's
    ``weight_*`` matrices, a multi-head attention's input projections, or ``weight`` for the ``out_proj`` Linear of
    a multi-head attention (``parent``), whose forward reads it directly."""
    if isinstance(module, nn.RNNBase):
        return [n for n in module._flat_weights_names if n.startswith("weight_")]
    if isinstance(module, nn.MultiheadAttention):
        return ["in_proj_weight"] if module._qkv_same_embed_dim else ["q_proj_weight", "k_proj_weight",
                                                                      "v_proj_weight"]
    if isinstance(module, nn.Linear) and isinstance(parent, nn.MultiheadAttention):
        return ["weight"]
    return []


def matrix_shape(module: nn.Module, attribute: str) -> tuple[int, int]:
    """``(m, n)`` of ``module.<attribute>``, read from a low-rank parametrization's factors when it has one
    (without building the product)."""
    if parametrize.is_parametrized(module, attribute):
        entry = module.parametrizations[attribute]
        if hasattr(entry, "original0") and hasattr(entry, "original1"):
            return entry.original0.shape[0], entry.original1.shape[1]
        return tuple(entry.original.shape)
    return tuple(getattr(module, attribute).shape)


def _matches(names: Sequence[str], patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for name in names for p in patterns)


def discover_targets(model: nn.Module, include: Sequence[str] = ("*",), exclude: Sequence[str] = ()) -> list[Target]:
    """Every compressible matrix of ``model`` whose name matches an ``include`` pattern and no
    ``exclude`` pattern (shell-style, e.g. ``encoder.*``), in module order. A ``weight`` target matches by its
    own name (``rnn.weight_hh_l0``) or its module's (``rnn``). Raises :class:`NoTargetsError` when ``model`` has
    no compressible matrix at all, whatever the patterns (a pattern that only leaves none gives ``[]``)."""
    targets, found = [], False
    modules = dict(model.named_modules())
    for name, module in modules.items():
        parent = modules.get(name.rpartition(".")[0]) if name else None
        if not name and not isinstance(module, nn.RNNBase | nn.MultiheadAttention):
            continue
        attributes = weight_attributes(module, parent)
        candidates = ([Target(f"{name}.{a}" if name else a, "weight", matrix_shape(module, a)) for a in attributes]
                      if attributes else [Target(name, "linear", (module.out_features, module.in_features))]
                      if isinstance(module, nn.Linear) else [Target(name, "conv", conv_shape(module))]
                      if is_conv_target(module) else [Target(name, "lstm", tuple(module.kernel.shape))]
                      if is_lstm_kernel_module(module) else [])
        found = found or bool(candidates)
        for target in candidates:
            names = (target.name, name) if target.kind == "weight" else (name,)
            if _matches(names, include) and not _matches(names, exclude):
                targets.append(target)
    if not found:
        raise NoTargetsError(no_targets_message(model))
    return targets


def no_targets_message(model: nn.Module) -> str:
    """One line: ``model`` has no target; which weight-bearing modules it has instead, and what is supported."""
    if isinstance(model, nn.Linear) or is_conv_target(model):
        return (f"{type(model).__name__}: compress replaces a model's sub-modules, and this model is one Linear or "
                "convolution itself; wrap it (nn.Sequential(model)) and compress that")
    held = Counter(type(m).__name__ for m in model.modules() if isinstance(m, UNSUPPORTED))
    other = ", ".join(f"{count} {kind}" for kind, count in held.items()) or "no weight matrix compress knows"
    return (f"{type(model).__name__} has nothing to compress ({other}): compress handles {SUPPORTED}; "
            "grouped and transposed convolutions and embeddings are not supported")


def profile_uses(model: nn.Module, targets: Sequence[Target], run: Callable[[], object],
                 audio_seconds: float) -> list[Target]:
    """Count each target's matrix-vector products while ``run()`` processes ``audio_seconds`` of
    audio; returns the targets with ``uses_per_second`` filled in.

    A Linear applied to ``(..., n)`` inputs counts one product per leading element; an LSTM
    kernel counts one per sequence element and batch row (one per call for a cell); a ``weight`` target one per
    vector of its module's first input (a recurrent layer's frames, packed or not; an attention's queries).
    """
    counts = {t.name: 0 for t in targets}
    handles = []
    for target in targets:
        module = target.module(model)

        def hook(mod, args, output, name=target.name, kind=target.kind):
            x = args[0]
            if isinstance(x, nn.utils.rnn.PackedSequence):
                counts[name] += x.data.shape[0]
            elif kind == "conv":  # one product per output position
                counts[name] += output.numel() // output.shape[1]
            elif kind != "lstm":  # a Linear, a recurrent layer or an attention: one product per input vector
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
