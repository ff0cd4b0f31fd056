"""Low-rank replacements of the two target kinds, built from ``U'`` (``m x k``) and ``V*`` (``k x n``).

* :class:`LowRankLinear` replaces an ``nn.Linear``: ``y = U' (V* x) + b``, ``k (m + n)`` products
  instead of ``m n``; :class:`LowRankConv` a convolution the same way (per output position).
* :class:`LowRankKernel` is a parametrization of an LSTM layer's concatenated kernel:
  ``kernel = U' V*``, with ``U'`` and ``V*`` the trainable tensors. The layer keeps running its
  fused kernel on the product, which is exact and costs the same as dense training (docs/inference_kernels.md).
  ``V* = [V_x | V_h]``: applied step by step this is the recurrence on the ``k``-dimensional
  ``z_t = V_x x_t + V_h h_{t-1}``, ``gates = U' z_t + b`` (:func:`factorized_lstm_reference`).
* :func:`factorize_weight` applies the same parametrization to any 2-D weight a module's forward reads directly
  (``nn.LSTM``'s ``weight_hh_l0``, ``nn.MultiheadAttention``'s ``in_proj_weight``): the module keeps its class and
  forward, which sees ``U' V*``. That forward rebuilds the product on every call (exact; for inference wrap calls in
  ``torch.nn.utils.parametrize.cached()`` to build it once: the dense speed, the low-rank size).
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


class LowRankConv(nn.Module):
    """A convolution (``groups=1``) of rank ``k``: its weight seen as the ``m x n`` matrix ``out x (in * kernel
    elements)`` is ``U' V*``, so the layer is ``first``, the same convolution (kernel, stride, padding, dilation)
    from ``in`` to ``k`` channels with ``V*`` as its weight, then ``second``, a 1x1 convolution from ``k`` to ``out``
    channels with ``U'`` and the bias: ``k (m + n)`` products per output position instead of ``m n``. (AIMET's
    spatial SVD splits the kernel's height from its width instead; this split keeps the kernel whole, which is
    what a 1-D convolution needs.)"""

    def __init__(self, u: torch.Tensor, v: torch.Tensor, conv: nn.Module):
        super().__init__()
        rank, cls = u.shape[1], type(conv)
        self.in_channels, self.out_channels, self.rank = conv.in_channels, conv.out_channels, rank
        self.first = cls(conv.in_channels, rank, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                         bias=False, padding_mode=conv.padding_mode)
        self.second = cls(rank, conv.out_channels, 1, bias=conv.bias is not None)
        with torch.no_grad():
            self.first.weight.copy_(v.reshape(self.first.weight.shape))
            self.second.weight.copy_(u.reshape(self.second.weight.shape))
            if conv.bias is not None:
                self.second.bias.copy_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, in, *size)`` -> ``(B, out, *size')``, as the dense convolution."""
        return self.second(self.first(x))

    @property
    def weight(self) -> torch.Tensor:
        """The dense ``(out, in, *kernel)`` weight (for inspection; forward never builds it)."""
        product = self.second.weight.flatten(1) @ self.first.weight.flatten(1)
        return product.reshape(self.out_channels, *self.first.weight.shape[1:])

    def extra_repr(self) -> str:
        return f"{self.in_channels} -> {self.rank} -> {self.out_channels}"


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
    factorize_weight(module, "kernel", u, v)


def factorize_weight(module: nn.Module, attribute: str, u: torch.Tensor, v: torch.Tensor) -> None:
    """Make ``module.<attribute>`` (``m x n``) the product of trainable ``u`` (``m x k``) and ``v`` (``k x n``), in
    place. A recurrent layer (``nn.RNNBase``) is also made to forget the rebuilt weights it caches before it is
    copied (:func:`forget_rebuilt_weights`)."""
    if parametrize.is_parametrized(module) and not parametrize.is_parametrized(module, attribute):
        own_parametrized_class(module)
    parametrize.register_parametrization(module, attribute, LowRankKernel(u, v), unsafe=True)
    del module.parametrizations[attribute][0]._initial
    cls = type(module)  # the class parametrize made for this one module
    if isinstance(module, nn.RNNBase) and not getattr(cls, "_forgets_rebuilt_weights", False):
        copy_parametrized = cls.__deepcopy__

        def deepcopy_forgetting(self, memo):
            forget_rebuilt_weights(self)
            return copy_parametrized(self, memo)

        cls.__deepcopy__, cls._forgets_rebuilt_weights = deepcopy_forgetting, True
    if isinstance(module, nn.RNNBase):
        forget_rebuilt_weights(module)


def own_parametrized_class(module: nn.Module) -> None:
    """Give a parametrized ``module`` a class of its own: ``copy.deepcopy`` of a parametrized module shares the class
    parametrize made, and a parametrization added to the copy (a property on that class) would reach the original."""
    cls = type(module)
    namespace = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
    module.__class__ = type(cls.__name__, cls.__bases__, namespace)


def forget_rebuilt_weights(module: nn.RNNBase) -> None:
    """``nn.RNNBase`` keeps the weights of its last call (or device move) in ``_flat_weights``; a rebuilt,
    non-leaf, one there would make ``copy.deepcopy`` fail, so it is dropped (its next call rebuilds it anyway)."""
    module._flat_weights = [None if parametrize.is_parametrized(module, name) else weight
                            for name, weight in zip(module._flat_weights_names, module._flat_weights, strict=True)]


def kernel_rank(module: nn.Module, attribute: str = "kernel") -> int | None:
    """Rank of a factorized kernel (or other parametrized ``attribute``), or None when it is dense."""
    if not parametrize.is_parametrized(module, attribute):
        return None
    entry = module.parametrizations[attribute][0]
    return entry.rank if isinstance(entry, LowRankKernel) else None


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
