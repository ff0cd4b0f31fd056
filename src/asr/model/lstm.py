"""LSTM layers that keep one concatenated kernel ``[W_ih | W_hh]`` of shape ``4H x (in + H)``.

This is how TensorFlow and RETURNN store an LSTM, and how the ShrinkML paper counts its
matrices: one compressible matrix per layer. The sequence layer runs PyTorch's fused LSTM
kernel (oneDNN on CPU) on views of that kernel, so it is as fast as ``torch.nn.LSTM``; the cell
is used step by step in the decoder. Gate order is PyTorch's: input, forget, cell, output.

A kernel made a rank-``k`` product ``U V`` (the contract in :mod:`asr.model.lowrank_lstm`) keeps
the fused kernel on the rebuilt product while gradients are on (exact, costs what dense training
costs); at inference on the CPU the layer runs the ``k``-dimensional recurrence instead
(:func:`asr.model.lowrank_lstm.factorized_layer_forward`) and the cell two thin products, which is
where the speed-up of compression comes from. With pruned factors (at least ``sparse_min_sparsity`` zeros in
``U`` and ``V`` together, and where that pays) the layer runs that recurrence on the factors packed sparse
(:func:`asr.model.sparse.sparse_factorized_layer_forward`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary

from asr.model.lowrank_lstm import factorized_layer_forward, low_rank_factors
from asr.model.sparse import sparse_factorized_layer_forward, sparse_layer_forward

_fused_cache = WeakIdKeyDictionary()  # dense kernel -> (key, its (W_ih, W_hh, zero b_hh) for inference)


def _init_kernel(kernel: nn.Parameter, bias: nn.Parameter, hidden_size: int, forget_bias: float) -> None:
    bound = 1.0 / math.sqrt(hidden_size)
    nn.init.uniform_(kernel, -bound, bound)
    nn.init.zeros_(bias)
    with torch.no_grad():
        bias[hidden_size : 2 * hidden_size].fill_(forget_bias)


class _ConcatKernel(nn.Module):
    """Holds ``kernel`` ``(4H, in + H)`` = ``[W_ih | W_hh]`` and ``bias`` ``(4H,)`` (forget gate at +1)."""

    sparse_min_sparsity: float | None = None  # decoding runs a kernel this sparse on sparse kernels (asr.model.sparse)

    def __init__(self, input_size: int, hidden_size: int, forget_bias: float = 1.0):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.kernel = nn.Parameter(torch.empty(4 * hidden_size, input_size + hidden_size))
        self.bias = nn.Parameter(torch.empty(4 * hidden_size))
        _init_kernel(self.kernel, self.bias, hidden_size, forget_bias)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, kernel={tuple(self.kernel.shape)}"


class ConcatLSTM(_ConcatKernel):
    """One unidirectional LSTM layer over a whole sequence, batch first.

    Parameters: ``kernel`` ``(4H, in + H)`` = ``[W_ih | W_hh]`` and ``bias`` ``(4H,)``.
    """

    def weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W_ih (4H, in), W_hh (4H, H))``, contiguous, differentiable views of the kernel."""
        w_ih, w_hh = self.kernel.split([self.input_size, self.hidden_size], dim=1)
        return w_ih.contiguous(), w_hh.contiguous()

    def _fused_weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``W_ih``, ``W_hh`` and a zero ``b_hh`` for the fused kernel. Without gradients they are kept
        until the kernel changes: copying them out on every call (fresh 1 MB buffers at H=256) made
        40-frame streaming chunks up to 2x slower than ``torch.nn.LSTM``."""
        kernel = self.kernel
        if torch.is_grad_enabled() or kernel.is_inference():
            return *self.weights(), torch.zeros_like(self.bias)
        key = (kernel.data_ptr(), kernel._version, kernel.dtype, kernel.device)
        cached = _fused_cache.get(kernel)
        if cached is None or cached[0] != key:
            cached = (key, (*self.weights(), torch.zeros_like(self.bias)))
            _fused_cache[kernel] = cached
        return cached[1]

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Run the layer.

        Args:
            x: ``(B, T, in)``.
            state: optional ``(h, c)``, each ``(B, H)``, carried over from a previous chunk.
        Returns:
            outputs ``(B, T, H)`` and the final ``(h, c)``, each ``(B, H)``.
        """
        if not torch.is_grad_enabled() and x.device.type == "cpu":  # elsewhere the fused kernel on U @ V wins
            factors = low_rank_factors(self)
            if factors is not None:  # pruned factors: the sparse rank-k recurrence, else the dense one
                sparse = sparse_factorized_layer_forward(x, factors[0], factors[1], self.bias, state,
                                                         self.sparse_min_sparsity)
                if sparse is not None:
                    return sparse
                return factorized_layer_forward(x, factors[0], factors[1], self.bias, state)
            if isinstance(self.kernel, nn.Parameter):  # a pruned kernel: zeros in the parameter itself
                sparse = sparse_layer_forward(x, self.kernel, self.bias, self.input_size, state,
                                              self.sparse_min_sparsity)
                if sparse is not None:
                    return sparse
        batch = x.shape[0]
        if state is None:
            zeros = x.new_zeros(1, batch, self.hidden_size)
            hx = (zeros, zeros)
        else:
            hx = (state[0].unsqueeze(0), state[1].unsqueeze(0))
        w_ih, w_hh, zero_bias = self._fused_weights()
        params = [w_ih, w_hh, self.bias, zero_bias]  # fused kernel wants b_ih and b_hh
        out, h, c = torch._VF.lstm(x, hx, params, True, 1, 0.0, self.training, False, True)
        return out, (h.squeeze(0), c.squeeze(0))


class ConcatLSTMCell(_ConcatKernel):
    """One LSTM step: ``gates = [x | h] @ kernel^T + bias``; ``kernel`` is ``(4H, in + H)``."""

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` ``(B, in)``, ``state`` ``(h, c)`` each ``(B, H)`` -> new ``(h, c)``."""
        h, c = state
        factors = low_rank_factors(self)
        if factors is None:
            gates = F.linear(torch.cat([x, h], dim=-1), self.kernel, self.bias)
        else:  # two thin products; U @ V is never rebuilt
            gates = F.linear(F.linear(torch.cat([x, h], dim=-1), factors[1]), factors[0], self.bias)
        i, f, g, o = gates.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c

    def initial_state(self, batch: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        zeros = like.new_zeros(batch, self.hidden_size)
        return zeros, zeros

