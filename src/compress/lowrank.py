"""Low-rank replacements of the two target kinds, built from ``U'`` (``m x k``) and ``V*`` (``k x n``).

* :class:`LowRankLinear` replaces an ``nn.Linear``: ``y = U' (V* x) + b``, ``k (m + n)`` products
  instead of ``m n``.
* :class:`LowRankKernel` is a parametrization of an LSTM layer's concatenated kernel:
  ``kernel = U' V*``, with ``U'`` and ``V*`` the trainable tensors. The layer keeps running its
  fused kernel on the product, which is exact and costs the same as dense training (docs/inference_kernels.md).
  ``V* = [V_x | V_h]``: applied step by step this is the recurrence on the ``k``-dimensional
  ``z_t = V_x x_t + V_h h_{t-1}``, ``gates = U' z_t + b`` (:func:`factorized_lstm_reference`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize


class LowRankLinear(nn.Module):
    """``nn.Linear`` of rank ``k``: ``first`` (``n -> k``, no bias) then ``second`` (``k -> m``, bias)."""

    def __init__(self, u: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        rank = u.shape[1]
        self.in_features, self.out_features, self.rank = v.shape[1], u.shape[0], rank
        self.first = nn.Linear(self.in_features, rank, bias=False)
        self.second = nn.Linear(rank, self.out_features, bias=bias is not None)
        with torch.no_grad():
            self.first.weight.copy_(v)
            self.second.weight.copy_(u)
            if bias is not None:
                self.second.bias.copy_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(..., n)`` -> ``(..., m)``."""
        return self.second(self.first(x))

    @property
    def weight(self) -> torch.Tensor:
        """The dense ``m x n`` product (for inspection; forward never builds it)."""
        return self.second.weight @ self.first.weight

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.rank} -> {self.out_features}"


class LowRankKernel(nn.Module):
    """Parametrization ``kernel = U' V*`` holding ``U'`` ``(m, k)`` and ``V*`` ``(k, n)`` as its originals."""

    def __init__(self, u: torch.Tensor, v: torch.Tensor):
        super().__init__()
        self.rank = u.shape[1]
        self._initial = (u, v)

    def forward(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return u @ v

    def right_inverse(self, _dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._initial


def factorize_kernel(module: nn.Module, u: torch.Tensor, v: torch.Tensor) -> None:
    """Make ``module.kernel`` the product of trainable ``u`` and ``v`` (in place)."""
    parametrize.register_parametrization(module, "kernel", LowRankKernel(u, v), unsafe=True)
    del module.parametrizations.kernel[0]._initial


def kernel_rank(module: nn.Module) -> int | None:
    """Rank of a factorized kernel, or None when ``module.kernel`` is dense."""
    if not parametrize.is_parametrized(module, "kernel"):
        return None
    return module.parametrizations.kernel[0].rank


def factorized_lstm_reference(x: torch.Tensor, u: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                              hidden_size: int) -> torch.Tensor:
    """The factorized recurrence written out (reference for tests and kernels): ``x`` ``(B, T, in)``
    -> outputs ``(B, T, H)``; ``V_x x_t`` is computed for all frames at once."""
    v_x, v_h = v.split([x.shape[-1], hidden_size], dim=1)
    projected = x @ v_x.t()  # (B, T, k): the input side of z_t for every frame in one product
    h = x.new_zeros(x.shape[0], hidden_size)
    c = torch.zeros_like(h)
    outputs = []
    for t in range(x.shape[1]):
        z = projected[:, t] + h @ v_h.t()
        i, f, g, o = (z @ u.t() + bias).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outputs.append(h)
    return torch.stack(outputs, dim=1)
