"""compress.storage: the bytes a model ships in with its sparse targets stored sparse, counted format by format."""

from __future__ import annotations

import math

import pytest
import torch
from asr_helpers import small_asr_model
from torch import nn

from compress.quantize import quantize_rows
from compress.storage import (
    SCALE_BYTES,
    TargetTensor,
    index_width,
    model_storage,
    state_storage,
    target_tensors,
    tensor_storage,
)

LINEAR = TargetTensor("layer", "linear", "dense")


def test_index_width_is_the_narrowest_unsigned_integer():
    assert [index_width(v) for v in (0, 255, 256, 65535, 65536, 2**31)] == [1, 1, 2, 2, 4, 4]
    with pytest.raises(ValueError, match="negative"):
        index_width(-1)


def test_a_dense_matrix_ships_dense():
    entry = tensor_storage("w", torch.randn(16, 20) + 10.0, LINEAR)
    assert entry.sparse_format == "dense" and entry.sparse_bytes == entry.dense_bytes == 16 * 20 * 4
    assert entry.int8_format == "dense" and entry.int8_bytes == 16 * 20 + 16 * SCALE_BYTES
    assert entry.nonzeros == entry.numel == 320 and entry.sparsity == 0.0


def test_csr_counts_values_column_indices_and_row_pointers_of_their_width():
    weight = torch.zeros(8, 300)
    weight[torch.arange(8), torch.arange(8) * 37] = 1.5  # 8 nonzeros, columns up to 299: uint16 column indices
    weight[0, 1] = weight[0, 2] = -2.0
    entry = tensor_storage("w", weight, LINEAR)
    assert entry.nonzeros == 10 and entry.sparse_format == "csr"
    assert entry.sparse_bytes == 10 * 4 + 10 * 2 + 9 * 1  # values, uint16 columns, uint8 row pointers
    assert entry.int8_format == "csr" and entry.int8_bytes == 10 * 1 + 10 * 2 + 9 * 1 + 8 * SCALE_BYTES
    assert math.isclose(entry.sparsity, 1 - 10 / 2400)


def test_half_sparse_is_cheapest_as_a_bitmask():
    torch.manual_seed(0)
    weight = torch.randn(64, 64) * (torch.rand(64, 64) < 0.5)
    entry = tensor_storage("w", weight, LINEAR)
    nnz = int((weight != 0).sum())
    csr = nnz * 4 + nnz * 1 + 65 * 2
    assert entry.sparse_format == "bitmask" and entry.sparse_bytes == nnz * 4 + 64 * 64 // 8 < csr


@pytest.mark.parametrize("block", [(1, 4), (4, 1)])
def test_zeros_in_blocks_are_stored_by_block(block):
    torch.manual_seed(1)
    bh, bw = block
    keep = torch.rand(64 // bh, 128 // bw) < 0.2  # 80% of the blocks pruned
    weight = torch.randn(64, 128) * keep.repeat_interleave(bh, 0).repeat_interleave(bw, 1)
    weight[keep.repeat_interleave(bh, 0).repeat_interleave(bw, 1)] += 3.0  # no accidental zero inside a kept block
    entry = tensor_storage("w", weight, LINEAR)
    blocks = int(keep.sum())
    rows, cols = 64 // bh, 128 // bw
    indexed = blocks * 4 * 4 + blocks * index_width(cols - 1) + (rows + 1) * index_width(blocks)
    bitmask = blocks * 4 * 4 + rows * cols // 8  # one bit per block
    expected = min((indexed, f"bsr{bh}x{bw}"), (bitmask, f"bitmask{bh}x{bw}"))
    assert (entry.sparse_bytes, entry.sparse_format) == expected
    unstructured = tensor_storage("w", weight, LINEAR, blocks=())
    assert unstructured.sparse_format in ("csr", "bitmask") and unstructured.sparse_bytes > entry.sparse_bytes


def test_int8_counts_the_zeros_of_the_rounded_values():
    weight = torch.tensor([[100.0, 0.1, 0.0, 0.0] * 16] * 4)  # 0.1 rounds to 0 at a scale of 100 / 127
    entry = tensor_storage("w", weight, LINEAR)
    q, _ = quantize_rows(weight)
    assert entry.nonzeros == 128 and entry.int8_nonzeros == int((q != 0).sum()) == 64


def test_non_targets_and_integer_tensors_ship_dense_in_their_dtype():
    assert tensor_storage("b", torch.zeros(10)).sparse_bytes == 40  # not a target: dense even when all zero
    assert tensor_storage("w", torch.zeros(4, 4)).sparse_format == "dense"
    steps = tensor_storage("n", torch.tensor(7, dtype=torch.int64))
    assert steps.dense_bytes == steps.int8_bytes == 8


def test_targets_of_a_dense_and_of_a_low_rank_model():
    dense = small_asr_model()
    found = target_tensors(dense)
    assert found["encoder.layers.0.kernel"] == TargetTensor("encoder.layers.0", "lstm", "dense")
    assert found["decoder.output.weight"] == TargetTensor("decoder.output", "linear", "dense")
    assert "decoder.embedding.weight" not in found and "decoder.output.bias" not in found
    compressed = small_asr_model(compressed=True)
    keys = list(compressed.state_dict())
    for structure in (compressed, dense):  # the compressed model, or the dense structure of its state dict
        found = target_tensors(structure, keys)
        assert found["decoder.cell.parametrizations.kernel.original0"] == TargetTensor("decoder.cell", "lstm", "U")
        assert found["decoder.cell.parametrizations.kernel.original1"] == TargetTensor("decoder.cell", "lstm", "V")
        assert found["decoder.pre_output.first.weight"] == TargetTensor("decoder.pre_output", "linear", "V")
        assert found["decoder.pre_output.second.weight"] == TargetTensor("decoder.pre_output", "linear", "U")
        assert "decoder.pre_output.second.bias" not in found


def test_a_pruned_model_ships_smaller_and_masks_are_not_shipped():
    model = small_asr_model()
    before = model_storage(model)
    assert before.sparse_bytes == before.dense_bytes and before.nonzeros < before.params  # zero biases count
    targets = target_tensors(model)
    state = dict(model.state_dict())
    zeros = 0
    for key in targets:
        mask = torch.rand(state[key].shape) < 0.2
        state[key] = state[key] * mask
        state[key + "_mask"] = mask.float()
        zeros += int((~mask).sum())
    report = state_storage(state, targets)
    assert report.mask_bytes > 0 and not any(t.key.endswith("_mask") for t in report.tensors)
    assert report.params == before.params and report.nonzeros == before.nonzeros - zeros
    assert report.dense_bytes == before.dense_bytes and report.sparse_bytes < 0.55 * report.dense_bytes
    assert report.int8_bytes < report.sparse_bytes
    summary = report.summary()
    assert summary["params/nonzero"] == report.nonzeros and summary["bytes/sparse"] == report.sparse_bytes
    assert 0.75 < summary["sparsity/targets"] < 0.85
    assert set(report.targets()) == {t.target for t in targets.values()}


def test_dense_bytes_of_a_model_are_its_float32_state():
    model = nn.Sequential(nn.Linear(8, 4), nn.LayerNorm(4))
    report = model_storage(model)
    assert report.dense_bytes == sum(p.numel() * 4 for p in model.state_dict().values())
    assert [t.key for t in report.tensors if t.target] == ["0.weight"]
