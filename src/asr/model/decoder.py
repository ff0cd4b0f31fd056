"""LSTM decoder with MoChA attention: teacher forcing, batched greedy decoding and beam search.

One step ``i`` (``y_0`` = start of sentence, ``c_0 = 0``):
``s_i = LSTM([E y_{i-1} ; c_{i-1}], s_{i-1})``, attention on ``s_i`` gives ``c_i``,
``logits_i = W_out tanh(W_pre [s_i ; c_i])``.
Training uses MoChA's expected attention; decoding its hard monotonic attention.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from asr.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from asr.model.fast_decode import StepPlan, fast_greedy, fast_step, hypotheses, step_plan
from asr.model.lstm import ConcatLSTMCell
from asr.model.mocha import MoChA


@dataclass
class DecoderState:
    """Everything one hypothesis carries between steps (rows = hypotheses)."""

    h: torch.Tensor  # (N, H)
    c: torch.Tensor  # (N, H)
    context: torch.Tensor  # (N, D)
    boundary: torch.Tensor  # (N,) last hard-attention boundary

    def select(self, index: torch.Tensor) -> DecoderState:
        return DecoderState(self.h[index], self.c[index], self.context[index], self.boundary[index])


class AttentionDecoder(nn.Module):
    """Decoder over encoder output of size ``memory_size`` into ``vocab_size`` BPE ids."""

    sparse_min_sparsity: float | None = None  # the C++ step runs a weight this sparse on sparse kernels (fast_decode)

    def __init__(self, vocab_size: int, memory_size: int, embedding_size: int = 128, hidden_size: int = 256,
                 attention_size: int = 256, pre_output_size: int = 256, chunk_size: int = 4, init_r: float = -4.0,
                 init_gain: float = 1.0, noise_std: float = 2.0, dropout: float = 0.0, hard_fallback: bool = False):
        super().__init__()
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(vocab_size, embedding_size)
        self.cell = ConcatLSTMCell(embedding_size + memory_size, hidden_size)
        self.attention = MoChA(memory_size, hidden_size, attention_size, chunk_size, init_r, init_gain, noise_std,
                               hard_fallback)
        self.pre_output = nn.Linear(hidden_size + memory_size, pre_output_size)
        self.output = nn.Linear(pre_output_size, vocab_size)
        self.dropout = nn.Dropout(dropout)

    def _logits(self, h: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.output(self.dropout(torch.tanh(self.pre_output(torch.cat([h, context], dim=-1)))))

    def decode_log_probs(self, h: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Log-probabilities ``(N, V)`` for decoding: padding and start-of-sentence ids are never
        outputs (they are not training targets), so they get ``-inf``."""
        logits = self._logits(h, context)
        logits[:, [PAD_ID, BOS_ID]] = -math.inf
        return torch.log_softmax(logits, dim=-1)

    def forward(self, memory: torch.Tensor, memory_mask: torch.Tensor, previous_tokens: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced logits and the mass of MoChA's expected alignment at every step.

        Args:
            memory: encoder output ``(B, T, D)``; memory_mask: ``(B, T)`` bool.
            previous_tokens: ``(B, U)`` inputs (start-of-sentence id, then the targets shifted right).
        Returns:
            logits ``(B, U, V)`` and alignment mass ``sum_j alpha_ij`` ``(B, U)``: below 1 where the
            expected boundary may run past the last frame (the context then shrinks by that factor,
            which hard attention, always a full softmax over its chunk, never does).
        """
        batch, frames, _ = memory.shape
        keys = self.attention.keys(memory)
        h, c = self.cell.initial_state(batch, memory)
        context = memory.new_zeros(batch, memory.shape[2])
        alpha = memory.new_zeros(batch, frames)
        alpha[:, 0] = 1.0
        embedded = self.dropout(self.embedding(previous_tokens))
        states, contexts, masses = [], [], []
        for i in range(previous_tokens.shape[1]):
            h, c = self.cell(torch.cat([embedded[:, i], context], dim=-1), (h, c))
            alpha, beta = self.attention.expected(keys, h, alpha, memory_mask)
            masses.append(alpha.sum(dim=-1))
            context = torch.bmm(beta.unsqueeze(1), memory).squeeze(1)
            states.append(h)
            contexts.append(context)
        # the output layers do not feed back into the recurrence: one batched product over all steps
        logits = self._logits(torch.stack(states, dim=1), torch.stack(contexts, dim=1))
        return logits, torch.stack(masses, dim=1)

    # -- hard-attention decoding -------------------------------------------------------------
    def initial_state(self, memory: torch.Tensor) -> DecoderState:
        batch = memory.shape[0]
        h, c = self.cell.initial_state(batch, memory)
        zeros = torch.zeros(batch, dtype=torch.long, device=memory.device)
        return DecoderState(h, c, memory.new_zeros(batch, memory.shape[2]), zeros)

    def step(self, memory: torch.Tensor, keys: tuple[torch.Tensor, torch.Tensor], memory_mask: torch.Tensor,
             tokens: torch.Tensor, state: DecoderState, plan: StepPlan | None = None
             ) -> tuple[torch.Tensor, DecoderState, torch.Tensor]:
        """One hard-attention step for ``N`` rows: previous ``tokens`` ``(N,)`` -> log-probabilities
        ``(N, V)``, the new state and the attention weights ``(N, T)``.

        With a ``plan`` (:meth:`inference_plan`) the step runs as one C++ operator with the same results.
        """
        if plan is not None:
            log_probs, h, c, context, boundary, weights = fast_step(
                plan, memory, keys, memory_mask, tokens, state.h, state.c, state.context, state.boundary)
            return log_probs, DecoderState(h, c, context, boundary), weights
        h, c = self.cell(torch.cat([self.embedding(tokens), state.context], dim=-1), (state.h, state.c))
        weights, boundary = self.attention.hard(keys, h, state.boundary, memory_mask)
        context = torch.bmm(weights.unsqueeze(1), memory).squeeze(1)
        return self.decode_log_probs(h, context), DecoderState(h, c, context, boundary), weights

    def inference_plan(self) -> StepPlan | None:
        """The weights of the C++ inference step (:mod:`asr.model.fast_decode`), or None where it does
        not apply (training, gradients on, another device or dtype, modules it does not know)."""
        return step_plan(self)

    @torch.no_grad()
    def greedy(self, memory: torch.Tensor, memory_lengths: torch.Tensor, max_len: int) -> list[list[int]]:
        """Batched greedy decoding with hard monotonic attention; token ids without start/end ids.

        With a plan (:meth:`inference_plan`) the whole loop runs as one C++ call (:func:`fast_greedy`), same results.
        """
        batch, frames, _ = memory.shape
        mask = torch.arange(frames, device=memory.device).unsqueeze(0) < memory_lengths.unsqueeze(1)
        keys = self.attention.keys(memory)
        plan = self.inference_plan()
        if plan is not None:
            return hypotheses(fast_greedy(plan, memory, keys, mask, max_len)[0])
        return self.greedy_steps(memory, keys, mask, max_len)

    def greedy_steps(self, memory: torch.Tensor, keys: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor,
                     max_len: int, plan: StepPlan | None = None) -> list[list[int]]:
        """The greedy loop in Python, one :meth:`step` at a time (on the C++ step with a ``plan``): ``memory``
        ``(B, T, D)``, its ``keys`` and ``mask`` ``(B, T)`` -> token ids per row."""
        batch = memory.shape[0]
        state = self.initial_state(memory)
        tokens = torch.full((batch,), BOS_ID, dtype=torch.long, device=memory.device)
        finished = torch.zeros(batch, dtype=torch.bool, device=memory.device)
        out: list[list[int]] = [[] for _ in range(batch)]
        for _ in range(max_len):
            log_probs, state, _ = self.step(memory, keys, mask, tokens, state, plan)
            tokens = log_probs.argmax(dim=-1)
            for b in torch.nonzero(~finished & (tokens != EOS_ID)).flatten().tolist():
                out[b].append(int(tokens[b]))
            finished |= tokens == EOS_ID
            if bool(finished.all()):
                break
        return out

    @torch.no_grad()
    def beam_search(self, memory: torch.Tensor, memory_length: int, beam_size: int, max_len: int,
                    length_penalty: float = 0.0) -> list[int]:
        """Beam search for one utterance (``memory`` ``(1, T, D)``); returns the best token ids (see
        :func:`beam_search_steps`)."""
        memory = memory[:, :memory_length]
        frames = memory.shape[1]
        mask = torch.ones(1, frames, dtype=torch.bool, device=memory.device)
        keys = self.attention.keys(memory)
        plan = self.inference_plan()

        def step(tokens: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, DecoderState]:
            n = tokens.shape[0]
            log_probs, state, _ = self.step(memory.expand(n, -1, -1), tuple(k.expand(n, -1, -1) for k in keys),
                                            mask.expand(n, -1), tokens, state, plan)
            return log_probs, state

        return beam_search_steps(step, self.initial_state(memory), self.vocab_size, beam_size, max_len,
                                 length_penalty, memory.device)


def beam_search_steps(step: Callable[[torch.Tensor, object], tuple[torch.Tensor, object]], state: object,
                      vocab_size: int, beam_size: int, max_len: int, length_penalty: float = 0.0,
                      device: torch.device | str = "cpu") -> list[int]:
    """Beam search over any implementation of the decoder step; returns the best token ids.

    ``step(tokens (N,), state) -> (log_probs (N, V), state)`` runs one step for ``N`` hypotheses; ``state`` (one row
    at the start) has ``select(index)`` keeping the rows ``index`` (``(N',)``). Hypotheses are ranked by
    ``log P / len^length_penalty`` once finished. An end-of-sentence candidate finishes its hypothesis only when it
    ranks within the step's best ``beam_size`` candidates (as any hypothesis must to stay in the beam), so
    ``beam_size=1`` is greedy decoding. Tensors are made on ``device``.
    """
    tokens = torch.tensor([BOS_ID], device=device)
    scores = torch.zeros(1, device=device)
    prefixes: list[list[int]] = [[]]
    finished: list[tuple[float, list[int]]] = []
    for _ in range(max_len):
        log_probs, state = step(tokens, state)
        candidates = (scores.unsqueeze(1) + log_probs).flatten()
        top_scores, top = candidates.topk(min(beam_size * 2, candidates.numel()))
        rows, ids = top // vocab_size, top % vocab_size
        keep_rows, keep_ids, keep_scores = [], [], []
        for rank, (score, row, token) in enumerate(zip(top_scores.tolist(), rows.tolist(), ids.tolist(),
                                                       strict=True)):
            if score == -math.inf:
                break  # only excluded ids are left
            if token == EOS_ID:
                if rank < beam_size:
                    length = max(len(prefixes[row]), 1)
                    finished.append((score / length**length_penalty, prefixes[row]))
            elif len(keep_rows) < beam_size:
                keep_rows.append(row)
                keep_ids.append(token)
                keep_scores.append(score)
            if len(keep_rows) == beam_size and len(finished) >= beam_size:
                break
        best_finished = max((s for s, _ in finished), default=-float("inf"))
        if not keep_rows or (len(finished) >= beam_size and best_finished >= max(keep_scores)):
            break
        state = state.select(torch.tensor(keep_rows, device=device))
        prefixes = [prefixes[r] + [t] for r, t in zip(keep_rows, keep_ids, strict=True)]
        tokens = torch.tensor(keep_ids, device=device)
        scores = torch.tensor(keep_scores, device=device)
    if not finished:
        return prefixes[int(scores.argmax())]
    return max(finished, key=lambda item: item[0])[1]
