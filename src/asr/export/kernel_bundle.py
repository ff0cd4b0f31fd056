"""The TorchScript form of an exported recognizer (written by :mod:`asr.export.bundle` as ``model.ts``).

No ``from __future__ import annotations`` here: TorchScript compiles these methods from their annotations, and it
knows ``typing``'s forms only.
"""

from typing import List, Optional  # noqa: UP035

import torch

from asr.data.tokenizer import BOS_ID, EOS_ID, PAD_ID


class KernelBundle(torch.nn.Module):
    """The TorchScript form: the traced encoder step and the decoder's weights for the C++ ``decode_step`` and
    ``greedy_decode`` operators (:mod:`asr.model.fast_decode`), called from scripted methods."""

    cell: List[torch.Tensor]  # noqa: UP006
    mono_query: List[torch.Tensor]  # noqa: UP006
    chunk_query: List[torch.Tensor]  # noqa: UP006
    pre_output: List[torch.Tensor]  # noqa: UP006
    output: List[torch.Tensor]  # noqa: UP006
    pre_bias: Optional[torch.Tensor]  # noqa: UP045
    out_bias: Optional[torch.Tensor]  # noqa: UP045

    def __init__(self, encode: torch.nn.Module, plan):
        super().__init__()
        self.encoder_step = encode
        self.embedding, self.cell, self.cell_bias = plan.embedding, list(plan.cell), plan.cell_bias
        self.mono_query, self.mono_v, self.mono_r = list(plan.mono_query), plan.mono_v, float(plan.mono_r)
        self.chunk_query, self.chunk_v = list(plan.chunk_query), plan.chunk_v
        self.pre_output, self.pre_bias = list(plan.pre_output[0]), plan.pre_output[1]
        self.output, self.out_bias = list(plan.output[0]), plan.output[1]
        self.chunk_size = int(plan.chunk_size)
        self.pad_id, self.bos_id, self.eos_id = PAD_ID, BOS_ID, EOS_ID

    @torch.jit.export
    def encode(self, features: torch.Tensor, h: torch.Tensor, c: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """:class:`asr.export.graphs.EncoderStep`."""
        return self.encoder_step(features, h, c)

    @torch.jit.export
    def step(self, tokens: torch.Tensor, h: torch.Tensor, c: torch.Tensor, context: torch.Tensor,
             boundary: torch.Tensor, memory: torch.Tensor, mono_keys: torch.Tensor, chunk_keys: torch.Tensor,
             fallback: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """:class:`asr.export.graphs.DecoderStep` (``fallback`` a bool)."""
        rows = tokens.size(0)
        memory, mono_keys, chunk_keys = (memory.expand(rows, -1, -1), mono_keys.expand(rows, -1, -1),
                                         chunk_keys.expand(rows, -1, -1))
        mask = torch.ones(rows, memory.size(1), dtype=torch.bool)
        out = torch.ops.shrinkml_lowrank.decode_step(
            tokens, h, c, context, boundary, memory, mono_keys, chunk_keys, mask, self.embedding, self.cell,
            self.cell_bias, self.mono_query, self.mono_v, self.mono_r, self.chunk_query, self.chunk_v,
            self.pre_output, self.pre_bias, self.output, self.out_bias, self.chunk_size, fallback, self.pad_id,
            self.bos_id)
        return out[0], out[1], out[2], out[3], out[4]

    @torch.jit.export
    def greedy(self, memory: torch.Tensor, mono_keys: torch.Tensor, chunk_keys: torch.Tensor, max_len: int,
               fallback: bool) -> torch.Tensor:
        """Greedy decoding of one utterance's ``memory`` ``(1, T, D)`` in one C++ call: the argmax ids ``(1, S)``
        of every step run (up to and including the end id)."""
        mask = torch.ones(1, memory.size(1), dtype=torch.bool)
        out = torch.ops.shrinkml_lowrank.greedy_decode(
            memory, mono_keys, chunk_keys, mask, self.embedding, self.cell, self.cell_bias, self.mono_query,
            self.mono_v, self.mono_r, self.chunk_query, self.chunk_v, self.pre_output, self.pre_bias, self.output,
            self.out_bias, self.chunk_size, fallback, max_len, self.pad_id, self.bos_id, self.eos_id)
        return out[0]

    def forward(self, features: torch.Tensor, h: torch.Tensor, c: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.encode(features, h, c)
