"""Inference path of factorized LSTM layers: the C++ recurrence and its PyTorch fallback against the
dense fused kernel, the factorized reference recurrence and the (unchanged) training path."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch
from asr_helpers import load_benchmark
from torch import nn
from torch.nn.utils import parametrize
from torch.utils import cpp_extension

from asr import kernels
from asr.model import lowrank_lstm
from asr.model import lstm as lstm_module
from asr.model.asr_model import AsrModel
from asr.model.lowrank_lstm import factorized_lstm_forward, factorized_lstm_forward_python, low_rank_factors
from asr.model.lstm import ConcatLSTM, ConcatLSTMCell
from compress.lowrank import factorize_kernel, factorized_lstm_reference
from compress.scheme import Scheme, apply_scheme
from compress.svd import Spectrum, SvdCache
from compress.targets import discover_targets

IN, H = 5, 7
ATOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def extension() -> None:
    """Builds the C++ extension once for the module (cached on disk afterwards)."""
    info = lowrank_lstm.backend_info()
    if info["backend"] != "cpp":
        pytest.skip(f"C++ extension not available: {info['reason']}")


@pytest.fixture(params=["cpp", "python"])
def backend(request, monkeypatch) -> str:
    """Runs a test on the C++ extension and on the PyTorch fallback."""
    if request.param == "cpp":
        request.getfixturevalue("extension")
    else:
        monkeypatch.setattr(lowrank_lstm, "_uses_extension", lambda *tensors: False)
    return request.param


def dense_layer(seed: int = 0) -> ConcatLSTM:
    torch.manual_seed(seed)
    layer = ConcatLSTM(IN, H)
    with torch.no_grad():
        layer.bias.normal_()
    return layer


def factorized_copy(layer: ConcatLSTM | ConcatLSTMCell, rank: int | None = None) -> ConcatLSTM | ConcatLSTMCell:
    """A copy of ``layer`` whose kernel is its SVD product at ``rank`` (full rank by default)."""
    out = type(layer)(layer.input_size, layer.hidden_size)
    out.load_state_dict(layer.state_dict())
    u, v = Spectrum.of(layer.kernel).factors(rank or min(layer.kernel.shape))
    factorize_kernel(out, u.contiguous(), v.contiguous())
    return out


def random_state(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch, H), torch.randn(batch, H)


def test_low_rank_factors_follows_the_parametrization_contract():
    layer = dense_layer()
    assert low_rank_factors(layer) is None
    factorized = factorized_copy(layer, 3)
    u, v = low_rank_factors(factorized)
    assert u is factorized.parametrizations.kernel.original0 and v is factorized.parametrizations.kernel.original1
    assert u.shape == (4 * H, 3) and v.shape == (3, IN + H)

    class Scale(nn.Module):  # one original, no rank: not a low-rank product
        def forward(self, kernel):
            return 2 * kernel

    other = dense_layer()
    parametrize.register_parametrization(other, "kernel", Scale())
    assert low_rank_factors(other) is None


@pytest.mark.parametrize("batch", [1, 7])  # 1: row after row; 7: rows together, blocks of 4, 2 and 1 rows
@pytest.mark.parametrize("with_state", [False, True])
def test_full_rank_inference_matches_the_dense_fused_kernel(backend, batch, with_state):
    assert 1 <= lowrank_lstm.GEMV_ROWS < 7  # so that the two batches take the two paths
    layer = dense_layer()
    factorized = factorized_copy(layer)
    x = torch.randn(batch, 11, IN)
    state = random_state(batch) if with_state else None
    with torch.no_grad():
        out, (h, c) = factorized(x, state)
        ref_out, (ref_h, ref_c) = layer(x, state)
    assert out.shape == (batch, 11, H) and h.shape == c.shape == (batch, H)
    torch.testing.assert_close(out, ref_out, atol=ATOL, rtol=0)
    torch.testing.assert_close(h, ref_h, atol=ATOL, rtol=0)
    torch.testing.assert_close(c, ref_c, atol=ATOL, rtol=0)


@pytest.mark.parametrize("batch", [1, 6])
def test_low_rank_inference_matches_the_reference_recurrence(backend, batch):
    layer = factorized_copy(dense_layer(1), 3)
    u, v = low_rank_factors(layer)
    x = torch.randn(batch, 13, IN)
    with torch.inference_mode():
        out, _ = layer(x)
    reference = factorized_lstm_reference(x, u.detach(), v.detach(), layer.bias.detach(), H)
    torch.testing.assert_close(out, reference, atol=ATOL, rtol=0)


@pytest.mark.parametrize("batch", [1, 6])
def test_state_carried_across_two_chunks_equals_one_pass(backend, batch):
    layer = factorized_copy(dense_layer(2), 4)
    x = torch.randn(batch, 12, IN)
    state = random_state(batch)
    with torch.no_grad():
        whole, (h, c) = layer(x, state)
        first, mid = layer(x[:, :5], state)
        second, (h2, c2) = layer(x[:, 5:], mid)
        empty, (h3, c3) = layer(x[:, :0], (h2, c2))  # an empty chunk keeps the state
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole, atol=ATOL, rtol=0)
    torch.testing.assert_close(h2, h, atol=ATOL, rtol=0)
    torch.testing.assert_close(c2, c, atol=ATOL, rtol=0)
    assert empty.shape == (batch, 0, H)
    torch.testing.assert_close(h3, h2, atol=0, rtol=0)
    torch.testing.assert_close(c3, c2, atol=0, rtol=0)


@pytest.mark.parametrize("batch", [1, 6])
def test_extension_and_fallback_agree_on_random_inputs(extension, batch):
    torch.manual_seed(3)
    k = 5
    x_proj, v_h, u = torch.randn(batch, 9, k), torch.randn(k, H), torch.randn(4 * H, k)
    bias, (h0, c0) = torch.randn(4 * H), random_state(batch)
    initial = h0.clone(), c0.clone()
    fast = factorized_lstm_forward(x_proj, v_h, u, bias, h0, c0)
    slow = factorized_lstm_forward_python(x_proj, v_h, u, bias, h0, c0)
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    assert torch.equal(h0, initial[0]) and torch.equal(c0, initial[1])  # the state is read, not updated
    packed = lowrank_lstm.pack_factors(v_h, u, bias)
    again = factorized_lstm_forward(x_proj, v_h, u, bias, h0, c0, packed)
    assert all(torch.equal(a, b) for a, b in zip(fast, again, strict=True))


def test_saturated_gates_stay_finite_and_exact(extension):
    """The extension's own exp at and beyond its clamping range."""
    torch.manual_seed(4)
    x_proj = 200 * torch.randn(2, 6, 3)
    v_h, u, bias = torch.randn(3, H), 50 * torch.randn(4 * H, 3), torch.randn(4 * H)
    h0, c0 = random_state(2)
    fast = factorized_lstm_forward(x_proj, v_h, u, bias, h0, c0)
    slow = factorized_lstm_forward_python(x_proj, v_h, u, bias, h0, c0)
    assert all(torch.isfinite(t).all() for t in fast)
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def test_factorized_cell_equals_the_dense_cell_on_the_product():
    torch.manual_seed(5)
    cell = ConcatLSTMCell(IN, H)
    with torch.no_grad():
        cell.bias.normal_()
    factorized = factorized_copy(cell, 3)
    dense = ConcatLSTMCell(IN, H)
    with torch.no_grad():
        dense.kernel.copy_(factorized.kernel)
        dense.bias.copy_(cell.bias)
    x, state = torch.randn(4, IN), random_state(4)
    for got, want in zip(factorized(x, state), dense(x, state), strict=True):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    factorized(x, state)[0].sum().backward()
    assert factorized.parametrizations.kernel.original0.grad is not None
    assert factorized.parametrizations.kernel.original1.grad is not None


def test_training_path_is_the_exact_fused_kernel_and_trains_u_and_v():
    layer = factorized_copy(dense_layer(6), 3)
    u, v = low_rank_factors(layer)
    x = torch.randn(2, 8, IN)
    out, _ = layer(x)  # gradients on: the fused kernel on U @ V
    assert out.requires_grad
    out.pow(2).sum().backward()
    grads = u.grad.clone(), v.grad.clone()
    u_ref, v_ref = u.detach().clone().requires_grad_(), v.detach().clone().requires_grad_()
    reference = factorized_lstm_reference(x, u_ref, v_ref, layer.bias.detach(), H)
    torch.testing.assert_close(out.detach(), reference.detach(), atol=ATOL, rtol=0)
    reference.pow(2).sum().backward()
    torch.testing.assert_close(grads[0], u_ref.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(grads[1], v_ref.grad, atol=1e-4, rtol=1e-4)


def test_compressed_model_encodes_and_decodes_the_same_on_the_fast_path(extension, monkeypatch):
    calls = []
    fast_layer = lstm_module.factorized_layer_forward
    monkeypatch.setattr(lstm_module, "factorized_layer_forward", lambda *args: calls.append(1) or fast_layer(*args))
    torch.manual_seed(7)
    model = AsrModel(30, 20, dict(hidden_size=16, num_layers=2, pool=[2]),
                     dict(hidden_size=16, attention_size=8, embedding_size=8, pre_output_size=12)).eval()
    targets = discover_targets(model)
    scheme = Scheme.build(targets, {t.name: min(4, t.max_rank) for t in targets}, "uniform")
    compressed = apply_scheme(model, scheme, targets, SvdCache())
    x, lengths = torch.randn(2, 40, 20), torch.tensor([40, 33])
    exact, _ = compressed.encode(x, lengths)  # gradients on: fused kernel on the rebuilt products
    assert not calls
    with torch.inference_mode():
        fast, _ = compressed.encode(x, lengths)
        tokens = compressed.greedy_decode(x, lengths)
    assert len(calls) == 4  # both encoder layers, in encode and in greedy_decode
    torch.testing.assert_close(fast, exact.detach(), atol=ATOL, rtol=0)
    with torch.no_grad():
        streamed, state = [], compressed.encoder.initial_state()
        for start in range(0, 40, 7):
            out, state = compressed.encoder.stream(x[:1, start : start + 7], state)
            streamed.append(out)
    torch.testing.assert_close(torch.cat(streamed, dim=1), exact[:1].detach(), atol=ATOL, rtol=0)
    assert len(tokens) == 2


def test_an_unavailable_extension_falls_back_with_one_warning(monkeypatch, caplog):
    monkeypatch.setattr(lowrank_lstm, "_status", {"backend": None, "reason": None, "build_seconds": None})
    monkeypatch.setenv(lowrank_lstm.ENV_SWITCH, "0")
    with caplog.at_level(logging.WARNING, logger=lowrank_lstm.__name__):
        assert lowrank_lstm.backend() == "python"
        assert lowrank_lstm.backend() == "python"
        layer = factorized_copy(dense_layer(8), 3)
        with torch.no_grad():
            out, _ = layer(torch.randn(1, 4, IN))
    warnings = [r for r in caplog.records if r.name == lowrank_lstm.__name__]
    assert len(warnings) == 1 and lowrank_lstm.ENV_SWITCH in warnings[0].getMessage()
    assert lowrank_lstm.backend_info()["reason"].startswith("switched off")
    assert out.shape == (1, 4, H)


def test_a_missing_compiler_or_source_is_a_clear_reason_for_the_fallback(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(kernels, "_loaded", False)
    monkeypatch.setenv("CXX", "no-such-compiler-shrinkml")
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler 'no-such-compiler-shrinkml' on PATH"):
        kernels.load()
    monkeypatch.setattr(lowrank_lstm, "_status", {"backend": None, "reason": None, "build_seconds": None})
    monkeypatch.delenv(lowrank_lstm.ENV_SWITCH, raising=False)
    with caplog.at_level(logging.WARNING, logger=lowrank_lstm.__name__):
        assert lowrank_lstm.backend() == "python"
    assert "no C++ compiler" in lowrank_lstm.backend_info()["reason"]
    monkeypatch.setattr(kernels, "CSRC", tmp_path)
    with pytest.raises(FileNotFoundError, match=", ".join(kernels.SOURCES) + " missing"):
        kernels.load()


def test_the_build_folder_is_keyed_by_the_sources_and_flags(tmp_path, monkeypatch):
    """Every checkout builds into a folder of its own (the build files name their sources by path), even with the
    same sources; one checkout's folder changes with its sources and flags."""
    one, two = tmp_path / "one", tmp_path / "two"
    for checkout in (one, two):
        shutil.copytree(kernels.CSRC, checkout)
    assert len({kernels.build_name(one), kernels.build_name(two), kernels.build_name()}) == 3
    assert kernels.build_name(one) == kernels.build_name(tmp_path / "." / "one")  # the folder, however named
    assert kernels.build_name().startswith(kernels.NAME + "_") and kernels.build_name().isidentifier()
    before = kernels.build_name(two)
    header = two / "lstm_math.h"
    header.write_text(header.read_text() + "\n// changed\n")  # a header only: included, not compiled itself
    assert kernels.build_name(two) != before
    before = kernels.build_name(one)
    (one / "extra.cpp").write_text("// new source\n")
    assert kernels.build_name(one) != before
    assert kernels.build_name(cflags=("-O2",)) != kernels.build_name()
    names = []

    def fake_load(name, *args, **kwargs):  # record the name instead of compiling
        names.append(name)
        raise RuntimeError("stop")

    monkeypatch.setattr(kernels, "_loaded", False)
    monkeypatch.setattr(cpp_extension, "load", fake_load)
    with pytest.raises(RuntimeError, match="stop"):
        kernels.load()
    assert names == [kernels.build_name()]


def test_dense_kernel_on_the_extension_loop_matches_the_fused_kernel(extension):
    """The comparison kernel of benchmarks/measured_speedup.py (dense weights on the extension's loop)."""
    dense_layer_forward = load_benchmark("measured_speedup").dense_layer_forward
    layer = dense_layer(9)
    x, state = torch.randn(2, 10, IN), random_state(2)
    with torch.no_grad():
        out, (h, c) = dense_layer_forward(x, layer.kernel, layer.bias, state)
        ref_out, (ref_h, ref_c) = layer(x, state)
        for got, want in ((out, ref_out), (h, ref_h), (c, ref_c)):
            torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
        layer.kernel.mul_(0.5)  # the packed weights follow an in-place update
        out, _ = dense_layer_forward(x, layer.kernel, layer.bias, None)
        torch.testing.assert_close(out, layer(x)[0], atol=ATOL, rtol=0)


@pytest.mark.parametrize("factorized", [False, True])
def test_weights_kept_for_inference_follow_in_place_updates(factorized):
    """Validation between optimizer steps: inference must see the updated weights."""
    layer = factorized_copy(dense_layer(10), 3) if factorized else dense_layer(10)
    weight = low_rank_factors(layer)[0] if factorized else layer.kernel
    x = torch.randn(1, 6, IN)
    with torch.no_grad():
        before, _ = layer(x)
        weight.mul_(1.5)  # an optimizer step updates parameters in place
        after, _ = layer(x)
    exact, _ = layer(x)  # gradients on: nothing kept
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, exact.detach(), atol=ATOL, rtol=0)
