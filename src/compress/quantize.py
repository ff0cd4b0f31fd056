"""8-bit post-training quantization of any (compressed) model: the paper's 8-bit size (section 4.3).

* Every ``nn.Linear`` -- the dense ones and both halves of a :class:`compress.lowrank.LowRankLinear`
  -- becomes, with ``linear="dynamic"`` (the default), PyTorch's dynamic int8 Linear
  (``torch.ao.quantization.quantize_dynamic``): int8 weights, activations quantized per call, int8
  matrix products. With ``linear="weight_only"`` (an improvement for batch-1 decoding) it stays a
  float ``nn.Linear`` whose weight is rounded to 8 bits per row and stored as int8, like the LSTM
  kernels: the same file size, float compute, so fused float kernels (the decoder's C++ step) still
  apply; PyTorch's dynamic int8 Linear is slower than float at batch 1 for the embedded model's widths.
* Every LSTM concatenated kernel (a dense ``[W_ih | W_hh]``, or the factors ``U'`` and ``V*`` of a
  factorized one) is rounded to 8 bits per output row (symmetric, one float scale per row) and
  stored as int8. PyTorch has no int8 kernel for a custom LSTM layer, so it computes in float on
  the rounded weights ("weight-only int8"): the file shrinks 4x, the WER shows the rounding, the
  LSTM's speed is unchanged.
* Every ``weight`` target (:mod:`compress.targets`: the matrices of PyTorch's ``nn.LSTM``/``nn.GRU``/``nn.RNN``
  and ``nn.MultiheadAttention``'s projections, dense or their low-rank factors) is rounded and stored the same way,
  weight-only int8: the module keeps its class, its forward and any low-rank factors or pruning masks (PyTorch's
  dynamic int8 ``nn.LSTM`` would multiply a factorized weight back out and drop the masks). So is every
  convolution target's weight (per output channel), which PyTorch cannot quantize dynamically.

The quantized file (:func:`save_int8`) holds the int8 state, its pruned matrices stored sparse (a bitmask and the
int8 values, :mod:`compress.sparse_state`), and whatever the caller adds (the
model's hyper-parameters, its compression scheme); :func:`load_int8` rebuilds the model from it.
"""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from common.atomic import save_atomic
from common.errors import KnownError
from compress.sparse_state import dense_state, read_model_file, sparse_state
from compress.targets import is_conv_target, is_lstm_kernel_module, weight_attributes

FORMAT = "shrinkml-int8/1"
_INT8_SUFFIX, _SCALE_SUFFIX = ".int8", ".int8_scale"
LINEAR_MODES = ("dynamic", "weight_only")


class QuantizeError(KnownError, ValueError):
    """An int8 Linear mode that does not exist, or an int8 model file that is damaged or not one."""


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row 8-bit quantization of ``weight`` ``(m, n)``: int8 ``(m, n)`` and scales ``(m, 1)``
    with ``weight ~= q * scale`` (``|q| <= 127``). A convolution's ``(out, in, *kernel)`` weight is rounded per
    output channel (its ``(out, in * kernel elements)`` rows) and keeps its shape."""
    matrix = weight.detach().flatten(1)
    scale = matrix.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127.0
    q = torch.round(matrix / scale).clamp(-127, 127).to(torch.int8)
    return q.reshape(weight.shape), scale.float()


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Float ``(m, n)`` (or a convolution's shape) from :func:`quantize_rows`' output."""
    return (q.flatten(1).float() * scale).reshape(q.shape)


def kernel_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The LSTM kernel tensors of ``model`` by state-dict key: each dense kernel, or the ``U'`` and
    ``V*`` originals of a factorized (parametrized) one."""
    found = {}
    for name, module in model.named_modules():
        if not is_lstm_kernel_module(module):
            continue
        prefix = f"{name}." if name else ""
        parametrizations = getattr(module, "parametrizations", None)
        if parametrizations is not None and "kernel" in parametrizations:
            for key, tensor in parametrizations["kernel"].named_parameters():
                found[f"{prefix}parametrizations.kernel.{key}"] = tensor
        else:
            found[f"{prefix}kernel"] = module.kernel
    return found


def weight_target_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters of the ``weight`` targets of ``model`` (:func:`compress.targets.weight_attributes`) by
    state-dict key: each dense matrix, or the ``U'`` and ``V*`` originals of a factorized one."""
    found = {}
    modules = dict(model.named_modules())
    for name, module in modules.items():
        prefix = f"{name}." if name else ""
        for attribute in weight_attributes(module, modules.get(name.rpartition(".")[0]) if name else None):
            parametrizations = getattr(module, "parametrizations", None)
            if parametrizations is not None and attribute in parametrizations:
                for key, tensor in parametrizations[attribute].named_parameters():
                    found[f"{prefix}parametrizations.{attribute}.{key}"] = tensor
            else:
                found[f"{prefix}{attribute}"] = getattr(module, attribute)
    return found


def linear_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """The weights of the float ``nn.Linear`` modules of ``model`` by state-dict key (none once they are
    dynamically quantized; a parametrized one's are its parametrization's)."""
    return {f"{name}.weight" if name else "weight": module.weight for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and not parametrize.is_parametrized(module, "weight")}


def conv_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """The weights of the convolution targets of ``model`` (``groups=1``; also a low-rank convolution's halves)."""
    return {f"{name}.weight" if name else "weight": module.weight for name, module in model.named_modules()
            if is_conv_target(module) and not parametrize.is_parametrized(module, "weight")}


def rounded_parameters(model: nn.Module, linear: bool = True) -> dict[str, nn.Parameter]:
    """The tensors that are stored as int8 rows: the LSTM kernels, the ``weight`` targets, the convolutions and
    (``linear``) the float Linears' weights."""
    return {**kernel_parameters(model), **(linear_weights(model) if linear else {}),
            **weight_target_parameters(model), **conv_weights(model)}


def linear_mode(quantized: nn.Module) -> str:
    """``"dynamic"`` when ``quantized`` holds dynamically quantized Linears, else ``"weight_only"``."""
    dynamic = torch.ao.nn.quantized.dynamic.Linear
    return "dynamic" if any(isinstance(m, dynamic) for m in quantized.modules()) else "weight_only"


def _check_linear(linear: str) -> None:
    if linear not in LINEAR_MODES:
        raise QuantizeError(f"unknown int8 Linear mode {linear!r}; use one of {', '.join(LINEAR_MODES)} "
                            "(config key linear)")


def _dynamic_linear(model: nn.Module) -> nn.Module:
    with warnings.catch_warnings():  # the eager quantization API warns that it is deprecated; it is what torch has
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


def quantize_int8(model: nn.Module, linear: str = "dynamic") -> nn.Module:
    """An int8 copy of ``model`` (the original is untouched): LSTM kernels and ``weight`` targets (``nn.LSTM``,
    ``nn.MultiheadAttention``) rounded to 8 bits per row,
    Linears dynamically quantized (``linear="dynamic"``) or rounded to 8 bits per row too
    (``"weight_only"``). Runs on the CPU."""
    _check_linear(linear)
    quantized = copy.deepcopy(model).cpu().eval()
    rounded = rounded_parameters(quantized, linear=linear != "dynamic")
    with torch.no_grad():
        for tensor in rounded.values():
            tensor.copy_(dequantize_rows(*quantize_rows(tensor)))
    return _dynamic_linear(quantized) if linear == "dynamic" else quantized


def int8_state_dict(quantized: nn.Module) -> dict[str, torch.Tensor]:
    """The state of a :func:`quantize_int8` model with its LSTM kernels (and weight-only Linears) as int8
    and per-row scales (dynamic Linears' packed int8 weights are already in the state dict)."""
    state = quantized.state_dict()
    for key in rounded_parameters(quantized):
        q, scale = quantize_rows(state.pop(key))
        state[key + _INT8_SUFFIX], state[key + _SCALE_SUFFIX] = q, scale
    return state


def serialized_mb(state: Mapping) -> float:
    """Size of ``state`` as written by ``torch.save``, in MB (2^20 bytes)."""
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    return buffer.getbuffer().nbytes / 2**20


def save_int8(path: str | Path, quantized: nn.Module, **extra) -> float:
    """Write the int8 model (and ``extra`` entries, e.g. hyper-parameters) atomically, its sparse (pruned) matrices
    as a bitmask and their int8 values (:mod:`compress.sparse_state`); returns its size in MB."""
    state = sparse_state(int8_state_dict(quantized))
    stored = {"format": FORMAT, "linear": linear_mode(quantized), "state_dict": state, **extra}
    return save_atomic(path, lambda tmp: torch.save(stored, tmp)).stat().st_size / 2**20


def load_int8(path: str | Path, build: Callable[[dict], nn.Module]) -> tuple[nn.Module, dict]:
    """Read a :func:`save_int8` file: ``build(file)`` makes the float model of the right structure
    (e.g. from the stored hyper-parameters, with its compression restored), which is then quantized
    and given the stored int8 state. Returns the model and the file's entries."""
    stored = read_model_file(path, FORMAT, "int8 model", QuantizeError, "make it with scripts/quantize.py",
                             "run scripts/quantize.py again")
    linear = stored.get("linear", "dynamic")
    _check_linear(linear)
    quantized = build(stored).cpu().eval()
    quantized = _dynamic_linear(quantized) if linear == "dynamic" else quantized
    state = dense_state(stored["state_dict"])  # keeps _metadata, the module versions quantized loaders read
    for key in [k for k in state if k.endswith(_INT8_SUFFIX)]:
        name = key[: -len(_INT8_SUFFIX)]
        state[name] = dequantize_rows(state.pop(key), state.pop(name + _SCALE_SUFFIX))
    quantized.load_state_dict(state)
    return quantized, stored
