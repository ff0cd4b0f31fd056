"""Monotonic chunkwise attention (MoChA; Chiu & Raffel, ICLR 2018), split by phase.

* :meth:`MoChA.expected` -- training: the expected monotonic alignment ``alpha`` computed in
  log space (exact, no clamped cumulative product), then the chunkwise soft attention
  ``beta`` over a window of ``chunk_size`` frames ending at each possible boundary.
* :meth:`MoChA.hard` -- inference: hard monotonic attention. From its last boundary
  ``t_{i-1}`` it moves left to right and stops at the first frame ``j >= t_{i-1}`` with
  ``p_ij >= 0.5``; the context is a softmax over the chunk ``[j - w + 1, j]``. It never looks
  before its last boundary, nor after the chosen one, which is what makes streaming possible.

Energies: monotonic ``e_ij = g (v / |v|)^T tanh(W_k h_j + W_q s_i + b) + r`` (weight-normalized,
with ``r`` initialized to ``init_r = -4``), with Gaussian pre-sigmoid noise in training; chunk
``u_ij = v_c^T tanh(W_ck h_j + W_cq s_i + b_c)``.

Shapes: ``B`` batch, ``T`` encoder frames, ``D`` encoder size, ``Q`` query (decoder state) size,
``A`` attention size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

_LOG_TINY = math.log(1e-30)


def exclusive_cumsum(x: torch.Tensor) -> torch.Tensor:
    """``out[..., j] = sum_{k < j} x[..., k]`` along the last dimension."""
    return F.pad(torch.cumsum(x, dim=-1), (1, 0))[..., :-1]


def moving_sum(x: torch.Tensor, back: int, forward: int) -> torch.Tensor:
    """``out[..., j] = sum_{k = j - back}^{j + forward} x[..., k]`` (zero outside), by summing
    shifted copies directly: a difference of cumulative sums cancels catastrophically."""
    total = x.clone()
    length = x.shape[-1]
    for s in range(1, back + 1):
        if s < length:
            total[..., s:] += x[..., :-s]
    for s in range(1, forward + 1):
        if s < length:
            total[..., :-s] += x[..., s:]
    return total


def expected_alignment(log_p: torch.Tensor, log_1mp: torch.Tensor, alpha_prev: torch.Tensor) -> torch.Tensor:
    """Expected monotonic alignment of one output step, exactly, in log space.

    ``log alpha_ij = log p_ij + L_ij + logcumsumexp_k(log max(alpha_{i-1,k}, 1e-30) - L_ik)`` with
    ``L_i`` the exclusive cumulative sum of ``log(1 - p_i)``.

    Args:
        log_p, log_1mp: ``log p`` and ``log(1 - p)``, ``(B, T)`` (``log_p = -inf``, ``log_1mp = 0`` at padding).
        alpha_prev: ``(B, T)``, the previous step's alignment (one-hot on frame 0 before the first step).
    Returns:
        ``alpha`` ``(B, T)``: non-negative, each row summing to at most 1.
    """
    # ``L_ij - L_ik`` is a difference of two prefix sums that reach -1e5 and beyond for long inputs
    # with saturated energies; in float32 its rounding error (~1e-2) made rows sum above 1, so the
    # (cheap, B x T) recursion runs in float64 (MPS has none).
    compute = log_p.dtype if log_p.device.type == "mps" else torch.float64
    cum = exclusive_cumsum(log_1mp.to(compute))
    log_prev = torch.log(alpha_prev.to(compute).clamp(min=1e-30))
    alpha = torch.exp(log_p.to(compute) + cum + torch.logcumsumexp(log_prev - cum, dim=-1))
    return alpha.to(log_p.dtype)


def chunkwise_weights(alpha: torch.Tensor, u: torch.Tensor, mask: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Chunkwise soft attention given the expected boundaries ``alpha``.

    ``beta_ij = sum_{k=j}^{j+w-1} alpha_ik exp(u_ij) / sum_{l=k-w+1}^{k} exp(u_il)``.

    Each chunk's softmax is taken over its own ``w`` frames (stable for any range of ``u``).

    Args:
        alpha: ``(B, T)`` expected alignment; u: ``(B, T)`` chunk energies; mask: ``(B, T)`` bool, True on frames.
    Returns:
        ``beta`` ``(B, T)`` with the same total mass per row as ``alpha``.
    """
    w = chunk_size
    lowest = torch.finfo(u.dtype).min
    u = u.masked_fill(~mask, lowest)
    windows = F.pad(u, (w - 1, 0), value=lowest).unfold(-1, w, 1)  # (B, T, w): u at frames k - w + 1 .. k
    shares = torch.softmax(windows, dim=-1) * alpha.unsqueeze(-1)  # alpha_k spread over the chunk ending at k
    # frame j gets share w - 1 - d of the chunk ending at k = j + d (no such chunk when d >= T)
    beta = sum(F.pad(shares[..., d:, w - 1 - d], (0, d)) for d in range(min(w, u.shape[-1])))
    return beta * mask


class MoChA(nn.Module):
    """Monotonic chunkwise attention with chunk width ``chunk_size`` (``w``)."""

    def __init__(self, key_size: int, query_size: int, attention_size: int, chunk_size: int = 4,
                 init_r: float = -4.0, init_gain: float = 1.0, noise_std: float = 2.0, hard_fallback: bool = False):
        """``hard_fallback``: see :meth:`hard` (False: the original MoChA inference); a decoding setting
        (``decoding.hard_fallback``), set again by ``AsrModel.set_decoding``."""
        super().__init__()
        self.chunk_size = chunk_size
        self.hard_fallback = hard_fallback
        self.noise_std = noise_std
        self.mono_key = nn.Linear(key_size, attention_size)
        self.mono_query = nn.Linear(query_size, attention_size, bias=False)
        self.mono_v = nn.Parameter(torch.randn(attention_size) / math.sqrt(attention_size))
        self.mono_gain = nn.Parameter(torch.tensor(float(init_gain)))
        self.mono_r = nn.Parameter(torch.tensor(float(init_r)))
        self.chunk_key = nn.Linear(key_size, attention_size)
        self.chunk_query = nn.Linear(query_size, attention_size, bias=False)
        self.chunk_v = nn.Linear(attention_size, 1, bias=False)

    def keys(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Query-independent projections of the encoder output ``(B, T, D)``, computed once: 2 x ``(B, T, A)``."""
        return self.mono_key(memory), self.chunk_key(memory)

    def monotonic_energy(self, mono_keys: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """``e`` ``(B, T)`` from keys ``(B, T, A)`` and the decoder state ``query`` ``(B, Q)``."""
        v = self.mono_gain * self.mono_v / self.mono_v.norm()
        return torch.tanh(mono_keys + self.mono_query(query).unsqueeze(1)) @ v + self.mono_r

    def chunk_energy(self, chunk_keys: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """``u`` ``(B, T)`` from keys ``(B, T, A)`` and ``query`` ``(B, Q)``."""
        return self.chunk_v(torch.tanh(chunk_keys + self.chunk_query(query).unsqueeze(1))).squeeze(-1)

    def expected(self, keys: tuple[torch.Tensor, torch.Tensor], query: torch.Tensor, alpha_prev: torch.Tensor,
                 mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training step: ``(alpha, beta)``, each ``(B, T)``; context = ``beta @ memory``."""
        energy = self.monotonic_energy(keys[0], query)
        if self.training and self.noise_std > 0:
            energy = energy + self.noise_std * torch.randn_like(energy)
        log_p = F.logsigmoid(energy).masked_fill(~mask, -math.inf)
        log_1mp = F.logsigmoid(-energy).masked_fill(~mask, 0.0)
        alpha = expected_alignment(log_p, log_1mp, alpha_prev)
        beta = chunkwise_weights(alpha, self.chunk_energy(keys[1], query), mask, self.chunk_size)
        return alpha, beta

    def hard(self, keys: tuple[torch.Tensor, torch.Tensor], query: torch.Tensor, boundary: torch.Tensor,
             mask: torch.Tensor, fallback: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Inference step: ``(weights (B, T), new boundary (B,))``.

        ``boundary`` ``(B,)`` is the last chosen frame (0 before the first step). Where no frame
        at or after it reaches ``p >= 0.5`` the weights are all zero (zero context) and the new
        boundary is ``T``: the attention has run off the end of the input. With ``fallback``
        (default: ``hard_fallback``), it stops instead at the frame of highest ``p`` at or after the
        boundary, strictly after it (an improvement over the paper's MoChA: a weakly trained energy that never reaches
        0.5 deleted the rest of the utterance). Streaming passes ``fallback`` only once the input has
        ended, since the fallback needs every remaining frame.
        """
        batch, frames = keys[0].shape[:2]
        start = min(int(boundary.min()), frames) if batch else frames  # no row may stop before this frame
        if start >= frames:  # every row has run off the end already
            return keys[1].new_zeros(batch, frames), torch.full_like(boundary, frames)
        # energies only from the earliest boundary on: the frames before it can never be chosen
        p = torch.sigmoid(self.monotonic_energy(keys[0][:, start:], query))  # (B, T - start)
        positions = torch.arange(start, frames, device=query.device)
        allowed = mask[:, start:] & (positions.unsqueeze(0) >= boundary.unsqueeze(1))
        stop = allowed & (p >= 0.5)
        found = stop.any(dim=-1)
        chosen = torch.where(found, start + stop.float().argmax(dim=-1), torch.full_like(boundary, frames))
        if self.hard_fallback if fallback is None else fallback:
            ahead = allowed & (positions.unsqueeze(0) > boundary.unsqueeze(1))  # strictly ahead: no loops in place
            rescue = ~found & ahead.any(dim=-1)
            chosen = torch.where(rescue, start + p.masked_fill(~ahead, -1.0).argmax(dim=-1), chosen)
            found = found | rescue
        # the chunk energy only on the w frames of each chosen chunk [j - w + 1, j]
        index = chosen.unsqueeze(1) + torch.arange(1 - self.chunk_size, 1, device=query.device)  # (B, w)
        safe = index.clamp(0, frames - 1)
        valid = (index >= 0) & (index < frames) & found.unsqueeze(1) & mask.gather(1, safe)
        chunk_keys = keys[1].gather(1, safe.unsqueeze(-1).expand(-1, -1, keys[1].shape[-1]))  # (B, w, A)
        u = self.chunk_energy(chunk_keys, query).masked_fill(~valid, -math.inf)
        chunk_weights = torch.softmax(u, dim=-1).nan_to_num(0.0)
        weights = chunk_weights.new_zeros(batch, frames).scatter_add(1, safe, chunk_weights)
        return weights, chosen
