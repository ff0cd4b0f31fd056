"""The fused decoding paths against the paths they replace: the whole greedy loop as one C++ call
(``fast_decode.fast_greedy``) against the Python loop over the C++ step and over the PyTorch step, and an encoder
layer's LayerNorm and pooling as one C++ pass (``Encoder.norm_pool``); dense, factorized and pruned models."""

from __future__ import annotations

import pytest
import torch
from asr_helpers import small_asr_model
from torch import nn

from asr.data.tokenizer import BOS_ID, EOS_ID
from asr.model import fast_decode
from asr.model.encoder import Encoder

ATOL = 2e-5

pytestmark = pytest.mark.usefixtures("one_torch_thread", "cpp_extension")


def pruned(model: nn.Module, share: float = 0.8) -> nn.Module:
    """Every matrix of ``model`` with a random ``share`` of its entries zeroed, in 4 x 1 blocks where they fit."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2 and p.shape[0] % 4 == 0:
                keep = torch.rand(p.shape[0] // 4, p.shape[1], generator=generator) >= share
                p.mul_(keep.repeat_interleave(4, 0))
    model.set_decoding(1.0, False, 0.5)
    return model


def sharpened(model: nn.Module) -> nn.Module:
    """Larger query weights and biases away from zero, so that the boundary moves and every term matters."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(len(name)))
        model.decoder.attention.mono_query.weight.mul_(8.0)
        output = model.decoder.output
        (output if isinstance(output, nn.Linear) else output.second).bias[EOS_ID] -= 2.0  # many steps before the end
    return model


MODELS = {
    "dense": lambda: sharpened(small_asr_model()),
    "factorized": lambda: sharpened(small_asr_model(compressed=True)),
    "pruned": lambda: pruned(sharpened(small_asr_model())),
    "pruned_factorized": lambda: pruned(sharpened(small_asr_model(compressed=True))),
}


def inputs(model: nn.Module, lengths=(37, 29, 12), seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    features = 2 * torch.randn(len(lengths), max(lengths), model.encoder.layers[0].input_size, generator=generator)
    return features, torch.tensor(lengths)


def python_step_scores(decoder, memory, keys, mask, tokens: torch.Tensor, plan) -> torch.Tensor:
    """Log-probabilities of ``tokens`` ``(B, S)`` fed step by step (teacher-forced greedy) through ``decoder.step``."""
    state = decoder.initial_state(memory)
    previous = torch.full((memory.shape[0],), BOS_ID, dtype=torch.long)
    scores = []
    for s in range(tokens.shape[1]):
        log_probs, state, _ = decoder.step(memory, keys, mask, previous, state, plan)
        scores.append(log_probs.gather(1, tokens[:, s : s + 1]).squeeze(1))
        previous = tokens[:, s]
    return torch.stack(scores, dim=1)


@pytest.mark.parametrize("kind", list(MODELS))
def test_the_greedy_loop_in_cpp_equals_the_python_loops(kind):
    model = MODELS[kind]()
    decoder = model.decoder
    with torch.no_grad():
        memory, memory_lengths = model.encode(*inputs(model))
        mask = torch.arange(memory.shape[1]).unsqueeze(0) < memory_lengths.unsqueeze(1)
        keys = decoder.attention.keys(memory)
        plan = decoder.inference_plan()
        assert plan is not None
        if kind.startswith("pruned"):
            assert any(w.dtype == torch.int32 for w in plan.cell)  # the cell runs on the sparse kernels
        max_len = model.max_len(int(memory_lengths.max()))
        tokens, scores = fast_decode.fast_greedy(plan, memory, keys, mask, max_len)
        fused = fast_decode.hypotheses(tokens)
        assert fused == decoder.greedy_steps(memory, keys, mask, max_len, plan)  # the C++ step, one call per step
        assert fused == decoder.greedy_steps(memory, keys, mask, max_len)  # the PyTorch step
        assert fused == decoder.greedy(memory, memory_lengths, max_len)
        assert sum(len(h) for h in fused) > 6  # the test decodes something
        for step_plan in (plan, None):
            torch.testing.assert_close(scores, python_step_scores(decoder, memory, keys, mask, tokens, step_plan),
                                       atol=ATOL, rtol=0)


def test_the_greedy_loop_stops_at_the_length_limit_and_at_the_end_id():
    model = MODELS["dense"]()
    decoder = model.decoder
    with torch.no_grad():
        memory, memory_lengths = model.encode(*inputs(model, (20,)))
        mask = torch.ones(1, memory.shape[1], dtype=torch.bool)
        keys = decoder.attention.keys(memory)
        plan = decoder.inference_plan()
        tokens, _ = fast_decode.fast_greedy(plan, memory, keys, mask, 2)
        assert tokens.shape == (1, 2) and fast_decode.hypotheses(tokens) == decoder.greedy_steps(memory, keys, mask, 2)
        decoder.output.bias[EOS_ID] += 100.0  # the end id first (a dense model: nn.Linear)
        tokens, _ = fast_decode.fast_greedy(decoder.inference_plan(), memory, keys, mask, 50)
        assert tokens.tolist() == [[EOS_ID]] and fast_decode.hypotheses(tokens) == [[]]


def test_a_hooked_decoder_keeps_the_python_loop():
    model = MODELS["dense"]()
    calls = []
    model.decoder.cell.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        model.decode(*inputs(model, (20,)), 0)
    assert calls  # every step ran through the module


@pytest.mark.parametrize("kind", list(MODELS))
def test_whole_decoding_is_unchanged(kind):
    """``decode`` with both fused paths against the same model with both switched off (hooks switch them off)."""
    model = MODELS[kind]()
    features, lengths = inputs(model)
    with torch.no_grad():
        fused = model.decode(features, lengths, 0)
        fused_memory = model.encode(features, lengths)[0]
        for module in [model.decoder, *model.encoder.norms]:
            module.register_forward_hook(lambda *args: None)
        assert model.decoder.inference_plan() is None
        assert fused == model.decode(features, lengths, 0)
        torch.testing.assert_close(fused_memory, model.encode(features, lengths)[0], atol=ATOL, rtol=0)


@pytest.mark.parametrize("layer_norm", [True, False])
@pytest.mark.parametrize("pool", [1, 2, 3])
def test_norm_pool_equals_layer_norm_then_max_pool(layer_norm, pool):
    encoder = Encoder(6, 16, 1, [pool], layer_norm=layer_norm).eval()
    if layer_norm:
        with torch.no_grad():
            encoder.norms[0].weight.normal_(1.0, 0.5)
            encoder.norms[0].bias.normal_(0.0, 0.5)
    x = 3 * torch.randn(2, 23, 16) + 0.5  # 23 frames: a partial group at the end for pool 2 and 3
    reference = encoder.norms[0](x)
    if pool > 1:
        reference = reference[:, : 23 // pool * pool].reshape(2, 23 // pool, pool, 16).amax(dim=2)
    with torch.no_grad():
        torch.testing.assert_close(encoder.norm_pool(0, x), reference, atol=ATOL, rtol=0)
    with torch.enable_grad():  # training keeps PyTorch's operations (and their gradients)
        y = encoder.norm_pool(0, x.requires_grad_())
        assert y.requires_grad


def test_the_breakdown_benchmark_times_every_part_of_a_decode():
    from asr_helpers import load_benchmark

    bench = load_benchmark("decode_breakdown")
    model = MODELS["dense"]()
    features, lengths = inputs(model, (30, 24))
    utterances = [(features[i : i + 1, : int(n)], lengths[i : i + 1]) for i, n in enumerate(lengths)]
    ms = bench.breakdown(model, utterances, 10.0, repeats=1)
    parts = [f"encoder.lstm{i}" for i in range(2)] + [f"encoder.norm_pool{i}" for i in range(2)]
    parts += ["decoder.keys", "decoder.loop", "step.products", "step.attention", "loop.rest", "whole", "fixed"]
    assert all(name in ms and ms[name] == ms[name] for name in parts)  # present and not NaN
    assert ms["whole"] > 0 and ms["targets"] > 0
    assert ms["fixed"] == pytest.approx(ms["whole"] - ms["targets"])
