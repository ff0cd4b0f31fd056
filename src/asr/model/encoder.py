"""Streaming encoder: unidirectional LSTM layers with max-pool time reduction between the first ones.

The paper (section 2.1) reduces time by 8 with max-pool layers interleaved between the first
four encoder LSTM layers; ``pool`` lists the factor after each layer (missing = 1), e.g.
``[2, 2, 2]`` for 8 or ``[2, 2]`` for 4. Pooling takes whole groups only (a trailing partial
group is dropped offline and buffered when streaming), so offline and chunked outputs agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.modules import module as module_hooks

from asr.model import lowrank_lstm
from asr.model.lstm import ConcatLSTM


@dataclass
class EncoderState:
    """What a streaming encoder carries from one chunk to the next."""

    lstm: list[tuple[torch.Tensor, torch.Tensor] | None] = field(default_factory=list)
    leftover: list[torch.Tensor | None] = field(default_factory=list)  # frames waiting for a full pool group
    input_leftover: torch.Tensor | None = None  # input frames waiting for a full stack


def _hooked_globally() -> bool:
    return bool(module_hooks._global_forward_hooks or module_hooks._global_forward_pre_hooks)


def _plain_norm(norm: nn.Module, size: int) -> bool:
    """Whether the C++ ``norm_pool`` computes ``norm``: no norm, or an affine ``nn.LayerNorm`` over the last ``size``
    features, and no forward hooks that would miss its call."""
    if norm._forward_hooks or norm._forward_pre_hooks or _hooked_globally():
        return False
    if type(norm) is nn.Identity:
        return True
    return (type(norm) is nn.LayerNorm and tuple(norm.normalized_shape) == (size,) and norm.elementwise_affine
            and norm.bias is not None)


class Encoder(nn.Module):
    """Stack of :class:`ConcatLSTM` layers; input ``(B, T, F)`` -> output ``(B, T / prod(pool), H)``."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, pool: list[int] | None = None,
                 dropout: float = 0.0, input_stack: int = 1, layer_norm: bool = False):
        """``input_stack`` > 1 stacks that many consecutive input frames into one before the first
        layer (another time reduction, applied before any LSTM; 1 = the paper's encoder).
        ``layer_norm`` normalizes every layer's output per frame: without it, the first updates
        saturated the LSTMs (outputs near +-1, gradients to the lower layers ~1e-3 of their start)
        and CTC or attention training sat on a plateau for epochs on the embedded corpus."""
        super().__init__()
        if input_stack < 1:
            raise ValueError(f"model.encoder.input_stack must be >= 1, got {input_stack}")
        self.input_stack = input_stack
        pool = list(pool or [])
        if len(pool) > num_layers:
            raise ValueError(f"model.encoder.pool has {len(pool)} factors for {num_layers} layers")
        if any(p < 1 for p in pool):
            raise ValueError(f"model.encoder.pool factors must be >= 1, got {pool}")
        self.pool = pool + [1] * (num_layers - len(pool))
        self.layers = nn.ModuleList(
            ConcatLSTM(input_size * input_stack if i == 0 else hidden_size, hidden_size) for i in range(num_layers)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(hidden_size) if layer_norm else nn.Identity()
                                   for _ in range(num_layers))
        self.dropout = nn.Dropout(dropout)
        self.hidden_size = hidden_size

    @property
    def reduction(self) -> int:
        """Total time reduction factor."""
        out = self.input_stack
        for p in self.pool:
            out *= p
        return out

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Encoder frames for input frame counts ``lengths`` ``(B,)``."""
        lengths = torch.div(lengths, self.input_stack, rounding_mode="floor")
        for p in self.pool:
            lengths = torch.div(lengths, p, rounding_mode="floor")
        return lengths

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` ``(B, T, F)``, ``lengths`` ``(B,)`` -> encodings ``(B, T', H)`` and their lengths ``(B,)``."""
        x = self._stack(x)
        fused = self.fused_norm_pool(x)
        for i, layer in enumerate(self.layers):
            x, _ = layer(x)
            x = self.dropout(self.norm_pool(i, x, fused))
        return x, self.output_lengths(lengths)

    def norm_pool(self, index: int, x: torch.Tensor, fused: bool | None = None) -> torch.Tensor:
        """Layer ``index``'s LayerNorm (if any) and max-pool over whole groups of its factor: ``(B, T, H)`` ->
        ``(B, T // p, H)``. Where :meth:`fused_norm_pool` holds (``fused``: its answer, asked by the caller once per
        forward) one C++ pass (``norm_pool`` of ``asr/kernels/csrc/decode_step.cpp``; equal up to float rounding)."""
        norm, p = self.norms[index], self.pool[index]
        if self.fused_norm_pool(x) if fused is None else fused:
            if type(norm) is nn.LayerNorm:
                return torch.ops.shrinkml_lowrank.norm_pool(x, norm.weight, norm.bias, norm.eps, p)
            if p > 1:
                return torch.ops.shrinkml_lowrank.norm_pool(x, None, None, 0.0, p)
            return x
        x = norm(x)
        if p > 1:
            usable = x.shape[1] // p * p
            x = x[:, :usable].reshape(x.shape[0], usable // p, p, x.shape[2]).amax(dim=2)
        return x

    def fused_norm_pool(self, x: torch.Tensor) -> bool:
        """Whether :meth:`norm_pool` runs as one C++ pass on the layers' outputs like ``x``: gradients off, CPU
        float32, the extension built (:func:`asr.model.lowrank_lstm.backend`), and every norm none or an affine
        ``nn.LayerNorm`` over the features without forward hooks."""
        if torch.is_grad_enabled() or x.device.type != "cpu" or x.dtype != torch.float32:
            return False
        if not all(_plain_norm(norm, self.hidden_size) for norm in self.norms):
            return False
        return lowrank_lstm._uses_extension(*(p for norm in self.norms for p in norm.parameters()))

    def _stack(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T, F)`` -> ``(B, T // s, s F)``: whole groups of ``s = input_stack`` frames side by side."""
        s = self.input_stack
        if s == 1:
            return x
        usable = x.shape[1] // s * s
        return x[:, :usable].reshape(x.shape[0], usable // s, s * x.shape[2])

    def initial_state(self) -> EncoderState:
        return EncoderState([None] * len(self.layers), [None] * len(self.layers))

    @torch.no_grad()
    def stream(self, chunk: torch.Tensor, state: EncoderState) -> tuple[torch.Tensor, EncoderState]:
        """Encode the next ``chunk`` ``(B, t, F)`` of a stream; returns the new encoder frames
        ``(B, t', H)`` (possibly none) and the state for the next chunk."""
        x = chunk if state.input_leftover is None else torch.cat([state.input_leftover, chunk], dim=1)
        usable = x.shape[1] // self.input_stack * self.input_stack
        new = EncoderState([], [], x[:, usable:] if usable < x.shape[1] else None)
        x = self._stack(x[:, :usable])
        for layer, norm, p, lstm_state, leftover in zip(self.layers, self.norms, self.pool, state.lstm,
                                                        state.leftover, strict=True):
            if x.shape[1] > 0:
                x, lstm_state = layer(x, lstm_state)
                x = norm(x)
            else:  # nothing new reached this layer (empty chunk, or all frames buffered below)
                x = x.new_zeros(x.shape[0], 0, layer.hidden_size)
            new.lstm.append(lstm_state)
            if p > 1:
                if leftover is not None:
                    x = torch.cat([leftover, x], dim=1)
                usable = x.shape[1] // p * p
                new.leftover.append(x[:, usable:] if usable < x.shape[1] else None)
                x = x[:, :usable].reshape(x.shape[0], usable // p, p, x.shape[2]).amax(dim=2)
            else:
                new.leftover.append(None)
        return x, new
