"""Fast inference for an LSTM layer whose concatenated kernel is a rank-``k`` product ``U V``.

The contract with the compression package (which this package never imports): a layer's
``kernel`` ``(4H, in + H)`` counts as factorized when it is parametrized
(``torch.nn.utils.parametrize``) by exactly one parametrization that has an ``int`` attribute
``rank`` and two originals, ``module.parametrizations.kernel.original0`` = ``U`` ``(4H, k)`` and
``original1`` = ``V`` ``(k, in + H)``, with ``kernel = U @ V``. :func:`low_rank_factors` reads
them; anything else (a dense kernel, another parametrization) is treated as dense.

With ``V = [V_x | V_h]`` the layer is the recurrence on the ``k`` values
``z_t = V_x x_t + V_h h_{t-1}``, ``gates_t = U z_t + b`` (gate order i, f, g, o), which costs
``k (4H + H)`` multiply-adds per step instead of ``4H H`` (plus the input side ``V_x x_t``, done
for all frames at once as one matrix product by the caller). :func:`factorized_lstm_forward`
runs it:

* backend ``"cpp"``: a small C++ loop (``asr/kernels/csrc/factorized_lstm.cpp``), in the library that
  :func:`asr.kernels.load` builds on first use (about a minute, then cached): per step two
  hand-written products into preallocated buffers (register-blocked over 4 batch rows x 64 outputs;
  at batch 16 about 2x faster than MKL's small products on this AMD CPU) and the gate math in one
  vectorized pass (with its own exp, compiled for AVX-512, AVX2 and plain x86-64 and chosen at load
  time on x86-64 with GCC). CPU float32 only. The same library holds the attention decoder's
  inference step (:mod:`asr.model.fast_decode`).
* backend ``"python"``: the same recurrence in PyTorch operations. It is used for other devices
  and dtypes, and everywhere when the extension cannot be built (one logged warning names the
  reason) or is switched off with ``SHRINKML_LSTM_EXTENSION=0``.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.weak import WeakIdKeyDictionary

from asr import kernels

log = logging.getLogger(__name__)

ENV_SWITCH = "SHRINKML_LSTM_EXTENSION"  # "0" keeps the C++ extension from being built or used
GEMV_ROWS = 1  # batches up to this size run row after row, larger ones all rows together per step

_lock = threading.Lock()
_status: dict = {"backend": None, "reason": None, "build_seconds": None}
_packed_cache = WeakIdKeyDictionary()  # U -> (key, packed weights of its layer)


def _build() -> None:
    """Build (or load the cached) extension once; on failure record the reason and warn once."""
    switch = os.environ.get(ENV_SWITCH, "1").strip().lower()
    if switch in ("0", "false", "no", "off"):
        reason = f"switched off by {ENV_SWITCH}={os.environ[ENV_SWITCH]}"
    else:
        start = time.perf_counter()
        try:
            kernels.load()  # raises if the library cannot be built or lacks an operator
        except Exception as err:  # any build or load failure means: use the fallback
            lines = str(err).strip().splitlines()
            reason = f"{type(err).__name__}: {lines[-1] if lines else ''}"
        else:
            _status.update(backend="cpp", reason=None, build_seconds=time.perf_counter() - start)
            return
    _status.update(backend="python", reason=reason)
    log.warning("factorized LSTM: C++ extension unavailable (%s); using the slower PyTorch fallback", reason)


def backend() -> str:
    """``"cpp"`` or ``"python"``: what CPU float32 inputs run on (builds the extension on first call)."""
    if _status["backend"] is None:
        with _lock:
            if _status["backend"] is None:
                _build()
    return _status["backend"]


def backend_info() -> dict:
    """``backend``, ``reason`` the extension is not used (None when it is) and ``build_seconds``
    (building, or loading the cached build, in this process)."""
    backend()
    return dict(_status)


def _uses_extension(*tensors: torch.Tensor) -> bool:
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors) and backend() == "cpp"


def pack_factors(v_h: torch.Tensor, u: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
    """The weights in the layouts the C++ loop reads (``V_h^T`` and ``U^T``, zero-padded), or None
    where the extension does not run them. Pack once and pass ``packed`` to every call."""
    if not _uses_extension(v_h, u, bias):
        return None
    with torch.no_grad():
        return tuple(torch.ops.shrinkml_lowrank.pack(v_h, u, bias))


def factorized_lstm_forward_python(x_proj: torch.Tensor, v_h: torch.Tensor, u: torch.Tensor, bias: torch.Tensor,
                                   h0: torch.Tensor, c0: torch.Tensor
                                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The recurrence in PyTorch operations; same arguments and results as :func:`factorized_lstm_forward`."""
    h, c = h0, c0
    v_h_t, u_t = v_h.t(), u.t()
    outputs = []
    for t in range(x_proj.shape[1]):
        z = torch.addmm(x_proj[:, t], h, v_h_t)
        i, f, g, o = torch.addmm(bias, z, u_t).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outputs.append(h)
    if not outputs:
        return x_proj.new_zeros(x_proj.shape[0], 0, v_h.shape[1]), h0.clone(), c0.clone()
    return torch.stack(outputs, dim=1), h, c


def factorized_lstm_forward(x_proj: torch.Tensor, v_h: torch.Tensor, u: torch.Tensor, bias: torch.Tensor,
                            h0: torch.Tensor, c0: torch.Tensor, packed: tuple[torch.Tensor, ...] | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the factorized recurrence (inference only: nothing is recorded for autograd).

    Args:
        x_proj: ``(B, T, k)``, the input side ``V_x x_t`` of every frame.
        v_h: ``(k, H)``; u: ``(4H, k)``; bias: ``(4H,)``; h0, c0: ``(B, H)``.
        packed: :func:`pack_factors` of ``(v_h, u, bias)``, to skip re-packing them on every call.
    Returns:
        outputs ``(B, T, H)`` and the final ``h``, ``c``, each ``(B, H)``.
    """
    if not _uses_extension(x_proj, v_h, u, bias, h0, c0):
        return factorized_lstm_forward_python(x_proj, v_h, u, bias, h0, c0)
    if packed is None:
        packed = pack_factors(v_h, u, bias)
    out, h, c = torch.ops.shrinkml_lowrank.forward_packed(x_proj, *packed, h0, c0, GEMV_ROWS)
    return out, h, c


def low_rank_factors(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(U (4H, k), V (k, in + H))`` when ``module.kernel`` is a rank-``k`` product (see the module
    docstring for the contract), else None."""
    if not parametrize.is_parametrized(module, "kernel"):
        return None
    entry = module.parametrizations.kernel
    rank = getattr(entry[0], "rank", None) if len(entry) == 1 else None
    if not isinstance(rank, int) or isinstance(rank, bool):
        return None
    if not (hasattr(entry, "original0") and hasattr(entry, "original1")) or hasattr(entry, "original2"):
        return None
    return entry.original0, entry.original1


def factorized_layer_forward(x: torch.Tensor, u: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                             state: tuple[torch.Tensor, torch.Tensor] | None
                             ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """A whole factorized layer for inference: ``x`` ``(B, T, in)``, ``U`` ``(4H, k)``, ``V`` ``(k, in + H)``
    -> outputs ``(B, T, H)`` and the final ``(h, c)``.

    ``V_x x_t`` of all frames is one matrix product; the packed weights are kept per ``U`` tensor
    (weakly) and rebuilt when ``U``, ``V`` or ``bias`` change (another tensor or an in-place update).
    """
    hidden = u.shape[0] // 4
    v_x, v_h = v.split([v.shape[1] - hidden, hidden], dim=1)
    x_proj = torch.matmul(x, v_x.t())
    if state is None:
        h0 = c0 = x.new_zeros(x.shape[0], hidden)
    else:
        h0, c0 = state
    packed = None  # factorized_lstm_forward packs per call (inference tensors have no version to key on)
    if _uses_extension(x, u, v, bias, h0, c0) and not any(t.is_inference() for t in (u, v, bias)):
        key = tuple((t.data_ptr(), t._version) for t in (u, v, bias))
        cached = _packed_cache.get(u)
        if cached is None or cached[0] != key:
            cached = (key, pack_factors(v_h, u, bias))
            _packed_cache[u] = cached
        packed = cached[1]
    out, h, c = factorized_lstm_forward(x_proj, v_h, u, bias, h0, c0, packed)
    return out, (h, c)

