"""compress on modules that are not the project's: PyTorch's nn.LSTM / nn.GRU, nn.MultiheadAttention and convolutions
as targets (factorized, pruned, int8), a model without targets, and sparse matrices stored sparse in saved files."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from compress.inference_form import LowRankLSTM, inference_form
from compress.lowrank import LowRankConv
from compress.manual import uniform_energy_scheme
from compress.prune import prunable_matrices
from compress.quantize import int8_state_dict, load_int8, quantize_int8, save_int8
from compress.scheme import Scheme, apply_scheme, current_ranks, dense_equivalent
from compress.sparse_state import (
    decode,
    dense_state,
    encode,
    load_sparse,
    pack_bits,
    save_sparse,
    sparse_state,
    unpack_bits,
)
from compress.storage import TargetTensor, model_storage, target_tensors
from compress.svd import Spectrum, SvdCache
from compress.targets import NoTargetsError, discover_targets, profile_uses
from compress.techniques.prune import Pruner

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Recurrent(nn.Module):
    """Two-layer bidirectional ``cls`` (nn.LSTM or nn.GRU) and a Linear head: (B, T, 6) -> (B, T, 5)."""

    def __init__(self, cls=nn.LSTM):
        super().__init__()
        self.rnn = cls(6, 8, num_layers=2, batch_first=True, bidirectional=True)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        return self.head(self.rnn(x)[0])


class Attention(nn.Module):
    """nn.MultiheadAttention (self-attention, 4 heads of 4) and a Linear: (B, T, 16) -> (B, T, 16)."""

    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.ffn = nn.Linear(16, 16)

    def forward(self, x):
        return self.ffn(self.attn(x, x, x)[0])


def factorized(model: nn.Module, speedup: float = 1.5) -> tuple[nn.Module, list]:
    targets = discover_targets(model)
    cache = SvdCache()
    scheme = uniform_energy_scheme(targets, {t.name: t.weight(model) for t in targets}, cache, speedup)
    return apply_scheme(model, scheme, targets, cache), targets


def pruned(model: nn.Module, sparsity: float = 0.8) -> nn.Module:
    targets = discover_targets(model)
    return apply_scheme(model, Scheme.build(targets, {t.name: {"sparsity": sparsity} for t in targets}, "m"), targets)


@pytest.mark.parametrize("cls, gates", [(nn.LSTM, 4), (nn.GRU, 3)])
def test_every_recurrent_matrix_is_a_target_per_layer_and_direction(cls, gates):
    targets = {t.name: t for t in discover_targets(Recurrent(cls))}
    assert targets["rnn.weight_ih_l0"].shape == (gates * 8, 6)
    assert targets["rnn.weight_ih_l1_reverse"].shape == (gates * 8, 16)
    assert targets["rnn.weight_hh_l1"].shape == (gates * 8, 8)
    assert len(targets) == 9 and targets["head"].kind == "linear"
    assert {t.kind for n, t in targets.items() if n.startswith("rnn.")} == {"weight"}
    assert [t.name for t in discover_targets(Recurrent(cls), exclude=["rnn"])] == ["head"]  # by its module's name
    assert len(discover_targets(Recurrent(cls), include=["*_reverse"])) == 4


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_a_factorized_recurrent_layer_runs_its_own_forward_on_the_product_and_can_be_copied(cls):
    torch.manual_seed(0)
    model = Recurrent(cls)
    small, targets = factorized(model)
    assert isinstance(small.rnn, cls) and parametrize.is_parametrized(small.rnn, "weight_hh_l0")
    x = torch.randn(2, 7, 6)
    assert torch.allclose(small(x), dense_equivalent(model, small, targets)(x), atol=1e-5)
    small(x).sum().backward()  # trainable: the factors get gradients
    assert small.rnn.parametrizations.weight_hh_l0.original0.grad is not None
    twin = copy.deepcopy(small)  # a rebuilt (non-leaf) weight cached by nn.LSTM must not block copies
    with torch.no_grad(), parametrize.cached():
        assert torch.allclose(twin(x), small(x), atol=1e-6)
    ranks = current_ranks(small, targets)
    assert all(isinstance(ranks[t.name], int) for t in targets if t.name.startswith("rnn."))
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("batch_first, bidirectional", [(True, True), (False, False)])
def test_the_inference_form_of_a_factorized_lstm_runs_on_the_factors_and_matches(batch_first, bidirectional):
    torch.manual_seed(0)
    lstm = nn.LSTM(6, 8, num_layers=2, batch_first=batch_first, bidirectional=bidirectional)
    model = nn.Sequential(lstm)
    targets = discover_targets(model)
    ranks = {t.name: 3 for t in targets if "hh" in t.name or "l1" in t.name}  # some sides stay dense
    small = apply_scheme(model, Scheme.build(targets, ranks, "m"), targets, SvdCache())
    fast = inference_form(small)
    assert isinstance(fast[0], LowRankLSTM) and parametrize.is_parametrized(small[0], "weight_hh_l0")
    directions = 2 if bidirectional else 1
    x = torch.randn(3, 7, 6)
    state = (torch.randn(2 * directions, 3 if batch_first else 7, 8), torch.randn(2 * directions, 3 if batch_first
                                                                                  else 7, 8))
    with torch.no_grad():
        for args in ((x,), (x, state), (x[0], tuple(s[:, 0] for s in state))):  # also unbatched
            expected, (h, c) = small[0](*args)
            out, (h_fast, c_fast) = fast[0](*args)
            assert torch.allclose(out, expected, atol=1e-5) and torch.allclose(h_fast, h, atol=1e-5)
            assert torch.allclose(c_fast, c, atol=1e-5)


def test_the_inference_form_builds_other_parametrized_weights_once_and_leaves_the_model():
    torch.manual_seed(0)
    model = nn.Sequential(Attention(), nn.GRU(16, 4))
    targets = discover_targets(model)
    small = apply_scheme(model, Scheme.build(targets, {t.name: 2 for t in targets}, "m"), targets, SvdCache())
    fast = inference_form(small)
    assert not any(parametrize.is_parametrized(m) for m in fast.modules())
    assert all(parametrize.is_parametrized(m) for m in (small[0].attn, small[1]))  # the original keeps its factors
    x = torch.randn(5, 2, 16)
    with torch.no_grad():
        assert torch.allclose(fast(x)[0], small(x)[0], atol=1e-5)


def test_factorizing_another_weight_of_a_copy_leaves_the_original_as_it_was():
    torch.manual_seed(0)
    model = Recurrent()
    targets = {t.name: t for t in discover_targets(model)}
    first = apply_scheme(model, Scheme.build(list(targets.values()), {"rnn.weight_ih_l0": 3}, "m"),
                         list(targets.values()), SvdCache())
    x = torch.randn(2, 5, 6)
    before = first(x)
    second = apply_scheme(first, Scheme.build(list(targets.values()), {"rnn.weight_hh_l0": 3}, "m"),
                          list(targets.values()), SvdCache())
    assert torch.equal(first(x), before) and not parametrize.is_parametrized(first.rnn, "weight_hh_l0")
    assert parametrize.is_parametrized(second.rnn, "weight_hh_l0") and parametrize.is_parametrized(second.rnn,
                                                                                                   "weight_ih_l0")


def test_uses_per_second_count_the_frames_of_a_recurrent_layer():
    model = Recurrent()
    x = torch.randn(3, 10, 6)
    targets = profile_uses(model, discover_targets(model), lambda: model(x), audio_seconds=2.0)
    assert {t.uses_per_second for t in targets} == {15.0}


def test_a_pruned_lstm_keeps_its_masks_and_zeros_through_flatten_parameters_and_device_moves():
    torch.manual_seed(0)
    model = Recurrent()
    sparse = pruned(model)
    mask = sparse.rnn.weight_hh_l0_mask
    assert mask.dtype == torch.bool and abs(1 - mask.float().mean().item() - 0.8) < 0.02
    assert torch.equal(sparse.rnn.weight_hh_l0 == 0, ~mask)
    sparse.rnn.flatten_parameters()
    sparse = sparse.double().float()  # _apply rebuilds nn.LSTM's flat weights
    assert torch.equal(sparse.rnn.weight_hh_l0 == 0, ~sparse.rnn.weight_hh_l0_mask)
    x = torch.randn(2, 5, 6)
    assert torch.equal(sparse(x), dense_equivalent(model, sparse, discover_targets(model))(x))
    matrices = prunable_matrices(sparse)
    pruner = Pruner(sparse, matrices, "csp", {m.path: (1, 1) for m in matrices}, "iht", 3, 1e-3)
    assert "rnn" not in pruner.input_sites()  # CSP records no inputs of nn.LSTM's weights: magnitude for them
    pruner.update({m.path: 0.5 for m in matrices})
    assert abs(1 - sparse.rnn.weight_ih_l1_mask.float().mean().item() - 0.5) < 0.02


def test_pruning_a_factorized_lstm_prunes_its_factors():
    small, targets = factorized(Recurrent())
    paths = [m.path for m in prunable_matrices(small)]
    assert "rnn.parametrizations.weight_hh_l0.original0" in paths
    assert "rnn.parametrizations.weight_hh_l0.original1" in paths


def test_int8_rounds_recurrent_and_attention_weights_and_the_file_loads_back(tmp_path):
    torch.manual_seed(0)
    for model, x in ((Recurrent(), torch.randn(2, 5, 6)), (Attention(), torch.randn(2, 5, 16))):
        small, _ = factorized(model)
        for source in (model, small, pruned(model)):
            int8 = quantize_int8(source)
            state = int8_state_dict(int8)
            assert any(k.endswith(".int8") and ("rnn." in k or "attn." in k) for k in state)  # nothing left float
            save_int8(tmp_path / "m.pt", int8)
            loaded, _ = load_int8(tmp_path / "m.pt", lambda stored, source=source: copy.deepcopy(source))
            assert torch.equal(loaded(x), int8(x))
            assert (int8(x) - source(x)).abs().max() < 0.05 * source(x).abs().max()


def test_a_factorized_attention_keeps_its_forward():
    torch.manual_seed(0)
    model = Attention()
    names = [t.name for t in discover_targets(model)]
    assert names == ["attn.in_proj_weight", "attn.out_proj.weight", "ffn"]
    small, targets = factorized(model, 1.3)
    x = torch.randn(2, 5, 16)
    assert torch.allclose(small(x), dense_equivalent(model, small, targets)(x), atol=1e-5)
    assert type(small.attn.out_proj).__name__.endswith("NonDynamicallyQuantizableLinear")  # not swapped
    with torch.no_grad():
        small.eval()(x)  # the inference path too


def test_a_model_without_targets_stops_with_one_line_naming_it():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Conv1d(4, 4, 3, groups=4))  # depthwise: not a target
    with pytest.raises(NoTargetsError) as info:
        discover_targets(model)
    message = str(info.value)
    assert "\n" not in message and message.startswith("Sequential has nothing to compress (1 Embedding, 1 Conv1d)")
    assert "nn.LSTM" in message and "grouped and transposed convolutions" in message
    assert discover_targets(Recurrent(), include=["nothing"]) == []  # patterns that leave none: no error here
    with pytest.raises(NoTargetsError, match=r"wrap it \(nn.Sequential\(model\)\)"):
        discover_targets(nn.Linear(3, 4))
    with pytest.raises(NoTargetsError, match="no targets"):
        uniform_energy_scheme([], {}, SvdCache(), 2.0)


@pytest.mark.parametrize("conv", [nn.Conv1d(6, 10, 5, stride=2, padding=3, dilation=2),
                                  nn.Conv2d(3, 8, (3, 5), padding="same", bias=False)])
def test_a_convolution_factorizes_into_two_convolutions_exact_at_full_rank(conv):
    torch.manual_seed(0)
    model = nn.Sequential(conv, nn.ReLU())
    (target,) = discover_targets(model)
    assert target.kind == "conv" and target.shape == (conv.out_channels, conv.weight[0].numel())
    x = torch.randn(2, conv.in_channels, *([20] * (conv.weight.dim() - 2)))
    full = LowRankConv(*Spectrum.of(target.weight(model)).factors(target.max_rank), conv)  # no saving; exact
    assert torch.allclose(full(x), conv(x), atol=1e-5)
    small = apply_scheme(model, Scheme.build([target], {target.name: 2}, "m"), [target], SvdCache())
    assert isinstance(small[0], LowRankConv) and current_ranks(small, [target]) == {target.name: 2}
    assert torch.allclose(small(x), dense_equivalent(model, small, [target])(x), atol=1e-5)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())


def test_a_convolution_only_model_is_factorized_pruned_and_int8(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(13, 32, 7, padding=3), nn.ReLU(), nn.Conv1d(32, 32, 5), nn.ReLU(),
                          nn.Conv1d(32, 8, 1))
    x = torch.randn(1, 13, 50)
    targets = discover_targets(model)
    assert [t.kind for t in targets] == ["conv"] * 3
    profiled = profile_uses(model, targets, lambda: model(x), audio_seconds=0.5)
    assert [t.uses_per_second for t in profiled] == [100.0, 92.0, 92.0]  # one product per output position
    sparse = pruned(model)
    assert sparse[2].weight_mask.shape == sparse[2].weight.shape and torch.equal(sparse[2].weight == 0,
                                                                               ~sparse[2].weight_mask)
    assert torch.equal(sparse(x), dense_equivalent(model, sparse, targets)(x))
    for source in (sparse, factorized(model)[0]):
        int8 = quantize_int8(source)
        assert (int8(x) - source(x)).abs().max() < 0.05 * source(x).abs().max()
        save_int8(tmp_path / "m.pt", int8)
        loaded, _ = load_int8(tmp_path / "m.pt", lambda stored, source=source: copy.deepcopy(source))
        assert torch.equal(loaded(x), int8(x))
    report = model_storage(sparse)
    assert report.sparse_bytes < 0.5 * report.dense_bytes  # a pruned convolution ships sparse too


def test_target_tensors_of_recurrent_and_attention_weights():
    small, _ = factorized(Attention(), 1.3)
    found = target_tensors(small)
    assert found["attn.parametrizations.in_proj_weight.original0"] == TargetTensor("attn.in_proj_weight", "weight",
                                                                                   "U")
    dense = target_tensors(Recurrent())
    assert dense["rnn.weight_hh_l1_reverse"] == TargetTensor("rnn.weight_hh_l1_reverse", "weight", "dense")
    assert "rnn.bias_hh_l0" not in dense


@pytest.mark.parametrize("numel", [1, 7, 8, 9, 64])
def test_bits_pack_and_unpack(numel):
    mask = torch.rand(numel) < 0.5
    bits = pack_bits(mask)
    assert bits.dtype == torch.uint8 and bits.numel() == (numel + 7) // 8
    assert torch.equal(unpack_bits(bits, numel), mask)


def test_sparse_tensors_come_back_identical_and_dense_ones_stay_dense():
    weight = torch.randn(16, 20) * (torch.rand(16, 20) < 0.2)
    entry = encode(weight)
    assert entry["values"].numel() == int((weight != 0).sum())
    assert torch.equal(decode(entry)[0], weight)
    assert encode(torch.randn(16, 20)) is None and encode(torch.zeros(5)) is None
    q = torch.quantize_per_tensor(weight, 0.01, 0, torch.qint8)
    back, _ = decode(encode(q))
    assert back.is_quantized and torch.equal(back.int_repr(), q.int_repr()) and back.q_scale() == q.q_scale()
    mask = weight != 0
    mask[0, 0] = True  # a kept entry that is zero: the mask, not the zeros, is what is stored
    state = {"w": weight, "w_mask": mask, "b": torch.randn(16)}
    stored = sparse_state(state)
    assert set(stored) == {"w", "b"}
    restored = dense_state(stored)
    assert all(torch.equal(restored[k], v) for k, v in state.items())


def test_a_float_model_saves_sparse_and_loads_back(tmp_path):
    torch.manual_seed(0)
    model = pruned(Recurrent())
    megabytes = save_sparse(tmp_path / "m.pt", model)
    loaded, _ = load_sparse(tmp_path / "m.pt", lambda stored: pruned(Recurrent()))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values(),
                                                 strict=True))
    dense = tmp_path / "dense.pt"
    torch.save({k: v for k, v in model.state_dict().items() if not k.endswith("_mask")}, dense)
    assert megabytes * 2**20 < dense.stat().st_size
