"""Pruned weights at decoding time: the sparse kernels of ``asr/kernels/csrc/sparse_kernels.cpp``.

A pruned target holds exact zeros where it was pruned (whoever pruned it: this package never imports
the compression package and reads sparsity from the zeros alone). When decoding (gradients off, CPU
float32, the C++ extension built) and a matrix's share of zeros is at least the ``decoding``
setting ``sparse_min_sparsity``, decoding runs it through a sparse product instead of the dense one:

* an encoder LSTM layer's recurrence ``W_hh h_{t-1}`` (:func:`sparse_layer_forward`; the input side
  ``W_ih x_t`` of all frames stays one dense matrix product, which at a few hundred frames is as fast as
  the sparse one even at 90% sparsity);
* a factorized encoder LSTM layer (``kernel = U V``, :mod:`asr.model.lowrank_lstm`) whose factors are pruned: its
  rank-``k`` recurrence ``z_t = V_x x_t + V_h h_{t-1}``, ``gates_t = U z_t + b`` on ``V_h`` and ``U`` packed
  (:func:`sparse_factorized_layer_forward`; ``V_x x_t`` of all frames stays one dense product). The share of zeros
  that decides is the factors' together (``U`` and ``V``, the target's), as a dense layer's is its whole kernel's,
  and where the costs are fitted (AVX-512) the packed factors must also cost less than the dense rank-``k`` loop
  (:func:`sparse_factors_pay`);
* the decoder step's LSTM cell and linears (:func:`sparse_weight`, used by :mod:`asr.model.fast_decode`).

Training, and any call with gradients on, keeps the dense kernels on the weights with their zeros.

A matrix is packed once per weight tensor and version (:func:`sparse_weight` keeps it weakly, like the
factorized LSTM's packed weights) in the block shape whose stored blocks (zeros inside a stored block
included) cost least by the measured costs of :data:`BLOCK_COST`: CSR (1 x 1), or 4 x 1, 1 x 4, 8 x 1 or
1 x 8 blocks. On this project's CPU 4 x 1 blocks win on unstructured zeros too, and 8 x 1 blocks at
moderate sparsity.
"""

from __future__ import annotations

import math

import torch
from torch.utils.weak import WeakIdKeyDictionary

from asr.model import lowrank_lstm

# Nanoseconds per stored block and per block row of the batch-1 product, per block shape (rows x columns),
# fitted to the LSTM recurrence on a 1024 x 256 W_hh with unstructured zeros at 50-95% sparsity, AMD EPYC
# (Zen 3, AVX2), one thread, on a loaded machine (2026-12-03; benchmarks/sparse_speedup.py prints the kernels'
# times). A 4 x 1 block costs about what one CSR nonzero costs, and there are never more blocks than
# nonzeros: 4 x 1 (or 8 x 1) blocks with the zeros inside them stored beat CSR on unstructured zeros too.
BLOCK_COST = {(1, 1): 0.57, (4, 1): 0.60, (1, 4): 0.55, (8, 1): 0.70, (1, 8): 0.76}
ROW_COST = 2.5
# The same for the factors of a factorized layer (V_h (k, H) and U (4H, k), both packed alike) on the sparse rank-k
# recurrence, fitted to its time per step at ranks 32-128, H = 256, 0-90% zeros unstructured and in 4x1 blocks, on
# an Intel Xeon with AVX-512, one thread (2026-12-05; benchmarks/sparse_speedup.py --factorized-only prints the
# layer's times). Used where torch reports AVX-512: there 16 x 1 blocks (one 16-wide multiply-add) beat 8 x 1 ones
# at up to 75% zeros, also unstructured; on AVX2 16-wide blocks measured slower and BLOCK_COST decides.
# FACTOR_DENSE_COST: nanoseconds per multiply-add of the dense rank-k loop on the same factors, same fit (ranks
# 32-128; one fixed cost per step shared by both loops; every fitted time within 12%). A pruned factorized layer
# runs sparse only where its packed factors cost less than that by these costs (:func:`sparse_factors_pay`): the
# dense loop is fast enough that below about 75% zeros in 4x1 blocks (90% unstructured) the sparse one measured
# 12-22% slower.
FACTOR_BLOCK_COST = {(1, 1): 0.36, (4, 1): 0.53, (1, 4): 0.49, (8, 1): 0.61, (1, 8): 0.59, (16, 1): 0.72}
FACTOR_ROW_COST = 2.0
FACTOR_DENSE_COST = 0.0364
# Batches above FACTOR_MAX_BATCH keep the dense rank-k loop where the costs are fitted: its batched products measured
# faster than the sparse loop at every batch and sparsity tried (r64, 200 frames, 75% and 90% zeros in 4x1 blocks:
# batch 4 1.5 ms dense against 2.6 and 1.8 ms, batch 16 5.5 against 10.6 and 6.8 ms). The sparse loop runs batches
# up to FACTOR_GEMV_ROWS row after row: its batched product, with 16x1 blocks, measured 2-13x slower at batch 2-16.
# The dense layer's sparse W_hh recurrence runs batches up to SPARSE_GEMV_ROWS row after row: the batched sparse
# product has tiles of 8 rows, and 2-7 rows fell to its scalar loop (batch 4, 80% 4x1: 33 ms against 6.2 row by row).
FACTOR_MAX_BATCH = 1
FACTOR_GEMV_ROWS = 64
SPARSE_GEMV_ROWS = 7
MAX_COLUMNS = 65536  # the packed format's column indices are uint16

_packed = WeakIdKeyDictionary()  # weight -> (key, packed tensor or None)


def sparsity(weight: torch.Tensor) -> float:
    """The share of exact zeros in ``weight``."""
    return 1.0 - int(torch.count_nonzero(weight)) / weight.numel() if weight.numel() else 0.0


def stored_blocks(weight: torch.Tensor, block: tuple[int, int]) -> int | None:
    """How many ``block``-shaped blocks of ``weight`` hold a nonzero (None when it is no whole number of them)."""
    bh, bw = block
    m, n = weight.shape
    if m % bh or n % bw:
        return None
    return int((weight != 0).reshape(m // bh, bh, n // bw, bw).any(dim=3).any(dim=1).sum())


def choose_block(weight: torch.Tensor) -> tuple[int, int]:
    """The block shape of :data:`BLOCK_COST` whose product costs least by it (ties: the first listed)."""
    costs = {}
    for block, cost in BLOCK_COST.items():
        count = stored_blocks(weight, block)
        if count is not None:
            costs[block] = count * cost + weight.shape[0] // block[0] * ROW_COST
    return min(costs, key=costs.__getitem__)


def _factor_costs() -> tuple[dict[tuple[int, int], float], float, float | None]:
    """``(block costs, row cost, dense cost per multiply-add or None)`` for the factors on this CPU: the fitted
    :data:`FACTOR_BLOCK_COST` where torch reports AVX-512, else :data:`BLOCK_COST` and no dense cost."""
    if torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        return FACTOR_BLOCK_COST, FACTOR_ROW_COST, FACTOR_DENSE_COST
    return BLOCK_COST, ROW_COST, None


def factor_block_costs(factors: tuple[torch.Tensor, ...], block_cost: dict[tuple[int, int], float],
                       row_cost: float) -> dict[tuple[int, int], float]:
    """Estimated nanoseconds per step of the products of ``factors`` packed in each block shape of ``block_cost``
    that divides all of them: stored blocks times the block's cost plus block rows times ``row_cost``."""
    costs = {}
    for block, cost in block_cost.items():
        counts = [stored_blocks(w, block) for w in factors]
        if all(c is not None for c in counts):
            rows = sum(w.shape[0] // block[0] for w in factors)
            costs[block] = sum(counts) * cost + rows * row_cost
    return costs


def choose_factor_block(factors: tuple[torch.Tensor, ...]) -> tuple[int, int]:
    """One block shape for the factors of a factorized layer (``V_h`` and ``U``): the cheapest for all of them
    (:func:`factor_block_costs` by :func:`_factor_costs`)."""
    table, row_cost, _ = _factor_costs()
    costs = factor_block_costs(factors, table, row_cost)
    return min(costs, key=costs.__getitem__)


def sparse_factors_pay(factors: tuple[torch.Tensor, ...], block: tuple[int, int]) -> bool:
    """Whether ``factors`` packed in ``block`` blocks cost less per step than on the dense rank-``k`` loop (their
    multiply-adds times :data:`FACTOR_DENSE_COST`); True where no dense cost is fitted (CPUs without AVX-512)."""
    table, row_cost, dense_cost = _factor_costs()
    if dense_cost is None:
        return True
    sparse_cost = factor_block_costs(factors, {block: table.get(block, max(table.values()))}, row_cost)[block]
    return sparse_cost < dense_cost * sum(w.numel() for w in factors)


def pack(weight: torch.Tensor, block: tuple[int, int] | None = None) -> torch.Tensor:
    """``weight`` ``(M, K)`` in the packed sparse format (an int32 tensor, ``sparse_kernels.h``), in ``block``
    shape (any of :data:`BLOCK_COST` or ``(16, 1)``) or the cheapest one (:func:`choose_block`). Needs the C++
    extension."""
    block = choose_block(weight) if block is None else block
    with torch.no_grad():
        return torch.ops.shrinkml_lowrank.sparse_pack(weight.detach().contiguous(), *block)


def packed_block(packed: torch.Tensor) -> tuple[int, int]:
    """The block shape of a packed sparse matrix."""
    return int(packed[4]), int(packed[5])


def sparse_weight(weight: torch.Tensor, min_sparsity: float | None) -> torch.Tensor | None:
    """``weight`` packed for the sparse kernels when decoding should use them (see the module docstring):
    at least ``min_sparsity`` zeros (None: never), 2-D, CPU float32, no gradients recorded, extension built;
    else None. Kept per weight tensor until it changes (another version, in place or not)."""
    if (min_sparsity is None or torch.is_grad_enabled() or weight.dim() != 2 or weight.shape[1] > MAX_COLUMNS
            or not lowrank_lstm._uses_extension(weight)):
        return None
    if weight.is_inference():  # no version to key on: decide afresh (tensors made under inference_mode)
        return pack(weight) if sparsity(weight) >= min_sparsity else None
    key = (weight.data_ptr(), weight._version, tuple(weight.shape), min_sparsity)
    cached = _packed.get(weight)
    if cached is None or cached[0] != key:
        cached = (key, pack(weight) if sparsity(weight) >= min_sparsity else None)
        _packed[weight] = cached
    return cached[1]


def sparse_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x`` ``(N, K)`` times the packed ``W`` ``(M, K)`` transposed, plus ``bias``: ``(N, M)``."""
    return torch.ops.shrinkml_lowrank.sparse_linear(x, packed, bias)


def sparse_layer_forward(x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor, input_size: int,
                         state: tuple[torch.Tensor, torch.Tensor] | None, min_sparsity: float | None
                         ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]] | None:
    """An LSTM layer with concatenated ``kernel`` ``[W_ih | W_hh]`` ``(4H, in + H)`` for inference on the
    sparse recurrence: ``x`` ``(B, T, in)`` -> outputs ``(B, T, H)`` and the final ``(h, c)``; None when its
    ``W_hh`` is not to run sparse (:func:`sparse_weight`), and the caller keeps the dense kernel.

    The sparsity that decides is the whole kernel's (the target's), the packing is ``W_hh``'s."""
    if (min_sparsity is None or torch.is_grad_enabled() or not lowrank_lstm._uses_extension(x, kernel, bias)
            or sparsity_of_kernel(kernel) < min_sparsity):
        return None
    w_ih, packed = _kernel_parts_of(kernel, input_size)
    hidden = kernel.shape[1] - input_size
    x_gates = torch.addmm(bias, x.reshape(-1, x.shape[-1]), w_ih.t()).reshape(x.shape[0], x.shape[1], 4 * hidden)
    if state is None:
        h0 = c0 = x.new_zeros(x.shape[0], hidden)
    else:
        h0, c0 = state
    out, h, c = torch.ops.shrinkml_lowrank.sparse_lstm_forward(x_gates, packed, h0, c0, SPARSE_GEMV_ROWS)
    return out, (h, c)


_kernel_sparsity = WeakIdKeyDictionary()  # kernel -> (key, share of zeros)
_kernel_parts = WeakIdKeyDictionary()  # kernel -> (key, (W_ih contiguous, packed W_hh))


def _kernel_key(kernel: torch.Tensor) -> tuple | None:
    return None if kernel.is_inference() else (kernel.data_ptr(), kernel._version, tuple(kernel.shape))


def sparsity_of_kernel(kernel: torch.Tensor) -> float:
    """:func:`sparsity` of ``kernel``, kept until it changes (a layer asks on every call)."""
    key = _kernel_key(kernel)
    cached = _kernel_sparsity.get(kernel) if key is not None else None
    if cached is None or cached[0] != key:
        cached = (key, sparsity(kernel))
        if key is not None:
            _kernel_sparsity[kernel] = cached
    return cached[1]


def _kernel_parts_of(kernel: torch.Tensor, input_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``W_ih`` (contiguous) and ``W_hh`` packed, kept per kernel until it changes."""
    key = _kernel_key(kernel)
    cached = _kernel_parts.get(kernel) if key is not None else None
    if cached is None or cached[0] != key:
        w_ih, w_hh = kernel.detach().split([input_size, kernel.shape[1] - input_size], dim=1)
        cached = (key, (w_ih.contiguous(), pack(w_hh)))
        if key is not None:
            _kernel_parts[kernel] = cached
    return cached[1]


def check_min_sparsity(value: float | None) -> float | None:
    """``decoding.sparse_min_sparsity`` checked: None (never sparse) or a share in ``[0, 1]``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value) or not 0 <= value <= 1:
        raise ValueError(f"decoding.sparse_min_sparsity must be a share of zeros in [0, 1] or null (never), got "
                         f"{value!r}")
    return float(value)


_factor_parts = WeakIdKeyDictionary()  # U -> (key, share of zeros of U and V, None or the packing, see _factor_entry)


def _factors_key(u: torch.Tensor, v: torch.Tensor) -> tuple | None:
    if u.is_inference() or v.is_inference():
        return None
    return tuple((t.data_ptr(), t._version, tuple(t.shape)) for t in (u, v))


def factors_sparsity(u: torch.Tensor, v: torch.Tensor) -> float:
    """The share of exact zeros in the factors ``U`` and ``V`` together (entries of both)."""
    total = u.numel() + v.numel()
    return 1.0 - (int(torch.count_nonzero(u)) + int(torch.count_nonzero(v))) / total if total else 0.0


def _factor_entry(u: torch.Tensor, v: torch.Tensor, min_sparsity: float, check_cost: bool) -> tuple:
    """``(share of zeros, packing)``: the packing is None below ``min_sparsity``, else ``[block, pays, packed]`` with
    the factors' block shape (:func:`choose_factor_block`), whether they pay (:func:`sparse_factors_pay`) and
    ``(packed V_h, packed U)``, packed once they are to run (they pay or ``check_cost`` is off). Kept per ``U`` until a
    factor changes (another tensor or version)."""
    key = _factors_key(u, v)
    cached = _factor_parts.get(u) if key is not None else None
    if cached is None or cached[0] != key:
        cached = (key, factors_sparsity(u, v), None)
    share, packing = cached[1], cached[2]
    if share >= min_sparsity:
        hidden = u.shape[0] // 4
        factors = (v.detach()[:, v.shape[1] - hidden:], u.detach())
        if packing is None:
            block = choose_factor_block(factors)
            packing = [block, sparse_factors_pay(factors, block), None]
        if packing[2] is None and (packing[1] or not check_cost):
            packing[2] = tuple(pack(w, packing[0]) for w in factors)
        cached = (key, share, packing)
    if key is not None:
        _factor_parts[u] = cached
    return share, packing


def sparse_factorized_layer_forward(x: torch.Tensor, u: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                                    state: tuple[torch.Tensor, torch.Tensor] | None, min_sparsity: float | None,
                                    check_cost: bool = True
                                    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]] | None:
    """A factorized LSTM layer (``U`` ``(4H, k)``, ``V`` = ``[V_x | V_h]`` ``(k, in + H)``) for inference on the
    sparse rank-``k`` recurrence: ``x`` ``(B, T, in)`` -> outputs ``(B, T, H)`` and the final ``(h, c)``; None
    when the factors are not to run sparse (fewer than ``min_sparsity`` zeros in ``U`` and ``V`` together, None
    threshold, gradients on, not CPU float32 or no extension, or with ``check_cost`` where the costs are fitted and
    the packed factors would cost more than the dense ones, :func:`sparse_factors_pay`, or the batch is above
    :data:`FACTOR_MAX_BATCH`), and the caller keeps the dense factors
    (:func:`asr.model.lowrank_lstm.factorized_layer_forward`).

    ``V_h`` and ``U`` are packed in the one block shape :func:`choose_factor_block` picks for both; ``V_x x_t`` of
    all frames is one dense matrix product."""
    if (min_sparsity is None or torch.is_grad_enabled() or max(u.shape[1], v.shape[1]) > MAX_COLUMNS
            or not lowrank_lstm._uses_extension(x, u, v, bias)):
        return None
    if check_cost and x.shape[0] > FACTOR_MAX_BATCH and _factor_costs()[2] is not None:
        return None
    share, packing = _factor_entry(u, v, min_sparsity, check_cost)
    if share < min_sparsity or (check_cost and not packing[1]):
        return None
    packed = packing[2]
    hidden = u.shape[0] // 4
    v_x = v.detach()[:, : v.shape[1] - hidden]
    x_proj = torch.matmul(x, v_x.t())
    if state is None:
        h0 = c0 = x.new_zeros(x.shape[0], hidden)
    else:
        h0, c0 = state
    out, h, c = torch.ops.shrinkml_lowrank.sparse_factorized_lstm_forward(x_proj, packed[0], packed[1], bias, h0, c0,
                                                                          FACTOR_GEMV_ROWS)
    return out, (h, c)
