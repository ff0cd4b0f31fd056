"""ConcatLSTM / ConcatLSTMCell: one ``[W_ih | W_hh]`` kernel, same maths as ``torch.nn.LSTM``."""

from __future__ import annotations

import pytest
import torch

from asr.model.lstm import ConcatLSTM, ConcatLSTMCell

IN, H = 5, 7


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def reference_lstm(layer: ConcatLSTM | ConcatLSTMCell) -> torch.nn.LSTM:
    """A ``torch.nn.LSTM`` carrying the same weights: kernel split into W_ih, W_hh; b_ih = bias, b_hh = 0."""
    ref = torch.nn.LSTM(IN, H, batch_first=True)
    w_ih, w_hh = layer.kernel.detach().split([IN, H], dim=1)
    with torch.no_grad():
        ref.weight_ih_l0.copy_(w_ih)
        ref.weight_hh_l0.copy_(w_hh)
        ref.bias_ih_l0.copy_(layer.bias)
        ref.bias_hh_l0.zero_()
    return ref


@pytest.fixture
def layer() -> ConcatLSTM:
    torch.manual_seed(0)
    layer = ConcatLSTM(IN, H)
    with torch.no_grad():  # non-trivial bias (the default is zeros with forget bias 1)
        layer.bias.normal_()
    return layer


def test_parameters_are_one_kernel_and_a_bias(layer):
    assert dict(layer.named_parameters()).keys() == {"kernel", "bias"}
    assert layer.kernel.shape == (4 * H, IN + H)
    assert layer.bias.shape == (4 * H,)
    fresh = ConcatLSTM(IN, H, forget_bias=1.0)
    assert torch.equal(fresh.bias[H : 2 * H], torch.ones(H))  # forget gate is PyTorch's second gate
    assert torch.equal(fresh.bias[:H], torch.zeros(H))


@pytest.mark.parametrize("with_state", [False, True])
def test_matches_torch_lstm(layer, with_state):
    ref = reference_lstm(layer)
    x = torch.randn(3, 11, IN)
    state = (torch.randn(3, H), torch.randn(3, H)) if with_state else None
    out, (h, c) = layer(x, state)
    ref_state = None if state is None else (state[0].unsqueeze(0), state[1].unsqueeze(0))
    ref_out, (ref_h, ref_c) = ref(x, ref_state)
    assert out.shape == (3, 11, H) and h.shape == (3, H) and c.shape == (3, H)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=0)
    torch.testing.assert_close(h, ref_h.squeeze(0), atol=1e-5, rtol=0)
    torch.testing.assert_close(c, ref_c.squeeze(0), atol=1e-5, rtol=0)
    torch.testing.assert_close(h, out[:, -1], atol=1e-6, rtol=0)


def test_two_chunks_with_carried_state_equal_one_pass(layer):
    x = torch.randn(2, 13, IN)
    whole, (h, c) = layer(x)
    first, state = layer(x[:, :5])
    second, (h2, c2) = layer(x[:, 5:], state)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole, atol=1e-5, rtol=0)
    torch.testing.assert_close(h2, h, atol=1e-5, rtol=0)
    torch.testing.assert_close(c2, c, atol=1e-5, rtol=0)


def test_gradients_reach_kernel_and_bias(layer):
    x = torch.randn(2, 6, IN, requires_grad=True)
    out, (h, c) = layer(x)
    (out.square().sum() + c.sum()).backward()
    for name in ("kernel", "bias"):
        grad = getattr(layer, name).grad
        assert grad is not None, name
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    # both halves of the kernel (input and recurrent weights) are trained
    g_ih, g_hh = layer.kernel.grad.split([IN, H], dim=1)
    assert g_ih.abs().sum() > 0 and g_hh.abs().sum() > 0
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_gradients_match_torch_lstm(layer):
    ref = reference_lstm(layer)
    x = torch.randn(2, 6, IN)
    layer(x)[0].sum().backward()
    ref(x)[0].sum().backward()
    expected = torch.cat([ref.weight_ih_l0.grad, ref.weight_hh_l0.grad], dim=1)
    torch.testing.assert_close(layer.kernel.grad, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(layer.bias.grad, ref.bias_ih_l0.grad, atol=1e-5, rtol=1e-4)


def test_cell_step_by_step_equals_sequence_layer(layer):
    cell = ConcatLSTMCell(IN, H)
    with torch.no_grad():
        cell.kernel.copy_(layer.kernel)
        cell.bias.copy_(layer.bias)
    x = torch.randn(3, 9, IN)
    out, (h_last, c_last) = layer(x)
    state = cell.initial_state(3, x)
    assert all(torch.equal(s, torch.zeros(3, H)) for s in state)
    steps = []
    for t in range(x.shape[1]):
        state = cell(x[:, t], state)
        steps.append(state[0])
    torch.testing.assert_close(torch.stack(steps, dim=1), out, atol=1e-5, rtol=0)
    torch.testing.assert_close(state[0], h_last, atol=1e-5, rtol=0)
    torch.testing.assert_close(state[1], c_last, atol=1e-5, rtol=0)
