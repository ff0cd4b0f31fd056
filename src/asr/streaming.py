"""Streaming recognition: audio in chunks -> tokens as soon as hard monotonic attention commits to them.

Features are computed per whole 25 ms frame as audio arrives (Kaldi's per-frame processing makes
them identical to the offline ones), the encoder carries its LSTM states and pooling leftovers
from chunk to chunk, and the decoder emits token ``i`` as soon as some frame ``j`` at or after
its last boundary has ``p_ij >= 0.5`` -- everything it needs (the chunk ``[j - w + 1, j]``) has
arrived by then. The result equals offline greedy decoding of the whole utterance. Each step runs
as the C++ decoder step where it applies (:mod:`asr.model.fast_decode`; a step that must wait for
audio is dropped and run again when more frames arrive), else on the PyTorch modules.
"""

from __future__ import annotations

import dataclasses

import torch

from asr.assets import AsrAssets
from asr.data.features import StreamingFeatures
from asr.data.tokenizer import BOS_ID, EOS_ID
from asr.model.asr_model import AsrModel


class StreamingRecognizer:
    """Greedy streaming decoder for one utterance at a time (batch 1)."""

    def __init__(self, model: AsrModel, assets: AsrAssets, max_tokens: int = 400):
        self.model = model.eval()
        self.assets = assets
        self.max_tokens = max_tokens
        self.reset()

    def reset(self) -> None:
        decoder = self.model.decoder
        self.features = StreamingFeatures(self.assets.features)
        self.encoder_state = self.model.encoder.initial_state()
        self.memory = torch.zeros(1, 0, self.model.encoder.hidden_size)
        self.mono_keys = torch.zeros(1, 0, decoder.attention.mono_key.out_features)
        self.chunk_keys = torch.zeros(1, 0, decoder.attention.chunk_key.out_features)
        self.state = decoder.initial_state(self.memory)
        self.pending: tuple[torch.Tensor, torch.Tensor] | None = None  # (h, c) of the step waiting for frames
        self.previous = torch.tensor([BOS_ID])
        self.tokens: list[int] = []
        self.done = False

    @torch.no_grad()
    def accept_audio(self, samples: torch.Tensor) -> list[int]:
        """Feed float samples ``(n,)`` at the model's sample rate; returns the tokens made final by them."""
        feats = self.features.push(samples)
        if feats is not None:
            self._encode(self.assets.cmvn(feats).unsqueeze(0))
        return self._decode(final=False)

    @torch.no_grad()
    def finish(self) -> list[int]:
        """End of the stream: decode what is left (the attention may now run off the end)."""
        return self._decode(final=True)

    def _encode(self, feats: torch.Tensor) -> None:
        new, self.encoder_state = self.model.encoder.stream(feats, self.encoder_state)
        if new.shape[1]:
            mono, chunk = self.model.decoder.attention.keys(new)
            self.memory = torch.cat([self.memory, new], dim=1)
            self.mono_keys = torch.cat([self.mono_keys, mono], dim=1)
            self.chunk_keys = torch.cat([self.chunk_keys, chunk], dim=1)

    def _decode(self, final: bool) -> list[int]:
        decoder = self.model.decoder
        attention = decoder.attention
        emitted: list[int] = []
        frames = self.memory.shape[1]
        plan = decoder.inference_plan() if frames else None
        if plan is not None:  # the fallback only once the input has ended (it needs every remaining frame)
            plan = dataclasses.replace(plan, fallback=final and attention.hard_fallback)
        mask = torch.ones(1, frames, dtype=torch.bool)
        while not self.done and len(self.tokens) < self.max_tokens:
            if plan is not None:  # the C++ step: cell, attention and output in one call; dropped when waiting
                log_probs, state, _ = decoder.step(self.memory, (self.mono_keys, self.chunk_keys), mask,
                                                   self.previous, self.state, plan)
                if int(state.boundary) >= frames and not final:
                    break  # no frame has fired yet: wait for more audio
                token = int(log_probs.argmax(dim=-1))
                self.state, self.pending = state, None
            else:
                token = self._python_step(final, frames, mask)
                if token is None:
                    break
            self.previous = torch.tensor([token])
            if token == EOS_ID:
                self.done = True
                break
            self.tokens.append(token)
            emitted.append(token)
        return emitted

    def _python_step(self, final: bool, frames: int, mask: torch.Tensor) -> int | None:
        """One step on the PyTorch modules (the cell is kept while waiting); None: wait for more audio."""
        decoder = self.model.decoder
        attention = decoder.attention
        if self.pending is None:
            inputs = torch.cat([decoder.embedding(self.previous), self.state.context], dim=-1)
            self.pending = decoder.cell(inputs, (self.state.h, self.state.c))
        h, c = self.pending
        if frames == 0:
            if not final:
                return None
            weights, boundary = torch.zeros(1, 0), torch.tensor([0])
        else:
            weights, boundary = attention.hard((self.mono_keys, self.chunk_keys), h, self.state.boundary, mask,
                                               fallback=final and attention.hard_fallback)
            if int(boundary) >= frames and not final:
                return None  # no frame has fired yet: wait for more audio
        context = torch.bmm(weights.unsqueeze(1), self.memory).squeeze(1) if frames else self.state.context * 0
        token = int(decoder.decode_log_probs(h, context).argmax(dim=-1))
        self.state = type(self.state)(h, c, context, boundary)
        self.pending = None
        return token

    def text(self) -> str:
        return self.assets.tokenizer.decode(self.tokens)
