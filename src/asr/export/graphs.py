"""The recognizer as two exportable steps: an encoder chunk step and a decoder step with hard MoChA attention.

Both are plain ``nn.Module`` s whose ``forward`` takes and returns tensors only (no Python control flow on data), so
that tracing records them whole and the exported pair decodes streaming audio exactly as
:class:`asr.streaming.StreamingRecognizer` does:

* :class:`EncoderStep`: a chunk of normalized features ``(1, t, F)``, ``t`` a multiple of the encoder's time
  reduction (the caller buffers the rest), and the LSTM states ``(L, 1, H)`` -> the chunk's encoder frames
  ``(1, t / R, D)``, their two MoChA key projections ``(1, t / R, A)`` and the new states.
* :class:`DecoderStep`: previous tokens ``(N,)``, the state of ``N`` hypotheses and the encoder output so far
  ``(1, T, D)`` with its keys -> log-probabilities ``(N, V)`` and the new state (the paper's decoder step, with
  MoChA's hard monotonic attention of :meth:`asr.model.mocha.MoChA.hard`).

``kernels=False`` writes every operation in standard ONNX-exportable form (a factorized LSTM layer as its input
projection ``V_x`` and an LSTM on ``U`` with the recurrent matrix ``U V_h`` rebuilt: the ONNX ``LSTM`` operator
takes one dense recurrent matrix). ``kernels=True`` calls the model's own inference path, which runs the C++
kernels of :mod:`asr.kernels` (factorized and sparse recurrences, the fused decoder step): the form for TorchScript
with those kernels as custom operators.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from asr.data.tokenizer import BOS_ID, PAD_ID
from asr.model import fast_decode
from asr.model.asr_model import AsrModel
from asr.model.lowrank_lstm import low_rank_factors


def _layer_weights(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(W_in, W_hh, V_x)`` of a :class:`asr.model.lstm.ConcatLSTM` for the standard LSTM operator: a dense
    kernel gives ``(W_ih (4H, in), W_hh (4H, H), None)``; a rank-``k`` one ``(U (4H, k), U V_h (4H, H), V_x (k, in))``
    (the input runs through ``V_x`` first)."""
    factors = low_rank_factors(layer)
    if factors is None:
        w_ih, w_hh = layer.kernel.detach().split([layer.input_size, layer.hidden_size], dim=1)
        return w_ih.contiguous(), w_hh.contiguous(), None
    u, v = (t.detach() for t in factors)
    v_x, v_h = v.split([layer.input_size, layer.hidden_size], dim=1)
    return u.contiguous(), (u @ v_h).contiguous(), v_x.contiguous()


class _OnnxLSTM(nn.Module):
    """One encoder layer in standard operators: ``(1, t, in)`` and ``(h, c)`` ``(1, 1, H)`` each -> ``(1, t, H)``,
    ``(h, c)``."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        w_in, w_hh, v_x = _layer_weights(layer)
        self.register_buffer("w_in", w_in)
        self.register_buffer("w_hh", w_hh)
        self.register_buffer("bias", layer.bias.detach().clone())
        self.register_buffer("zero_bias", torch.zeros_like(layer.bias.detach()))
        self.register_buffer("v_x", v_x if v_x is not None else torch.empty(0))
        self.factorized = v_x is not None

    def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.factorized:
            x = torch.matmul(x, self.v_x.t())
        out, h, c = torch.lstm(x, (h, c), [self.w_in, self.w_hh, self.bias, self.zero_bias], True, 1, 0.0, False,
                               False, True)
        return out, h, c


class EncoderStep(nn.Module):
    """Encode one chunk: ``features`` ``(1, t, F)`` (``t`` a multiple of :attr:`reduction`), ``h``, ``c``
    ``(L, 1, H)`` -> ``memory`` ``(1, t / R, D)``, ``mono_keys``, ``chunk_keys`` ``(1, t / R, A)``, ``h``, ``c``."""

    def __init__(self, model: AsrModel, kernels: bool):
        super().__init__()
        encoder = model.encoder
        self.kernels = kernels
        self.encoder = encoder
        self.attention = model.decoder.attention
        self.layers = nn.ModuleList(_OnnxLSTM(layer) for layer in encoder.layers) if not kernels else None
        self.reduction = encoder.reduction
        self.eval()  # an exporter restores this mode on the model's modules after tracing

    def forward(self, features: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        encoder = self.encoder
        x = features.reshape(1, -1, features.shape[2] * encoder.input_stack)
        fused = self.kernels and encoder.fused_norm_pool(x)
        hs, cs = [], []
        for i, (norm, p) in enumerate(zip(encoder.norms, encoder.pool, strict=True)):
            if self.kernels:
                x, (h_i, c_i) = encoder.layers[i](x, (h[i], c[i]))
                x = encoder.norm_pool(i, x, fused)
            else:
                x, h_i, c_i = self.layers[i](x, h[i : i + 1], c[i : i + 1])
                h_i, c_i = h_i[0], c_i[0]
                x = norm(x)
                if p > 1:  # whole groups only: the caller's chunks are multiples of the reduction
                    x = x.reshape(1, -1, p, x.shape[2]).amax(dim=2)
            hs.append(h_i)
            cs.append(c_i)
        mono, chunk = self.attention.keys(x)
        return x, mono, chunk, torch.stack(hs), torch.stack(cs)

    def initial_state(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero ``(h, c)``, each ``(L, 1, H)``."""
        zeros = torch.zeros(len(self.encoder.layers), 1, self.encoder.hidden_size)
        return zeros, zeros.clone()


def _detached(plan: fast_decode.StepPlan | None) -> fast_decode.StepPlan | None:
    """``plan`` with every tensor detached from autograd (a trace keeps them as constants)."""
    if plan is None:
        return None

    def detach(value):
        if isinstance(value, torch.Tensor):
            return value.detach()
        if isinstance(value, (list, tuple)):
            return type(value)(detach(v) for v in value)
        return value

    return dataclasses.replace(plan, **{f.name: detach(getattr(plan, f.name)) for f in dataclasses.fields(plan)})


class DecoderStep(nn.Module):
    """One hard-attention decoder step for ``N`` hypotheses of one utterance.

    Inputs: ``tokens`` ``(N,)`` int64, ``h``, ``c`` ``(N, H)``, ``context`` ``(N, D)``, ``boundary`` ``(N,)`` int64
    (the last chosen frame, 0 at the start), ``memory`` ``(1, T, D)``, ``mono_keys``, ``chunk_keys`` ``(1, T, A)``
    and ``fallback`` ``(1,)`` bool (MoChA's fallback of :meth:`asr.model.mocha.MoChA.hard`, only once the input has
    ended). Outputs: ``log_probs`` ``(N, V)`` and the new ``h``, ``c``, ``context``, ``boundary`` (``T`` where the
    attention ran off the end: nothing fired yet).
    """

    def __init__(self, model: AsrModel, kernels: bool):
        super().__init__()
        decoder = model.decoder
        self.decoder = decoder
        self.kernels = kernels
        self.plan = _detached(fast_decode.step_plan(decoder)) if kernels else None
        if kernels and self.plan is None:
            raise ValueError("the C++ decoder step does not apply to this model (see asr.model.fast_decode): export "
                             "it with kernels=False")
        excluded = torch.zeros(decoder.vocab_size)
        excluded[[PAD_ID, BOS_ID]] = -math.inf
        self.register_buffer("excluded", excluded)
        self.eval()

    def forward(self, tokens: torch.Tensor, h: torch.Tensor, c: torch.Tensor, context: torch.Tensor,
                boundary: torch.Tensor, memory: torch.Tensor, mono_keys: torch.Tensor, chunk_keys: torch.Tensor,
                fallback: torch.Tensor) -> tuple[torch.Tensor, ...]:
        rows = tokens.shape[0]
        memory, mono_keys, chunk_keys = (t.expand(rows, -1, -1) for t in (memory, mono_keys, chunk_keys))
        if self.kernels:
            return self._kernel_step(tokens, h, c, context, boundary, memory, mono_keys, chunk_keys, fallback)
        decoder = self.decoder
        h, c = decoder.cell(torch.cat([decoder.embedding(tokens), context], dim=-1), (h, c))
        weights_index, weights, boundary = self._hard(mono_keys, chunk_keys, h, boundary, fallback)
        chunk_memory = memory.gather(1, weights_index.unsqueeze(-1).expand(-1, -1, memory.shape[2]))  # (N, w, D)
        context = (weights.unsqueeze(-1) * chunk_memory).sum(dim=1)
        logits = decoder._logits(h, context) + self.excluded
        return torch.log_softmax(logits, dim=-1), h, c, context, boundary

    def _kernel_step(self, tokens, h, c, context, boundary, memory, mono_keys, chunk_keys, fallback):
        """The C++ step (``decode_step`` of ``asr/kernels/csrc/decode_step.cpp``) on the model's weights (the live
        runtime of :mod:`asr.runtime`; the TorchScript export calls the operator from
        :class:`asr.export.bundle.KernelBundle` instead)."""
        plan = self.plan
        plan.fallback = bool(fallback)
        mask = torch.ones_like(memory[:, :, 0], dtype=torch.bool)
        log_probs, h, c, context, boundary, _ = fast_decode.fast_step(plan, memory, (mono_keys, chunk_keys), mask,
                                                                      tokens, h, c, context, boundary)
        return log_probs, h, c, context, boundary

    def _hard(self, mono_keys: torch.Tensor, chunk_keys: torch.Tensor, query: torch.Tensor, boundary: torch.Tensor,
              fallback: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`asr.model.mocha.MoChA.hard` without data-dependent control flow: the chunk's frame indices
        ``(N, w)`` (clamped into the input), its softmax weights ``(N, w)`` (zero where not a frame, all zero where
        nothing was chosen) and the new boundary ``(N,)``."""
        attention = self.decoder.attention
        frames = mono_keys.shape[1]
        p = torch.sigmoid(attention.monotonic_energy(mono_keys, query))  # (N, T)
        positions = torch.arange(frames, device=query.device).unsqueeze(0)  # (1, T)
        allowed = positions >= boundary.unsqueeze(1)
        stop = allowed & (p >= 0.5)
        found = stop.any(dim=-1)
        end = torch.full_like(boundary, 0) + frames
        chosen = torch.where(found, stop.to(torch.float32).argmax(dim=-1), end)
        ahead = positions > boundary.unsqueeze(1)
        rescue = fallback & ~found & ahead.any(dim=-1)
        chosen = torch.where(rescue, p.masked_fill(~ahead, -1.0).argmax(dim=-1), chosen)
        found = found | rescue
        index = chosen.unsqueeze(1) + torch.arange(1 - attention.chunk_size, 1, device=query.device)  # (N, w)
        valid = (index >= 0) & (index < frames) & found.unsqueeze(1)
        safe = torch.minimum(index.clamp(min=0), end.unsqueeze(1) - 1).clamp(min=0)
        keys = chunk_keys.gather(1, safe.unsqueeze(-1).expand(-1, -1, chunk_keys.shape[2]))  # (N, w, A)
        u = attention.chunk_energy(keys, query).masked_fill(~valid, -1e30)
        weights = torch.softmax(u, dim=-1) * valid.to(u.dtype)
        return safe, weights, chosen
