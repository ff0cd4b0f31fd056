"""The sparse inference kernels (asr.model.sparse, asr/kernels/csrc/sparse_kernels.cpp) against dense PyTorch:
packed products at batch 1 and batched, the LSTM recurrence, the encoder layers and the C++ decoder step of a
pruned model (unstructured and block zeros, dense and low-rank), and where decoding keeps the dense kernels."""

from __future__ import annotations

import pytest
import torch
from asr_helpers import tiny_decoding, tiny_model_config
from torch import nn

from asr.model import fast_decode, sparse
from asr.model.asr_model import AsrModel
from asr.model.lstm import ConcatLSTM
from asr.module import decoding_settings
from compress.scheme import Scheme, apply_scheme
from compress.svd import SvdCache
from compress.targets import discover_targets

ATOL = 2e-5
BLOCKS = [(1, 1), (4, 1), (1, 4), (8, 1), (1, 8), (16, 1)]


pytestmark = pytest.mark.usefixtures("one_torch_thread", "cpp_extension")


def pruned(weight: torch.Tensor, share: float, block: tuple[int, int] = (1, 1), seed: int = 0) -> torch.Tensor:
    """``weight`` with a random ``share`` of its ``block``-shaped blocks zeroed (a copy)."""
    bh, bw = block
    m, n = weight.shape
    generator = torch.Generator().manual_seed(seed)
    keep = torch.rand(m // bh, n // bw, generator=generator) >= share
    return weight * keep.repeat_interleave(bh, 0).repeat_interleave(bw, 1)


def prune_model(model: nn.Module, share: float, block: tuple[int, int] = (1, 1)) -> nn.Module:
    """Zero a ``share`` of every 2-D LSTM kernel, factor and Linear weight of ``model`` in place."""
    with torch.no_grad():
        for i, (name, p) in enumerate(model.named_parameters()):
            if p.dim() == 2 and "embedding" not in name and p.shape[0] % block[0] == 0 and p.shape[1] % block[1] == 0:
                p.copy_(pruned(p, share, block, seed=i))
    return model


# -- packed products ------------------------------------------------------------------------------
@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("rows", [1, 3, 8, 16, 37])
def test_sparse_linear_equals_dense(block, rows):
    torch.manual_seed(0)
    weight = pruned(torch.randn(64, 48), 0.7, block)
    packed = sparse.pack(weight, block)
    assert sparse.packed_block(packed) == block and packed.dtype == torch.int32
    x, bias = torch.randn(rows, 48), torch.randn(64)
    assert torch.allclose(sparse.sparse_linear(x, packed, bias), torch.addmm(bias, x, weight.t()), atol=ATOL)
    assert torch.allclose(sparse.sparse_linear(x, packed), x @ weight.t(), atol=ATOL)


def test_unstructured_zeros_of_any_density_and_empty_rows():
    torch.manual_seed(1)
    for share in (0.0, 0.5, 0.9, 0.99, 1.0):
        weight = pruned(torch.randn(32, 40), share)
        weight[3] = 0.0  # an empty row
        for block in BLOCKS:
            packed = sparse.pack(weight, block)
            x = torch.randn(5, 40)
            assert torch.allclose(sparse.sparse_linear(x, packed), x @ weight.t(), atol=ATOL)
            assert torch.allclose(sparse.sparse_linear(x[:1], packed), x[:1] @ weight.t(), atol=ATOL)


def test_packing_refuses_what_it_cannot_hold():
    with pytest.raises(RuntimeError, match="whole number"):
        sparse.pack(torch.randn(6, 8), (4, 1))
    with pytest.raises(RuntimeError, match="no kernel"):
        sparse.pack(torch.randn(8, 8), (2, 2))
    with pytest.raises(RuntimeError, match="not a packed sparse matrix"):
        sparse.sparse_linear(torch.randn(1, 4), torch.zeros(40, dtype=torch.int32))


def test_the_cheapest_block_shape_is_chosen():
    torch.manual_seed(2)
    weight = torch.randn(64, 64)
    assert sparse.choose_block(pruned(weight, 0.8, (4, 1))) in ((4, 1), (8, 1))  # about the same time here
    assert sparse.choose_block(pruned(weight, 0.8, (1, 4))) == (1, 4)
    assert sparse.choose_block(pruned(weight, 0.6, (8, 1))) == (8, 1)
    assert sparse.choose_block(pruned(weight, 0.9)) in ((4, 1), (8, 1))  # unstructured: column blocks beat CSR
    assert sparse.choose_block(pruned(torch.randn(63, 65), 0.9)) == (1, 1)  # no whole blocks: CSR
    assert sparse.choose_block(pruned(torch.randn(63, 64), 0.8, (1, 4))) == (1, 4)  # 63 rows: no 4 x 1 blocks


# -- the LSTM recurrence --------------------------------------------------------------------------
def reference_layer(x, kernel, bias, input_size, h, c):
    """The LSTM recurrence in PyTorch operations, gate order i, f, g, o."""
    outputs = []
    for t in range(x.shape[1]):
        i, f, g, o = torch.addmm(bias, torch.cat([x[:, t], h], dim=1), kernel.t()).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outputs.append(h)
    return torch.stack(outputs, dim=1), h, c


@pytest.mark.parametrize("block", [(1, 1), (4, 1), (1, 4)])
@pytest.mark.parametrize("batch", [1, 3, 16, 19])
def test_sparse_layer_equals_the_dense_recurrence(block, batch):
    torch.manual_seed(3)
    layer = ConcatLSTM(12, 16).eval()
    with torch.no_grad():
        layer.kernel.copy_(pruned(layer.kernel * 3, 0.8, block))
        layer.bias.normal_(0.0, 0.3)
    x, h0, c0 = torch.randn(batch, 9, 12), torch.randn(batch, 16) * 0.5, torch.randn(batch, 16) * 0.5
    with torch.no_grad():
        out, (h, c) = sparse.sparse_layer_forward(x, layer.kernel, layer.bias, 12, (h0, c0), 0.5)
        ref, ref_h, ref_c = reference_layer(x, layer.kernel, layer.bias, 12, h0, c0)
        dense_out, (dense_h, _) = layer(x, (h0, c0))  # no threshold set: the fused dense kernel
    assert torch.allclose(out, ref, atol=ATOL) and torch.allclose(h, ref_h, atol=ATOL)
    assert torch.allclose(c, ref_c, atol=ATOL) and torch.allclose(out, dense_out, atol=ATOL)


@pytest.mark.parametrize("batch", [1, 5])
def test_the_dense_benchmark_kernel_equals_the_dense_recurrence(batch):
    """dense_forward (the dense loop the sparse and factorized kernels are timed against) computes the LSTM."""
    torch.manual_seed(5)
    kernel, bias = torch.randn(64, 28) * 0.3, torch.randn(64) * 0.3
    x, h0, c0 = torch.randn(batch, 9, 12), torch.randn(batch, 16) * 0.5, torch.randn(batch, 16) * 0.5
    ops = torch.ops.shrinkml_lowrank
    x_gates = torch.addmm(bias, x.reshape(-1, 12), kernel[:, :12].t()).reshape(batch, 9, 64)
    out, h, c = ops.dense_forward(x_gates, ops.pack_dense(kernel[:, 12:].contiguous()), h0, c0)
    ref, ref_h, ref_c = reference_layer(x, kernel, bias, 12, h0, c0)
    assert torch.allclose(out, ref, atol=ATOL) and torch.allclose(h, ref_h, atol=ATOL)
    assert torch.allclose(c, ref_c, atol=ATOL)
    empty, h_empty, _ = ops.dense_forward(x_gates[:, :0].contiguous(), ops.pack_dense(kernel[:, 12:].contiguous()),
                                          h0, c0)
    assert empty.shape == (batch, 0, 16) and torch.equal(h_empty, h0)


def test_a_layer_decodes_sparse_above_its_threshold_only(monkeypatch):
    torch.manual_seed(4)
    layer = ConcatLSTM(12, 16).eval()
    with torch.no_grad():
        layer.kernel.copy_(pruned(layer.kernel, 0.6))
    calls = []
    real = torch.ops.shrinkml_lowrank.sparse_lstm_forward

    def counting(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(torch.ops.shrinkml_lowrank, "sparse_lstm_forward", counting)
    x = torch.randn(2, 7, 12)
    with torch.no_grad():
        dense, _ = layer(x)
        for threshold, used in ((None, 0), (0.7, 0), (0.5, 1)):
            layer.sparse_min_sparsity = threshold
            out, _ = layer(x)
            assert len(calls) == used and torch.allclose(out, dense, atol=ATOL)
        layer.train()
    layer.sparse_min_sparsity = 0.5
    layer(x)  # gradients on: training keeps the dense kernel on the weights with their zeros
    assert len(calls) == 1


def test_a_changed_kernel_is_packed_again():
    torch.manual_seed(5)
    layer = ConcatLSTM(8, 8).eval()
    layer.sparse_min_sparsity = 0.5
    x = torch.randn(1, 5, 8)
    with torch.no_grad():
        layer.kernel.copy_(pruned(layer.kernel, 0.7))
        first, _ = layer(x)
        layer.kernel.mul_(2.0)  # in place: a new version of the same tensor
        second, _ = layer(x)
        reference, _, _ = reference_layer(x, layer.kernel, layer.bias, 8, torch.zeros(1, 8), torch.zeros(1, 8))
    assert not torch.allclose(first, second) and torch.allclose(second, reference, atol=ATOL)


# -- whole models ------------------------------------------------------------------------------
def make_model(seed: int = 0) -> AsrModel:
    torch.manual_seed(seed)
    model = AsrModel(40, 20, **tiny_model_config(init_r=-2.0)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.3)
        model.decoder.attention.mono_query.weight.mul_(8.0)
    return model


def low_rank(model: AsrModel) -> AsrModel:
    targets = discover_targets(model, exclude=["ctc_head"])
    ranks = {t.name: max(1, min(t.shape) // 2) for t in targets}
    return apply_scheme(model, Scheme.build(targets, ranks, "uniform"), targets, SvdCache()).eval()


def decode_all(model: AsrModel, threshold: float | None):
    model.set_decoding(1.0, False, threshold)
    torch.manual_seed(7)
    features, lengths = torch.randn(3, 48, 20), torch.tensor([48, 40, 33])
    with torch.no_grad():
        memory, _ = model.encode(features, lengths)
        greedy = model.greedy_decode(features, lengths)
        beam = model.beam_decode(features[:1], lengths[:1], 3)
        single = model.greedy_decode(features[:1], lengths[:1])
    return memory, greedy, beam, single


@pytest.mark.parametrize("block", [(1, 1), (4, 1), (1, 4)])
@pytest.mark.parametrize("factorized", [False, True])
def test_a_pruned_model_decodes_the_same_on_sparse_kernels(block, factorized):
    model = make_model()
    model = prune_model(low_rank(model) if factorized else model, 0.75, block)
    memory, greedy, beam, single = decode_all(model, None)
    memory_s, greedy_s, beam_s, single_s = decode_all(model, 0.5)
    assert torch.allclose(memory, memory_s, atol=1e-4)
    assert (greedy, beam, single) == (greedy_s, beam_s, single_s)


def test_the_decoder_step_holds_packed_weights_and_equals_the_pytorch_step():
    model = prune_model(make_model(1), 0.8, (4, 1))
    model.set_decoding(1.0, False, 0.5)
    decoder = model.decoder
    torch.manual_seed(8)
    memory, mask = torch.randn(2, 12, 16), torch.ones(2, 12, dtype=torch.bool)
    with torch.no_grad():
        plan = decoder.inference_plan()
        packed = [w for w in (*plan.cell, *plan.mono_query, *plan.chunk_query, *plan.pre_output[0], *plan.output[0])]
        assert all(w.dtype == torch.int32 for w in packed)  # every pruned step weight runs sparse
        keys = decoder.attention.keys(memory)
        state = decoder.initial_state(memory)
        tokens = torch.tensor([1, 5])
        for _ in range(4):
            fast = decoder.step(memory, keys, mask, tokens, state, plan)
            slow = decoder.step(memory, keys, mask, tokens, state, None)
            assert torch.allclose(fast[0], slow[0], atol=1e-4) and torch.equal(fast[1].boundary, slow[1].boundary)
            state, tokens = fast[1], fast[0].argmax(dim=-1)
        model.set_decoding(1.0, False, 0.9)  # above every weight's sparsity: dense weights in the plan
        assert all(w.dtype == torch.float32 for w in decoder.inference_plan().cell)


def test_no_plan_or_dense_where_the_sparse_kernels_do_not_apply():
    model = prune_model(make_model(2), 0.8)
    model.set_decoding(1.0, False, 0.5)
    decoder = model.decoder
    assert decoder.inference_plan() is None  # gradients on
    with torch.no_grad():
        assert sparse.sparse_weight(decoder.output.weight.double(), 0.5) is None  # not float32
        assert sparse.sparse_weight(decoder.output.weight, None) is None
        assert sparse.sparse_weight(decoder.output.weight, 0.5).dtype == torch.int32
    assert fast_decode.step_plan(decoder.train()) is None


def test_the_decoding_setting_is_checked_and_optional_in_old_checkpoints():
    model = make_model()
    model.set_decoding(1.0, False, 0.7)
    assert model.decoder.sparse_min_sparsity == 0.7
    assert all(layer.sparse_min_sparsity == 0.7 for layer in model.encoder.layers)
    for bad in (1.5, -0.1, "half", float("nan")):
        with pytest.raises(ValueError, match="decoding.sparse_min_sparsity"):
            model.set_decoding(1.0, False, bad)
    old = {k: v for k, v in tiny_decoding().items() if k != "sparse_min_sparsity"}
    assert decoding_settings(old)["sparse_min_sparsity"] is None  # written before the key: dense kernels
    assert tiny_decoding()["sparse_min_sparsity"] == decoding_settings(tiny_decoding())["sparse_min_sparsity"]
