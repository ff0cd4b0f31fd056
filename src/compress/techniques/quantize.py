"""8-bit rounding: scheme key ``bits`` (only 8), each target's matrix rounded to 8 bits per output row.

The post-training int8 model of the paper's section 4.3 (every LSTM kernel and Linear, the int8 file format)
is :mod:`compress.quantize`; this technique applies its per-row rounding (:func:`compress.quantize.quantize_rows`)
to a scheme's targets, in float ("weight-only int8"): the rounded weights are what the model computes with, and
the stored parameters are as many as before (a quarter of the bytes each).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from compress.quantize import dequantize_rows, quantize_rows
from compress.targets import Target
from compress.techniques.base import SchemeError, Settings, Technique, register

BITS = (8,)


class Int8(Technique):
    """Per-row 8-bit rounding per target (``{"bits": 8}``)."""

    name = "quantize"
    keys = ("bits",)

    def options(self, target: Target) -> list[dict]:
        return [{"bits": bits} for bits in BITS]

    def validate(self, target: Target, settings: Settings) -> None:
        if settings.get("bits") not in BITS:
            raise SchemeError(f"scheme target '{target.name}' bits={settings.get('bits')!r}: only 8-bit rounding "
                              "is implemented")

    def params(self, target: Target, settings: Settings, params: int) -> int:
        """As many parameters as before (8 bits each instead of 32)."""
        return params

    @torch.no_grad()
    def apply(self, model: nn.Module, targets: Sequence[Target], settings: Mapping[str, Settings]) -> nn.Module:
        """A copy of ``model`` whose targets' parameters (a Linear's weight, a kernel, or their low-rank factors)
        are rounded to 8 bits per row."""
        rounded = copy.deepcopy(model)
        for target in targets:
            if target.name not in settings:
                continue
            module = target.module(rounded)
            if target.kind == "weight":  # the parameter, or its low-rank factors, not its module's other weights
                entry = getattr(getattr(module, "parametrizations", {}), target.attribute, None)
                tensors = list(entry.parameters()) if entry is not None else [getattr(module, target.attribute)]
            else:
                tensors = [t for key, t in module.named_parameters() if t.dim() >= 2 and not key.endswith("bias")]
            for tensor in tensors:
                tensor.copy_(dequantize_rows(*quantize_rows(tensor)).to(tensor.dtype))
        return rounded


INT8 = register(Int8())
