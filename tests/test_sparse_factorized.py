"""A factorized encoder LSTM layer with pruned factors decodes on the sparse rank-k recurrence
(asr.model.sparse.sparse_factorized_layer_forward, asr/kernels/csrc/sparse_factorized_lstm.cpp): the same outputs as
the recurrence on the dense factors, at batch 1 and batched, unstructured and block zeros, and the dense factor loop
where the factors are not sparse enough, gradients are on or the extension is off."""

from __future__ import annotations

import math

import pytest
import torch

from asr.model import lowrank_lstm, sparse
from asr.model.lstm import ConcatLSTM
from compress.lowrank import factorize_kernel

ATOL = 2e-5
IN, HIDDEN, RANK = 12, 16, 8

pytestmark = pytest.mark.usefixtures("one_torch_thread", "cpp_extension")


FITTED_DENSE_COST = sparse.FACTOR_DENSE_COST


@pytest.fixture(autouse=True)
def sparse_always_pays(monkeypatch) -> None:
    """The tiny layers' packed factors would not pay by the fitted costs: run them sparse anyway (the test of the
    cost check puts :data:`FITTED_DENSE_COST` back)."""
    monkeypatch.setattr(sparse, "FACTOR_DENSE_COST", math.inf)
    monkeypatch.setattr(sparse, "FACTOR_MAX_BATCH", 64)


def pruned(weight: torch.Tensor, share: float, block: tuple[int, int], seed: int) -> torch.Tensor:
    """``weight`` with a random ``share`` of its ``block``-shaped blocks zeroed (a copy)."""
    bh, bw = block
    generator = torch.Generator().manual_seed(seed)
    keep = torch.rand(weight.shape[0] // bh, weight.shape[1] // bw, generator=generator) >= share
    return weight * keep.repeat_interleave(bh, 0).repeat_interleave(bw, 1)


def factorized(share: float, block: tuple[int, int] = (1, 1), threshold: float | None = 0.5) -> ConcatLSTM:
    """A layer ``IN -> HIDDEN`` factorized at ``RANK`` with ``share`` of each factor's blocks zeroed."""
    torch.manual_seed(11)
    layer = ConcatLSTM(IN, HIDDEN).eval()
    with torch.no_grad():
        layer.bias.normal_(0.0, 0.3)
    u = pruned(torch.randn(4 * HIDDEN, RANK) * 0.5, share, block, seed=1)
    v = pruned(torch.randn(RANK, IN + HIDDEN) * 0.5, share, block, seed=2)
    factorize_kernel(layer, u, v)
    layer.sparse_min_sparsity = threshold
    return layer


def reference(layer: ConcatLSTM, x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor):
    """The rank-k recurrence on the dense factors in PyTorch operations: outputs, h, c."""
    u, v = lowrank_lstm.low_rank_factors(layer)
    with torch.no_grad():
        x_proj = x @ v[:, : layer.input_size].t()
        return lowrank_lstm.factorized_lstm_forward_python(x_proj, v[:, layer.input_size:], u, layer.bias, h0, c0)


@pytest.fixture
def sparse_calls(monkeypatch) -> list:
    """Counts the calls of the sparse rank-k operator."""
    calls = []
    real = torch.ops.shrinkml_lowrank.sparse_factorized_lstm_forward

    def counting(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(torch.ops.shrinkml_lowrank, "sparse_factorized_lstm_forward", counting)
    return calls


@pytest.mark.parametrize("block", [(1, 1), (4, 1)])
@pytest.mark.parametrize("batch", [1, 3])
def test_pruned_factors_decode_sparse_and_equal_the_dense_factor_recurrence(block, batch, sparse_calls):
    layer = factorized(0.7, block)
    torch.manual_seed(batch)
    x, h0, c0 = torch.randn(batch, 9, IN), torch.randn(batch, HIDDEN) * 0.5, torch.randn(batch, HIDDEN) * 0.5
    with torch.no_grad():
        out, (h, c) = layer(x, (h0, c0))
        zero_state, _ = layer(x)
    assert len(sparse_calls) == 2 and all(a[1].dtype == torch.int32 and a[2].dtype == torch.int32
                                          for a in sparse_calls)  # V_h and U packed
    ref, ref_h, ref_c = reference(layer, x, h0, c0)
    assert torch.allclose(out, ref, atol=ATOL) and torch.allclose(h, ref_h, atol=ATOL)
    assert torch.allclose(c, ref_c, atol=ATOL)
    zeros = torch.zeros(batch, HIDDEN)
    assert torch.allclose(zero_state, reference(layer, x, zeros, zeros)[0], atol=ATOL)
    with torch.no_grad():
        empty, (h_empty, _) = layer(x[:, :0], (h0, c0))
    assert empty.shape == (batch, 0, HIDDEN) and torch.equal(h_empty, h0)


def test_the_factors_decode_sparse_above_the_threshold_only(sparse_calls):
    layer = factorized(0.6, threshold=None)
    share = sparse.factors_sparsity(*lowrank_lstm.low_rank_factors(layer))
    assert 0.5 < share < 0.7
    x = torch.randn(2, 7, IN)
    with torch.no_grad():
        dense, _ = layer(x)  # no threshold: the dense factor loop
        for threshold, used in ((0.7, 0), (0.5, 1), (None, 1)):
            layer.sparse_min_sparsity = threshold
            out, _ = layer(x)
            assert len(sparse_calls) == used and torch.allclose(out, dense, atol=ATOL)
    layer.sparse_min_sparsity = 0.5
    layer(x)  # gradients on: the fused kernel on U V
    assert len(sparse_calls) == 1


def test_without_the_extension_the_python_recurrence_runs(monkeypatch, sparse_calls):
    layer = factorized(0.7)
    x = torch.randn(1, 6, IN)
    zeros = torch.zeros(1, HIDDEN)
    monkeypatch.setitem(lowrank_lstm._status, "backend", "python")  # as when the library cannot be built
    with torch.no_grad():
        out, _ = layer(x)
    assert not sparse_calls and torch.allclose(out, reference(layer, x, zeros, zeros)[0], atol=ATOL)


def test_changed_factors_are_packed_again():
    layer = factorized(0.7)
    x, zeros = torch.randn(1, 5, IN), torch.zeros(1, HIDDEN)
    u, _ = lowrank_lstm.low_rank_factors(layer)
    with torch.no_grad():
        first, _ = layer(x)
        u.mul_(2.0)  # in place: a new version of the same tensor
        second, _ = layer(x)
    assert not torch.allclose(first, second)
    assert torch.allclose(second, reference(layer, x, zeros, zeros)[0], atol=ATOL)


@pytest.mark.parametrize("block", [(1, 1), (4, 1), (8, 1), (16, 1), (1, 4), (1, 8)])
@pytest.mark.parametrize("batch", [1, 3, 9])
def test_the_operator_equals_the_recurrence_in_every_block_shape(block, batch):
    torch.manual_seed(12)
    hidden, rank = 16, 16
    u = pruned(torch.randn(4 * hidden, rank) * 0.5, 0.6, (1, 1), 3)
    v_h = pruned(torch.randn(rank, hidden), 0.6, (1, 1), 4)
    bias, x_proj = torch.randn(4 * hidden) * 0.3, torch.randn(batch, 7, rank)
    h0, c0 = torch.randn(batch, hidden) * 0.5, torch.randn(batch, hidden) * 0.5
    out, h, c = torch.ops.shrinkml_lowrank.sparse_factorized_lstm_forward(
        x_proj, sparse.pack(v_h, block), sparse.pack(u, block), bias, h0, c0, 1)
    ref, ref_h, ref_c = lowrank_lstm.factorized_lstm_forward_python(x_proj, v_h, u, bias, h0, c0)
    assert torch.allclose(out, ref, atol=ATOL) and torch.allclose(h, ref_h, atol=ATOL)
    assert torch.allclose(c, ref_c, atol=ATOL)


def test_both_factors_take_the_cheapest_common_block_shape():
    u = pruned(torch.randn(64, 16), 0.75, (4, 1), 5)
    v_h = pruned(torch.randn(16, 16), 0.75, (4, 1), 6)
    block = sparse.choose_factor_block((v_h, u))
    assert block in sparse.FACTOR_BLOCK_COST or block in sparse.BLOCK_COST
    assert sparse.choose_factor_block((v_h[:15], u)) in {(1, 1), (1, 4), (1, 8)}  # 15 rows: no taller blocks


@pytest.mark.parametrize("rank", [8, 24, 72])
@pytest.mark.parametrize("batch", [1, 2, 3, 7])
def test_the_dense_rank_k_loop_equals_the_recurrence_with_output_tails(rank, batch):
    """forward_packed (the dense factors, the baseline of the sparse loop) on widths that are no multiple of 64 (the
    16-wide tails) at every row-block count of its batched products (4, 2, 1 rows)."""
    torch.manual_seed(rank + batch)
    hidden = 20  # 4H = 80: one 64-wide block and a 16-wide tail
    u, v_h = torch.randn(4 * hidden, rank) * 0.3, torch.randn(rank, hidden) * 0.3
    bias, x_proj = torch.randn(4 * hidden) * 0.3, torch.randn(batch, 6, rank)
    h0, c0 = torch.randn(batch, hidden) * 0.5, torch.randn(batch, hidden) * 0.5
    out, h, c = lowrank_lstm.factorized_lstm_forward(x_proj, v_h, u, bias, h0, c0)
    ref, ref_h, ref_c = lowrank_lstm.factorized_lstm_forward_python(x_proj, v_h, u, bias, h0, c0)
    assert torch.allclose(out, ref, atol=ATOL) and torch.allclose(h, ref_h, atol=ATOL)
    assert torch.allclose(c, ref_c, atol=ATOL)


@pytest.mark.parametrize(("share", "block", "pays"), [(0.5, (1, 1), False), (0.5, (4, 1), False),
                                                     (0.9, (4, 1), True), (0.8, (4, 1), True)])
def test_the_factors_run_sparse_only_where_their_fitted_costs_are_below_the_dense_loop(monkeypatch, sparse_calls,
                                                                                      share, block, pays):
    """A 1024 x 512 layer at rank 64 (measured on AVX-512: pruned factors pay from about 75% zeros in 4x1 blocks)."""
    monkeypatch.setattr(sparse, "_factor_costs", lambda: (sparse.FACTOR_BLOCK_COST, sparse.FACTOR_ROW_COST,
                                                          FITTED_DENSE_COST))  # as on AVX-512
    hidden, rank = 256, 64
    torch.manual_seed(13)
    layer = ConcatLSTM(hidden, hidden).eval()
    factorize_kernel(layer, pruned(torch.randn(4 * hidden, rank) * 0.1, share, block, 7),
                     pruned(torch.randn(rank, 2 * hidden) * 0.1, share, block, 8))
    layer.sparse_min_sparsity = 0.4  # the random zeros are about, not exactly, the share
    u, v = lowrank_lstm.low_rank_factors(layer)
    factors = (v.detach()[:, hidden:], u.detach())
    assert sparse.sparse_factors_pay(factors, sparse.choose_factor_block(factors)) == pays
    x, zeros = torch.randn(1, 3, hidden), torch.zeros(1, hidden)
    with torch.no_grad():
        out, _ = layer(x)
        forced, _ = sparse.sparse_factorized_layer_forward(x, u, v, layer.bias, None, 0.4, check_cost=False)
    assert len(sparse_calls) == 1 + pays
    ref = reference(layer, x, zeros, zeros)[0]
    assert torch.allclose(out, ref, atol=ATOL) and torch.allclose(forced, ref, atol=ATOL)
    monkeypatch.setattr(sparse, "FACTOR_MAX_BATCH", 1)
    with torch.no_grad():
        layer(torch.randn(2, 3, hidden))  # batched: the dense loop's batched products are faster
    assert len(sparse_calls) == 1 + pays
    monkeypatch.setattr(sparse, "_factor_costs", lambda: (sparse.BLOCK_COST, sparse.ROW_COST, None))
    assert sparse.sparse_factors_pay(factors, (4, 1))  # no dense cost fitted (no AVX-512): the threshold decides
