"""Streaming encoder: pooled output lengths, chunked streaming == offline, config validation."""

from __future__ import annotations

import pytest
import torch

from asr.model.encoder import Encoder

F_IN, H = 6, 12


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_encoder(pool, num_layers=3) -> Encoder:
    torch.manual_seed(0)
    return Encoder(F_IN, H, num_layers, pool=pool).eval()


@pytest.mark.parametrize(("pool", "reduction"), [([2, 2], 4), ([3], 3), ([2, 1, 2], 4), ([], 1), (None, 1)])
def test_output_length_is_floor_divided_by_each_pool_factor(pool, reduction):
    encoder = make_encoder(pool)
    assert encoder.reduction == reduction
    lengths = torch.tensor([23, 17, 4, 1])
    x = torch.randn(4, 23, F_IN)
    out, out_lengths = encoder(x, lengths)
    expected = lengths.clone()
    for p in pool or []:
        expected = expected // p
    assert out_lengths.tolist() == expected.tolist()
    assert out.shape == (4, int(expected[0]), H)


def test_pooling_takes_the_max_over_whole_groups_after_each_layer():
    """Each pooled layer drops its trailing partial group; the output is the max over each group."""
    encoder = make_encoder([2, 3], num_layers=2)
    x = torch.randn(1, 14, F_IN)
    out, lengths = encoder(x, torch.tensor([14]))
    assert int(lengths) == 14 // 2 // 3 == out.shape[1]
    first, _ = encoder.layers[0](x)
    pooled = first[:, :14].reshape(1, 7, 2, H).amax(dim=2)
    second, _ = encoder.layers[1](pooled)
    expected = second[:, :6].reshape(1, 2, 3, H).amax(dim=2)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("pool", [[2, 2], [3, 1, 2], []])
def test_stream_in_random_chunks_equals_forward(pool):
    encoder = make_encoder(pool)
    x = torch.randn(2, 41, F_IN)
    offline, lengths = encoder(x, torch.tensor([41, 41]))
    state = encoder.initial_state()
    pieces, start = [], 0
    for size in [3, 7, 1, 10, 2, 0, 5, 13]:
        new, state = encoder.stream(x[:, start : start + size], state)
        assert new.shape[0] == 2 and new.shape[2] == H
        pieces.append(new)
        start += size
    assert start == 41
    streamed = torch.cat(pieces, dim=1)
    assert streamed.shape == offline.shape
    assert streamed.shape[1] == int(lengths[0])
    torch.testing.assert_close(streamed, offline, atol=1e-5, rtol=0)


def test_stream_frame_by_frame_emits_as_soon_as_a_group_is_complete():
    encoder = make_encoder([2, 2])
    x = torch.randn(1, 12, F_IN)
    state = encoder.initial_state()
    emitted = []
    for t in range(12):
        new, state = encoder.stream(x[:, t : t + 1], state)
        emitted.append(new.shape[1])
    # reduction 4: one encoder frame after every 4th input frame, never earlier
    assert emitted == [0, 0, 0, 1] * 3
    offline, _ = encoder(x, torch.tensor([12]))
    assert offline.shape[1] == 3


@pytest.mark.parametrize(("pool", "layers"), [([2, 2, 2], 2), ([2, 0], 3), ([-1], 2)])
def test_invalid_pool_config_raises(pool, layers):
    with pytest.raises(ValueError, match="pool"):
        Encoder(F_IN, H, layers, pool=pool)


def test_input_stacking_reduces_time_and_streams_like_the_whole_input():
    import torch

    from asr.model.encoder import Encoder

    torch.manual_seed(0)
    encoder = Encoder(5, 8, 3, [2, 2], input_stack=3).eval()
    x = torch.randn(2, 61, 5)
    out, lengths = encoder(x, torch.tensor([61, 50]))
    assert encoder.reduction == 12 and out.shape == (2, 5, 8) and lengths.tolist() == [5, 4]
    state, pieces = encoder.initial_state(), []
    for start, end in [(0, 7), (7, 8), (8, 20), (20, 61)]:
        piece, state = encoder.stream(x[:, start:end], state)
        pieces.append(piece)
    assert torch.allclose(torch.cat(pieces, dim=1), out, atol=1e-6)


def test_layer_norm_keeps_streaming_equal_to_the_whole_input_and_normalizes_each_frame():
    import torch

    from asr.model.encoder import Encoder

    torch.manual_seed(0)
    encoder = Encoder(5, 8, 3, [2, 2], layer_norm=True).eval()
    x = torch.randn(2, 61, 5)
    out, _ = encoder(x, torch.tensor([61, 50]))
    assert torch.allclose(out.mean(dim=-1), torch.zeros(2, out.shape[1]), atol=1e-5)
    state, pieces = encoder.initial_state(), []
    for start, end in [(0, 9), (9, 10), (10, 61)]:
        piece, state = encoder.stream(x[:, start:end], state)
        pieces.append(piece)
    assert torch.allclose(torch.cat(pieces, dim=1), out, atol=1e-5)
