"""The inference form of a factorized model: the low-rank weights that modules read directly, made fast to run.

A factorized ``nn.LSTM`` or ``nn.MultiheadAttention`` (:func:`compress.lowrank.factorize_weight`) keeps its own
forward, which rebuilds every low-rank weight ``U' V*`` on every call: exact and trainable, but slower than the
dense model. :func:`inference_form` gives a copy for inference instead:

* every ``nn.LSTM`` with a factorized weight (no ``proj_size``) becomes a :class:`LowRankLSTM`, which runs the
  recurrence on the factors: the input side of all frames at once (``(x V_ih*^T) U_ih'^T + b``, two matrix
  products), then per step ``gates = pre_t + (h_{t-1} V_hh*^T) U_hh'^T`` (``k (4H + H)`` multiply-adds instead of
  ``4H * H``), the gate math as ``nn.LSTM``'s (``i, f, g, o``);
* every other parametrized weight (``nn.GRU``'s, attention's) is built once, dense: the dense speed.

The copy is for inference (no dropout between layers, no packed sequences); the model it came from stays the one
to train, prune and save.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils import parametrize

from common.errors import KnownError
from compress.lowrank import LowRankKernel, own_parametrized_class


class InferenceFormError(KnownError, ValueError):
    """An input the inference form does not take (a packed sequence)."""


def _factors(module: nn.Module, attribute: str) -> tuple[torch.Tensor, ...]:
    """``(U', V*)`` of a low-rank parametrized weight, else ``(W,)``: detached copies."""
    if parametrize.is_parametrized(module, attribute):
        entry = module.parametrizations[attribute]
        if isinstance(entry[0], LowRankKernel) and len(entry) == 1:
            return entry.original0.detach().clone(), entry.original1.detach().clone()
    return (getattr(module, attribute).detach().clone(),)


def _apply(x: torch.Tensor, factors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """``x W^T`` with ``W = U' V*`` or dense: ``x`` ``(N, n)`` -> ``(N, m)``."""
    if len(factors) == 1:
        return x @ factors[0].t()
    return (x @ factors[1].t()) @ factors[0].t()


class LowRankLSTM(nn.Module):
    """``nn.LSTM``'s inference on low-rank weights (module docstring): same call and results,
    ``input`` ``(B, T, in)`` (``batch_first``) or ``(T, B, in)`` or ``(T, in)``, optional ``(h_0, c_0)`` each
    ``(layers * directions, B, H)`` -> ``output`` ``(..., directions * H)``, ``(h_n, c_n)``."""

    def __init__(self, lstm: nn.LSTM):
        super().__init__()
        self.hidden_size, self.num_layers, self.batch_first = lstm.hidden_size, lstm.num_layers, lstm.batch_first
        self.directions = 2 if lstm.bidirectional else 1
        self.counts: list[tuple[int, int]] = []  # per (layer, direction): tensors of the ih and hh sides (1 or 2)
        for layer in range(self.num_layers):
            for suffix in ("", "_reverse")[: self.directions]:
                name = f"l{layer}{suffix}"
                ih, hh = _factors(lstm, f"weight_ih_{name}"), _factors(lstm, f"weight_hh_{name}")
                bias = (getattr(lstm, f"bias_ih_{name}").detach() + getattr(lstm, f"bias_hh_{name}").detach()
                        if lstm.bias else ih[0].new_zeros(4 * self.hidden_size))
                for j, tensor in enumerate((*ih, *hh, bias)):  # buffers: .to() and state_dict() see them
                    self.register_buffer(f"w{len(self.counts)}_{j}", tensor)
                self.counts.append((len(ih), len(hh)))

    def _tensors(self, index: int) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...], torch.Tensor]:
        """``(ih factors, hh factors, bias (4H,))`` of one layer and direction."""
        ih, hh = self.counts[index]
        values = [getattr(self, f"w{index}_{j}") for j in range(ih + hh + 1)]
        return tuple(values[:ih]), tuple(values[ih:-1]), values[-1]

    def _direction(self, x: torch.Tensor, index: int, h: torch.Tensor, c: torch.Tensor, reverse: bool
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One layer and direction over ``x`` ``(T, B, in)`` from ``h``, ``c`` ``(B, H)``: outputs ``(T, B, H)``."""
        ih, hh, bias = self._tensors(index)
        steps, batch = x.shape[:2]
        pre = (_apply(x.reshape(steps * batch, -1), ih) + bias).reshape(steps, batch, -1)
        hh_t = tuple(t.t().contiguous() for t in hh)  # (H, k), (k, 4H) or (H, 4H)
        outputs = [None] * steps
        for t in reversed(range(steps)) if reverse else range(steps):
            low = h if len(hh_t) == 1 else h @ hh_t[1]  # (B, k) = h V_hh*^T, or h itself for a dense W_hh
            gates = torch.addmm(pre[t], low, hh_t[0])
            i, f, g, o = gates.chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outputs[t] = h
        return torch.stack(outputs), h, c

    def forward(self, input: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        if isinstance(input, nn.utils.rnn.PackedSequence):
            raise InferenceFormError("the inference form of a factorized nn.LSTM takes padded tensors, not a "
                                     "PackedSequence; run the factorized model itself on packed input")
        unbatched = input.dim() == 2
        x = input.unsqueeze(1) if unbatched else input.transpose(0, 1) if self.batch_first else input
        states = self.num_layers * self.directions
        if hx is None:
            zeros = x.new_zeros(states, x.shape[1], self.hidden_size)
            h0, c0 = zeros, zeros
        else:
            h0, c0 = (s.unsqueeze(1) for s in hx) if unbatched else hx
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(self.directions):
                index = layer * self.directions + direction
                out, h, c = self._direction(x, index, h0[index], c0[index], reverse=direction == 1)
                outputs.append(out)
                h_n.append(h)
                c_n.append(c)
            x = torch.cat(outputs, dim=-1) if self.directions == 2 else outputs[0]
        h_n, c_n = torch.stack(h_n), torch.stack(c_n)
        if unbatched:
            return x.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
        return (x.transpose(0, 1) if self.batch_first else x), (h_n, c_n)

    def extra_repr(self) -> str:
        return f"hidden_size={self.hidden_size}, num_layers={self.num_layers}, directions={self.directions}"


def inference_form(model: nn.Module) -> nn.Module:
    """A copy of ``model`` for inference (module docstring): factorized ``nn.LSTM`` layers as :class:`LowRankLSTM`,
    every other parametrized weight built once; ``model`` itself is left as it is."""
    fast = copy.deepcopy(model).eval()
    for name, module in list(fast.named_modules()):
        if not parametrize.is_parametrized(module):
            continue
        if isinstance(module, nn.LSTM) and module.proj_size == 0:
            parent, _, child = name.rpartition(".")
            if name:
                setattr(fast.get_submodule(parent), child, LowRankLSTM(module))
            else:
                fast = LowRankLSTM(module)
            continue
        own_parametrized_class(module)  # a copy shares its class with the original: remove from its own
        for attribute in list(module.parametrizations):
            parametrize.remove_parametrizations(module, attribute, leave_parametrized=True)
    return fast
