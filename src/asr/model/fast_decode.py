"""The attention decoder's inference step as one C++ call (``asr/kernels/csrc/decode_step.cpp``).

A batch-1 step of :meth:`asr.model.decoder.AttentionDecoder.step` is some forty small PyTorch
operations (LSTM cell, two query projections, the hard monotonic scan, the chunk softmax, the output
layers): at the embedded model's size their per-operation overhead, not their arithmetic, is most of
the step, and compression cannot shrink it. :func:`step_plan` collects the decoder's weights once per
decoding call; :func:`fast_step` then runs the same step as one operator, with the hard monotonic scan
per row that stops at the first frame with ``p >= 0.5`` (reading only as far ahead as it must).

Which modules it runs (anything else makes :func:`step_plan` return None, and decoding keeps the
PyTorch step):

* a linear layer is an ``nn.Linear`` (exactly that type: dynamically quantized ones are not), or a
  module with ``first`` (no bias) and ``second`` ``nn.Linear`` children computing ``second(first(x))``
  (the low-rank linear of the compression package, which this package never imports);
* the LSTM cell is dense or factorized by the contract of :mod:`asr.model.lowrank_lstm`;
* CPU float32 weights, evaluation mode, and the C++ extension built (:func:`lowrank_lstm.backend`);
* no forward hooks on the decoder's modules (nor global ones): whoever hooks a module must see its
  calls, such as the compression package's count of matrix-vector products per second of audio.

A pruned weight (the cell's kernel or factors, a linear's weight) with at least the decoder's
``sparse_min_sparsity`` share of zeros enters the plan packed for the sparse kernels (:mod:`asr.model.sparse`):
the C++ step's linear chains take a packed sparse matrix wherever they take a dense one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules import module as module_hooks

from asr.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from asr.model import lowrank_lstm, sparse

Chain = tuple[list[torch.Tensor], torch.Tensor | None]  # weights applied in order, then the bias


def linear_chain(module: nn.Module) -> Chain | None:
    """``([W], b)`` for an ``nn.Linear``, ``([V* (k, n), U' (m, k)], b)`` for a two-stage low-rank
    linear; None for anything else."""
    if type(module) is nn.Linear:
        return [module.weight], module.bias
    first, second = getattr(module, "first", None), getattr(module, "second", None)
    if type(first) is nn.Linear and type(second) is nn.Linear and first.bias is None:
        return [first.weight, second.weight], second.bias
    return None


def _hooked(root: nn.Module) -> bool:
    """Whether a forward hook would see calls of ``root`` or its submodules (which the C++ step skips)."""
    if module_hooks._global_forward_hooks or module_hooks._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in root.modules())


@dataclass
class StepPlan:
    """The decoder's weights in the order the C++ step takes them (see :func:`step_plan`)."""

    embedding: torch.Tensor  # (V, E)
    cell: list[torch.Tensor]  # [kernel (4H, E + D + H)] or [V (k, E + D + H), U (4H, k)]
    cell_bias: torch.Tensor  # (4H,)
    mono_query: list[torch.Tensor]
    mono_v: torch.Tensor  # (A,): g v / |v|
    mono_r: float
    chunk_query: list[torch.Tensor]
    chunk_v: torch.Tensor  # (A,)
    pre_output: Chain
    output: Chain
    chunk_size: int
    fallback: bool


def step_plan(decoder: nn.Module) -> StepPlan | None:
    """A plan for :func:`fast_step`, or None where the C++ step does not apply (see the module docstring).

    The plan holds the weights as they are now: build it once per decoding call, under ``torch.no_grad``.
    """
    if decoder.training or torch.is_grad_enabled() or _hooked(decoder):
        return None
    attention = decoder.attention
    chains = {name: linear_chain(module) for name, module in (
        ("mono_query", attention.mono_query), ("chunk_query", attention.chunk_query),
        ("chunk_v", attention.chunk_v), ("pre_output", decoder.pre_output), ("output", decoder.output))}
    if any(chain is None for chain in chains.values()) or len(chains["chunk_v"][0]) != 1:
        return None
    if any(chains[name][1] is not None for name in ("mono_query", "chunk_query", "chunk_v")):
        return None  # the C++ step adds no bias to the attention's query projections and chunk energy
    factors = lowrank_lstm.low_rank_factors(decoder.cell)
    if factors is None and not isinstance(decoder.cell.kernel, nn.Parameter):
        return None  # another parametrization of the kernel
    cell = [decoder.cell.kernel] if factors is None else [factors[1], factors[0]]
    tensors = [decoder.embedding.weight, *cell, decoder.cell.bias, attention.mono_v, attention.mono_gain,
               attention.mono_r] + [t for chain in chains.values() for t in chain[0] if t is not None]
    if not lowrank_lstm._uses_extension(*tensors):
        return None
    threshold = getattr(decoder, "sparse_min_sparsity", None)

    def packed(weights: list[torch.Tensor]) -> list[torch.Tensor]:  # pruned weights as sparse matrices
        return [w if (p := sparse.sparse_weight(w, threshold)) is None else p for w in weights]

    return StepPlan(
        embedding=decoder.embedding.weight, cell=packed(cell), cell_bias=decoder.cell.bias,
        mono_query=packed(chains["mono_query"][0]),
        mono_v=attention.mono_gain * attention.mono_v / attention.mono_v.norm(),
        mono_r=float(attention.mono_r), chunk_query=packed(chains["chunk_query"][0]),
        chunk_v=chains["chunk_v"][0][0].reshape(-1),
        pre_output=(packed(chains["pre_output"][0]), chains["pre_output"][1]),
        output=(packed(chains["output"][0]), chains["output"][1]),
        chunk_size=attention.chunk_size, fallback=attention.hard_fallback)


def fast_step(plan: StepPlan, memory: torch.Tensor, keys: tuple[torch.Tensor, torch.Tensor],
              memory_mask: torch.Tensor, tokens: torch.Tensor, h: torch.Tensor, c: torch.Tensor,
              context: torch.Tensor, boundary: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """One decoder step: ``memory`` ``(N, T, D)``, ``keys`` 2 x ``(N, T, A)``, ``memory_mask`` ``(N, T)``,
    ``tokens`` ``(N,)``, state ``h``, ``c`` ``(N, H)``, ``context`` ``(N, D)``, ``boundary`` ``(N,)`` ->
    log-probabilities ``(N, V)``, new ``h``, ``c``, ``context``, ``boundary`` and the attention weights ``(N, T)``."""
    return torch.ops.shrinkml_lowrank.decode_step(
        tokens, h, c, context, boundary, memory, keys[0], keys[1], memory_mask, plan.embedding, plan.cell,
        plan.cell_bias, plan.mono_query, plan.mono_v, plan.mono_r, plan.chunk_query, plan.chunk_v,
        plan.pre_output[0], plan.pre_output[1], plan.output[0], plan.output[1], plan.chunk_size, plan.fallback,
        PAD_ID, BOS_ID)



def fast_greedy(plan: StepPlan, memory: torch.Tensor, keys: tuple[torch.Tensor, torch.Tensor],
                memory_mask: torch.Tensor, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy decoding from the start id as one C++ call: the loop of ``AttentionDecoder.greedy`` over
    :func:`fast_step` (the same steps, so the same results). ``memory`` ``(N, T, D)``, ``keys`` 2 x ``(N, T, A)``,
    ``memory_mask`` ``(N, T)`` -> every row's argmax id ``(N, S)`` at each of the ``S`` steps run (until every row
    has output the end id, at most ``max_len``) and its log-probability ``(N, S)``."""
    return torch.ops.shrinkml_lowrank.greedy_decode(
        memory, keys[0], keys[1], memory_mask, plan.embedding, plan.cell, plan.cell_bias, plan.mono_query,
        plan.mono_v, plan.mono_r, plan.chunk_query, plan.chunk_v, plan.pre_output[0], plan.pre_output[1],
        plan.output[0], plan.output[1], plan.chunk_size, plan.fallback, max_len, PAD_ID, BOS_ID, EOS_ID)


def hypotheses(tokens: torch.Tensor) -> list[list[int]]:
    """Each row of :func:`fast_greedy`'s ids ``(N, S)`` up to its first end id (without it)."""
    out = []
    for row in tokens.tolist():
        out.append(row[: row.index(EOS_ID)] if EOS_ID in row else row)
    return out
