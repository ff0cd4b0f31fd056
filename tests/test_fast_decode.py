"""The C++ decoder step (asr.model.fast_decode) against the PyTorch step it replaces: dense and
compressed decoders, padded batches, the hard-attention fallback, expanded (beam) inputs, greedy and
beam decoding end to end, and the cases where no plan is made."""

from __future__ import annotations

import pytest
import torch
from asr_helpers import tiny_model_config
from torch import nn

from asr.data.tokenizer import BOS_ID
from asr.model import fast_decode, lowrank_lstm
from asr.model.asr_model import AsrModel
from compress.scheme import Scheme, apply_scheme
from compress.svd import SvdCache
from compress.targets import discover_targets, profile_uses

VOCAB, FEATS = 40, 20
ATOL = 2e-5


pytestmark = pytest.mark.usefixtures("one_torch_thread", "cpp_extension")


def make_model(seed: int = 0, query_scale: float = 8.0, **decoder) -> AsrModel:
    torch.manual_seed(seed)
    model = AsrModel(VOCAB, FEATS, **tiny_model_config(**{"init_r": -2.0, **decoder})).eval()
    with torch.no_grad():  # biases away from zero, so that every term of the step matters
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.3)
        model.decoder.attention.mono_query.weight.mul_(query_scale)  # the decoder state moves the boundary
    return model


def compressed(model: AsrModel) -> AsrModel:
    """Every decoder target at a rank that pays, so the plan holds two-stage chains and a factorized cell."""
    targets = discover_targets(model, exclude=["ctc_head", "ctc_head.*"])
    ranks = {t.name: max(1, min(t.shape) // 3) if t.name.startswith("decoder.") else "full" for t in targets}
    model = apply_scheme(model, Scheme.build(targets, ranks, "uniform"), targets, SvdCache()).eval()
    assert lowrank_lstm.low_rank_factors(model.decoder.cell) is not None
    return model


def encoded(model: AsrModel, lengths=(30, 22, 15), seed: int = 3):
    """Random encoder output ``(B, T, D)`` (frames differ more than a random encoder's) and its mask."""
    generator = torch.Generator().manual_seed(seed)
    memory = 2 * torch.randn(len(lengths), max(lengths), model.decoder.attention.mono_key.in_features,
                             generator=generator)
    mask = torch.arange(memory.shape[1]).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    return memory, mask


def assert_same_step(a, b) -> None:
    (lp_a, state_a, w_a), (lp_b, state_b, w_b) = a, b
    assert torch.equal(torch.isinf(lp_a), torch.isinf(lp_b))
    finite = torch.isfinite(lp_a)
    torch.testing.assert_close(lp_a[finite], lp_b[finite], atol=ATOL, rtol=0)
    assert torch.equal(state_a.boundary, state_b.boundary)
    for name in ("h", "c", "context"):
        torch.testing.assert_close(getattr(state_a, name), getattr(state_b, name), atol=ATOL, rtol=0)
    torch.testing.assert_close(w_a, w_b, atol=ATOL, rtol=0)


def run_steps(model: AsrModel, steps: int = 12, expand: int = 0) -> list[torch.Tensor]:
    """Both steps side by side (the PyTorch step's tokens feed both); returns the boundaries per step."""
    decoder = model.decoder
    with torch.no_grad():
        memory, mask = encoded(model)
        keys = decoder.attention.keys(memory)
        if expand:  # beam search's layout: one utterance, its rows as stride-0 views
            memory, mask, keys = memory[:1].expand(expand, -1, -1), mask[:1].expand(expand, -1), tuple(
                k[:1].expand(expand, -1, -1) for k in keys)
        plan = decoder.inference_plan()
        assert plan is not None
        ref = fast = decoder.initial_state(memory)
        tokens = torch.full((memory.shape[0],), BOS_ID)
        boundaries = []
        for _ in range(steps):
            expected = decoder.step(memory, keys, mask, tokens, ref)
            got = decoder.step(memory, keys, mask, tokens, fast, plan)
            assert_same_step(expected, got)
            ref, fast = expected[1], got[1]
            boundaries.append(ref.boundary.clone())
            tokens = expected[0].argmax(dim=-1)
    return boundaries


@pytest.mark.parametrize("kind", ["dense", "compressed"])
def test_cpp_step_matches_the_pytorch_step(kind):
    model = make_model()
    model = compressed(model) if kind == "compressed" else model
    boundaries = torch.stack(run_steps(model))
    frames = encoded(model)[0].shape[1]
    # the comparison covered rows that stop inside the input, move on, and run off their (padded) end
    assert (boundaries < frames).any() and (boundaries.diff(dim=0) > 0).any()


def test_the_cpp_step_clocks_its_attention_part():
    """The clock that benchmarks/measured_speedup.py reads for its attention column."""
    clock = torch.ops.shrinkml_lowrank.take_attention_nanoseconds
    clock()
    run_steps(make_model(), steps=3)
    assert clock() > 0
    assert clock() == 0  # reading restarts the clock


def test_cpp_step_with_the_fallback_and_an_attention_that_never_fires():
    model = make_model(hard_fallback=True, init_r=-30.0)
    boundaries = torch.stack(run_steps(model, steps=6))
    assert (boundaries > 0).all()  # the fallback moved every row although no p reached 0.5
    model.decoder.attention.hard_fallback = False
    boundaries = torch.stack(run_steps(model, steps=3))
    assert (boundaries == encoded(model)[0].shape[1]).all()  # without it they all run off the end


def test_cpp_step_on_expanded_beam_rows():
    run_steps(make_model(seed=1), steps=8, expand=4)


@pytest.mark.parametrize("kind", ["dense", "compressed"])
def test_greedy_and_beam_decoding_give_the_same_tokens_with_and_without_the_cpp_step(kind, monkeypatch):
    model = make_model(seed=2)
    model = compressed(model) if kind == "compressed" else model
    x = torch.randn(3, 64, FEATS, generator=torch.Generator().manual_seed(5))
    lengths = torch.tensor([64, 50, 40])
    with torch.no_grad():
        fast_greedy, fast_beam = model.decode(x, lengths), model.decode(x, lengths, beam_size=3)
        monkeypatch.setattr(type(model.decoder), "inference_plan", lambda self: None)
        assert model.decode(x, lengths) == fast_greedy
        assert model.decode(x, lengths, beam_size=3) == fast_beam
    assert any(fast_greedy)


def test_no_plan_in_training_with_gradients_or_for_unknown_modules(monkeypatch):
    model = make_model()
    assert model.decoder.inference_plan() is None  # gradients on
    with torch.no_grad():
        assert model.decoder.inference_plan() is not None
        model.decoder.train()
        assert model.decoder.inference_plan() is None
        model.decoder.eval()
        quantized = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
        assert quantized.decoder.inference_plan() is None  # a dynamically quantized Linear is not an nn.Linear
        monkeypatch.setattr(lowrank_lstm, "_uses_extension", lambda *tensors: False)
        assert model.decoder.inference_plan() is None


def test_no_plan_while_hooks_watch_the_decoder_so_profiling_counts_every_product():
    model = make_model()
    targets = discover_targets(model, include=["decoder.*"])
    x, lengths = torch.randn(2, 64, FEATS), torch.tensor([64, 40])
    with torch.no_grad():
        handle = model.decoder.output.register_forward_hook(lambda *args: None)
        assert model.decoder.inference_plan() is None
        handle.remove()
        assert model.decoder.inference_plan() is not None
    profiled = profile_uses(model, targets, lambda: model.greedy_decode(x, lengths), audio_seconds=1.0)
    uses = {t.name: t.uses_per_second for t in profiled}
    assert uses["decoder.output"] > 0 and uses["decoder.cell"] == uses["decoder.output"]
    assert uses["decoder.attention.mono_query"] > 0


def test_linear_chain_reads_dense_and_two_stage_linears():
    dense = nn.Linear(6, 4)
    weights, bias = fast_decode.linear_chain(dense)
    assert weights == [dense.weight] and bias is dense.bias
    two_stage = nn.Module()
    two_stage.first, two_stage.second = nn.Linear(6, 2, bias=False), nn.Linear(2, 4)
    weights, bias = fast_decode.linear_chain(two_stage)
    assert weights == [two_stage.first.weight, two_stage.second.weight] and bias is two_stage.second.bias
    two_stage.first = nn.Linear(6, 2)  # a bias in the first stage is not y = U (V x) + b
    assert fast_decode.linear_chain(two_stage) is None
    assert fast_decode.linear_chain(nn.Conv1d(6, 4, 1)) is None
