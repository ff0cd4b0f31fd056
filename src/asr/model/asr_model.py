"""The whole recognizer: streaming LSTM encoder + MoChA attention + LSTM decoder (+ optional CTC head)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from asr.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from asr.model.decoder import AttentionDecoder
from asr.model.encoder import Encoder
from asr.model.sparse import check_min_sparsity


def decode_length_limit(memory_length: int, max_decode_ratio: float) -> int:
    """Decoder steps allowed for ``memory_length`` encoder frames: ``max(1, ceil(T * ratio)) + 1`` (the end id's)."""
    return max(1, math.ceil(memory_length * max_decode_ratio)) + 1


class AsrModel(nn.Module):
    """Encoder-attention-decoder model (the paper's Fig. 1, with MoChA and unidirectional LSTMs).

    ``encoder`` and ``decoder`` are dicts of constructor arguments (``conf/model/*.yaml``). How it
    decodes (output length limit, MoChA's hard fallback) is set by :meth:`set_decoding` from the
    ``decoding`` config group; it never changes the weights.
    """

    def __init__(self, vocab_size: int, input_size: int, encoder: dict, decoder: dict, ctc_weight: float = 0.0,
                 label_smoothing: float = 0.1):
        super().__init__()
        if not 0.0 <= ctc_weight < 1.0:
            raise ValueError(f"model.ctc_weight must be in [0, 1), got {ctc_weight}")
        self.vocab_size = vocab_size
        self.encoder = Encoder(input_size, **encoder)
        self.decoder = AttentionDecoder(vocab_size, self.encoder.hidden_size, **decoder)
        self.ctc_weight = ctc_weight
        self.ctc_head = nn.Linear(self.encoder.hidden_size, vocab_size) if ctc_weight > 0 else None
        self.label_smoothing = label_smoothing
        self.max_decode_ratio = 1.0

    def set_decoding(self, max_decode_ratio: float, hard_fallback: bool, sparse_min_sparsity: float | None = None
                     ) -> None:
        """Decoding-only settings (``conf/decoding``): at most ``max_decode_ratio`` output tokens per
        encoder frame; ``hard_fallback`` for MoChA's hard attention (``MoChA.hard``); pruned matrices with
        at least ``sparse_min_sparsity`` zeros decode on sparse kernels (:mod:`asr.model.sparse`; None: never)."""
        if max_decode_ratio <= 0:
            raise ValueError(f"decoding.max_decode_ratio must be > 0, got {max_decode_ratio}")
        self.max_decode_ratio = float(max_decode_ratio)
        self.decoder.attention.hard_fallback = bool(hard_fallback)
        threshold = check_min_sparsity(sparse_min_sparsity)
        for module in self.modules():
            if hasattr(type(module), "sparse_min_sparsity"):
                module.sparse_min_sparsity = threshold

    def encode(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``features`` ``(B, T, F)`` -> memory ``(B, T', D)`` and lengths ``(B,)``."""
        return self.encoder(features, lengths)

    @staticmethod
    def _frame_mask(memory: torch.Tensor, memory_lengths: torch.Tensor) -> torch.Tensor:
        """``(B, T')`` bool, True on the frames of ``memory`` ``(B, T', D)`` within ``memory_lengths``."""
        return torch.arange(memory.shape[1], device=memory.device).unsqueeze(0) < memory_lengths.unsqueeze(1)

    @staticmethod
    def _decoder_io(tokens: torch.Tensor, token_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced decoder inputs (start id, then the tokens) and targets (the tokens, then an
        end id, padding after it), each ``(B, U + 1)``."""
        batch_size = tokens.shape[0]
        previous = torch.cat([tokens.new_full((batch_size, 1), BOS_ID), tokens], dim=1)
        targets = torch.cat([tokens, tokens.new_full((batch_size, 1), PAD_ID)], dim=1)
        targets[torch.arange(batch_size), token_lengths] = EOS_ID
        return previous, targets

    def teacher_forced_logits(self, batch: dict) -> torch.Tensor:
        """Decoder logits ``(B, U + 1, V)`` with the reference tokens as inputs (no CTC, no loss)."""
        memory, memory_lengths = self.encode(batch["features"], batch["feature_lengths"])
        previous, _ = self._decoder_io(batch["tokens"], batch["token_lengths"])
        mask = self._frame_mask(memory, memory_lengths)
        return self.decoder(memory, mask, previous)[0]

    def loss(self, batch: dict, ctc_only: bool = False, keep_logits: bool = False) -> dict[str, torch.Tensor]:
        """Training losses of a batch (see ``asr.data.datamodule`` for its layout).

        ``ctc_only`` trains the encoder alone through the CTC head (the decoder is not run): the
        pre-training phase of ``AsrModule``.
        Returns ``loss`` (what is minimized), ``attention`` (label-smoothed cross-entropy per
        token), ``mass`` (mean of ``1 - sum_j alpha_ij`` over target steps: the share of expected
        alignment that ran off the end of the input; a logged diagnostic, not minimized), ``ctc`` (when
        enabled) and ``tokens`` (target count incl. end ids); with ``keep_logits`` also the decoder's
        ``logits`` ``(B, U + 1, V)`` and their ``targets`` ``(B, U + 1)`` (padding id after the end id),
        for a distillation loss.
        """
        memory, memory_lengths = self.encode(batch["features"], batch["feature_lengths"])
        tokens, token_lengths = batch["tokens"], batch["token_lengths"]
        previous, targets = self._decoder_io(tokens, token_lengths)
        if ctc_only:
            if self.ctc_head is None:
                raise ValueError("CTC pre-training needs the CTC head: set model.ctc_weight > 0")
            ctc = self._ctc(memory, memory_lengths, tokens, token_lengths)
            return {"ctc": ctc, "loss": ctc, "tokens": (token_lengths + 1).sum()}
        mask = self._frame_mask(memory, memory_lengths)
        logits, alignment_mass = self.decoder(memory, mask, previous)
        attention = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=PAD_ID,
                                    label_smoothing=self.label_smoothing)
        steps = targets != PAD_ID
        mass = ((1.0 - alignment_mass) * steps).sum() / steps.sum()
        out = {"attention": attention, "mass": mass, "tokens": (token_lengths + 1).sum()}
        if keep_logits:
            out["logits"], out["targets"] = logits, targets
        loss = attention
        if self.ctc_head is not None:
            ctc = self._ctc(memory, memory_lengths, tokens, token_lengths)
            out["ctc"] = ctc
            loss = (1 - self.ctc_weight) * attention + self.ctc_weight * ctc
        out["loss"] = loss
        return out

    def _ctc(self, memory: torch.Tensor, memory_lengths: torch.Tensor, tokens: torch.Tensor,
             token_lengths: torch.Tensor) -> torch.Tensor:
        """CTC loss of the encoder output (blank = padding id), averaged per target token."""
        log_probs = torch.log_softmax(self.ctc_head(memory), dim=-1).transpose(0, 1)
        return F.ctc_loss(log_probs, tokens, memory_lengths, token_lengths, blank=PAD_ID, zero_infinity=True)

    def max_len(self, memory_length: int) -> int:
        return decode_length_limit(memory_length, self.max_decode_ratio)

    @torch.no_grad()
    def greedy_decode(self, features: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
        """Batched greedy decoding with hard monotonic attention -> token ids per utterance."""
        memory, memory_lengths = self.encode(features, lengths)
        return self.decoder.greedy(memory, memory_lengths, self.max_len(int(memory_lengths.max())))

    @torch.no_grad()
    def beam_decode(self, features: torch.Tensor, lengths: torch.Tensor, beam_size: int,
                    length_penalty: float = 0.0) -> list[list[int]]:
        """Beam search per utterance (hard monotonic attention) -> token ids per utterance."""
        memory, memory_lengths = self.encode(features, lengths)
        return [
            self.decoder.beam_search(memory[b : b + 1], int(memory_lengths[b]), beam_size,
                                     self.max_len(int(memory_lengths[b])), length_penalty)
            for b in range(memory.shape[0])
        ]

    def decode(self, features: torch.Tensor, lengths: torch.Tensor, beam_size: int = 0,
               length_penalty: float = 0.0) -> list[list[int]]:
        """Token ids per utterance: beam search when ``beam_size`` > 0, batched greedy otherwise."""
        if beam_size > 0:
            return self.beam_decode(features, lengths, beam_size, length_penalty)
        return self.greedy_decode(features, lengths)
