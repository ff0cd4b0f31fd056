"""Compression core on small models: targets, SVD cache, low-rank modules, cost model, schemes."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from asr.model.asr_model import AsrModel
from asr.model.lstm import ConcatLSTM
from compress.cost import estimate_speedup, matrix_speedup, pays
from compress.lowrank import LowRankLinear, factorize_kernel, factorized_lstm_reference
from compress.scheme import Scheme, SchemeError, apply_scheme, current_ranks
from compress.svd import Spectrum, SvdCache
from compress.targets import Target, discover_targets, profile_uses

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small_asr() -> AsrModel:
    torch.manual_seed(0)
    return AsrModel(30, 20, dict(hidden_size=16, num_layers=2, pool=[2]),
                    dict(hidden_size=16, attention_size=8, embedding_size=8, pre_output_size=12)).eval()


def test_full_rank_factors_reproduce_the_matrix_and_rank_falls_with_energy():
    weight = torch.randn(24, 40)
    spectrum = Spectrum.of(weight)
    u, v = spectrum.factors(spectrum.max_rank)
    assert torch.allclose(u @ v, weight, atol=1e-5)
    ranks = [spectrum.rank_for_energy(e) for e in (1.0, 0.9, 0.7, 0.5, 0.2)]
    assert ranks[0] == 24 and ranks == sorted(ranks, reverse=True) and ranks[-1] < ranks[1]
    for energy in (0.9, 0.5):
        rank = spectrum.rank_for_energy(energy)
        assert spectrum.energy(rank) >= energy - 1e-9 and (rank == 1 or spectrum.energy(rank - 1) < energy)


def test_slicing_the_cached_svd_equals_a_fresh_truncation():
    weight = torch.randn(30, 18)
    cache = SvdCache()
    u, v = cache.get("w", weight).factors(5)
    cache.get("w", weight * 0)  # second call returns the cached spectrum, not a new SVD
    full_u, s, vh = torch.linalg.svd(weight.double(), full_matrices=False)
    assert torch.allclose(u @ v, (full_u[:, :5] * s[:5] @ vh[:5]).float(), atol=1e-5)
    assert len(cache) == 1


@pytest.mark.parametrize("energy", [0.0, -0.1, 1.5])
def test_energy_outside_zero_one_is_refused(energy):
    with pytest.raises(ValueError, match=r"outside \(0, 1\]"):
        Spectrum.of(torch.randn(4, 4)).rank_for_energy(energy, name="enc")


@pytest.mark.parametrize("rank", [0, 5])
def test_rank_outside_one_to_min_is_refused(rank):
    with pytest.raises(ValueError, match="allowed range 1..4"):
        Spectrum.of(torch.randn(4, 6)).factors(rank)


def test_low_rank_linear_at_full_rank_equals_the_dense_layer():
    dense = nn.Linear(12, 7)
    u, v = Spectrum.of(dense.weight).factors(7)
    low = LowRankLinear(u, v, dense.bias.detach())
    x = torch.randn(5, 3, 12)
    assert torch.allclose(low(x), dense(x), atol=1e-5)


def test_factorized_lstm_kernel_at_full_rank_equals_the_dense_layer_and_the_reference_recurrence():
    torch.manual_seed(1)
    layer = ConcatLSTM(6, 5)
    x = torch.randn(3, 9, 6)
    dense_out, _ = layer(x)
    u, v = Spectrum.of(layer.kernel).factors(min(layer.kernel.shape))
    factorize_kernel(layer, u, v)
    out, _ = layer(x)
    assert torch.allclose(out, dense_out, atol=1e-5)
    reference = factorized_lstm_reference(x, u, v, layer.bias.detach(), 5)
    assert torch.allclose(reference, out, atol=1e-5)
    out.sum().backward()
    assert layer.parametrizations.kernel.original0.grad is not None  # U' and V* are what trains


def test_eq3_and_model_level_estimates_match_hand_computed_values():
    assert matrix_speedup((512, 1024), 128) == pytest.approx(512 * 1024 / (128 * 1536))
    assert not pays((8, 8), 4) and matrix_speedup((8, 8), 4) == 1.0  # 4 * 16 >= 64: stays dense
    targets = [Target("a", "linear", (100, 100), uses_per_second=10.0),
               Target("b", "linear", (100, 300), uses_per_second=1.0)]
    ranks = {"a": 10, "b": 30}
    by_params = (100 * 100 + 100 * 300) / (10 * 200 + 30 * 400)
    by_macs = (10 * 100 * 100 + 100 * 300) / (10 * 10 * 200 + 30 * 400)
    assert estimate_speedup(targets, ranks, "params") == pytest.approx(by_params)
    assert estimate_speedup(targets, ranks, "macs") == pytest.approx(by_macs)
    assert estimate_speedup(targets, {"a": "full"}, "params") == 1.0


def test_targets_of_the_asr_model_include_every_linear_and_lstm_kernel_and_follow_patterns():
    model = small_asr()
    targets = discover_targets(model)
    kinds = {t.name: t.kind for t in targets}
    assert kinds["encoder.layers.0"] == kinds["encoder.layers.1"] == kinds["decoder.cell"] == "lstm"
    assert kinds["decoder.output"] == "linear" and kinds["decoder.attention.mono_key"] == "linear"
    assert next(t for t in targets if t.name == "encoder.layers.0").shape == (64, 20 + 16)
    only_encoder = discover_targets(model, include=["encoder.*"])
    assert [t.name for t in only_encoder] == ["encoder.layers.0", "encoder.layers.1"]
    no_attention = discover_targets(model, exclude=["decoder.attention.*"])
    assert not any("attention" in t.name for t in no_attention)


def test_profiled_uses_follow_time_reduction():
    model = small_asr()
    x, lengths = torch.randn(2, 100, 20), torch.tensor([100, 100])
    targets = profile_uses(model, discover_targets(model, include=["encoder.*"]), lambda: model.encode(x, lengths),
                           audio_seconds=2.0)
    uses = {t.name: t.uses_per_second for t in targets}
    assert uses["encoder.layers.0"] == pytest.approx(100.0)  # 2 x 100 frames over 2 s
    assert uses["encoder.layers.1"] == pytest.approx(50.0)  # after pooling by 2


def test_apply_leaves_the_original_untouched_and_full_ranks_keep_outputs():
    model = small_asr()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    targets = discover_targets(model)
    ranks = {t.name: max(1, t.max_rank // 3) for t in targets}
    compressed = apply_scheme(model, Scheme.build(targets, ranks, "uniform"), targets, SvdCache())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(model.decoder.output, nn.Linear) and isinstance(compressed.decoder.output, LowRankLinear)
    assert current_ranks(compressed, targets)["encoder.layers.1"] == ranks["encoder.layers.1"]
    x, lengths = torch.randn(1, 40, 20), torch.tensor([40])
    assert not torch.allclose(compressed.encode(x, lengths)[0], model.encode(x, lengths)[0])


def test_structure_only_apply_then_loading_weights_reproduces_the_compressed_model():
    model = small_asr()
    targets = discover_targets(model)
    scheme = Scheme.build(targets, {t.name: 2 for t in targets if t.max_rank > 2}, "uniform")
    compressed = apply_scheme(model, scheme, targets, SvdCache())
    rebuilt = apply_scheme(model, scheme, targets, None)
    rebuilt.load_state_dict(compressed.state_dict())
    x, lengths = torch.randn(1, 40, 20), torch.tensor([40])
    assert torch.equal(rebuilt.encode(x, lengths)[0], compressed.encode(x, lengths)[0])


def test_scheme_json_round_trips(tmp_path):
    model = small_asr()
    targets = discover_targets(model)
    scheme = Scheme.build(targets, {"encoder.layers.0": 3, "decoder.output": "full"}, "guided", note="x")
    path = tmp_path / "schemes" / "guided.json"
    scheme.save(path)
    assert json.loads(path.read_text())["format"] == "shrinkml-scheme/2"
    assert not list(path.parent.glob("*.tmp"))
    assert Scheme.load(path) == scheme


def test_bad_schemes_name_the_target_and_the_allowed_range():
    targets = discover_targets(small_asr())
    with pytest.raises(SchemeError, match="unknown target 'encoder.layers.9'"):
        Scheme.build(targets, {"encoder.layers.9": 4}, "manual")
    with pytest.raises(SchemeError, match=r"rank 0 for target 'decoder.output' .* 1..12"):
        Scheme.build(targets, {"decoder.output": 0}, "manual")
    with pytest.raises(SchemeError, match=r"rank 99 .* 1..36"):
        Scheme.build(targets, {"encoder.layers.0": 99}, "manual")
    scheme = Scheme.build(targets, {"encoder.layers.0": 4}, "manual")
    scheme.shapes["encoder.layers.0"] = [128, 72]
    with pytest.raises(SchemeError, match="another model shape"):
        scheme.validate(targets)


def test_uniform_energy_baseline_meets_the_target_with_the_highest_energy_and_refuses_the_impossible():
    from compress.manual import uniform_energy_scheme

    model = small_asr()
    targets = discover_targets(model)
    weights = {t.name: t.weight(model) for t in targets}
    cache = SvdCache()
    scheme = uniform_energy_scheme(targets, weights, cache, 2.0)
    assert scheme.estimates["speedup/params"] >= 2.0
    energy = scheme.meta["energy"]
    richer = {t.name: cache.get(t.name, weights[t.name]).rank_for_energy(min(1.0, energy + 0.02)) for t in targets}
    assert estimate_speedup(targets, richer) < 2.0  # a little more energy no longer meets a_t
    guided = uniform_energy_scheme(targets, weights, cache, 1.5, dense=["decoder.output"], provenance="guided")
    assert guided.ranks["decoder.output"] == "full" and guided.provenance == "guided"
    with pytest.raises(ValueError, match="below 1"):
        uniform_energy_scheme(targets, weights, cache, 0.8)
    with pytest.raises(ValueError, match="out of reach"):
        uniform_energy_scheme(targets, weights, cache, 1000.0)


def test_sensitivity_table_factorizes_one_target_at_a_time():
    from compress.sensitivity import sensitive_targets, sensitivity_table

    model = small_asr()
    targets = discover_targets(model, include=["encoder.*", "decoder.output"])
    seen = []

    def fake_wer(m: nn.Module) -> float:  # records which targets were compressed in each evaluated model
        ranks = current_ranks(m, targets)
        seen.append({k: v for k, v in ranks.items() if v != "full"})
        return 10.0 + 5.0 * ("decoder.output" in seen[-1])

    table = sensitivity_table(model, targets, SvdCache(), fake_wer, [0.9, 0.5])
    assert table["baseline_wer"] == 10.0 and seen[0] == {}
    assert all(len(s) <= 1 for s in seen[1:])  # never two targets at once
    assert len(table["rows"]) == 2 * len(targets)
    assert sensitive_targets(table, 0.5, max_delta=1.0) == ["decoder.output"]


def test_sparsity_table_prunes_one_target_at_a_time_and_restores_it(tmp_path):
    from compress.prune import PruneError
    from compress.sensitivity import plot_table, sparsity_table

    model = small_asr()
    targets = discover_targets(model, include=["encoder.*", "decoder.output"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []

    def fake_wer(m: nn.Module) -> float:  # records the share of zeros of every target in each evaluated model
        zeros = {t.name: float((t.weight(m) == 0).float().mean()) for t in targets}
        seen.append({name: z for name, z in zeros.items() if z > 0.01})
        return 10.0 + 20.0 * seen[-1].get("decoder.output", 0.0)

    table = sparsity_table(model, targets, fake_wer, [0.5, 0.9])
    assert table["baseline_wer"] == 10.0 and seen[0] == {}
    assert all(len(s) == 1 for s in seen[1:])  # exactly one target pruned at a time
    rows = {(r["target"], r["sparsity"]): r for r in table["rows"]}
    assert len(rows) == 2 * len(targets)
    assert rows[("decoder.output", 0.9)]["delta"] == pytest.approx(18.0, abs=0.1)
    assert rows[("decoder.output", 0.5)]["nonzero"] == pytest.approx(targets[-1].params * 0.5, abs=1)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # weights restored
    plot_table(table, tmp_path / "sparsity.png")
    assert (tmp_path / "sparsity.png").stat().st_size > 0
    with pytest.raises(PruneError, match="sparsities"):
        sparsity_table(model, targets, fake_wer, [1.0])
    with pytest.raises(ValueError, match="does not divide"):
        sparsity_table(model, targets, fake_wer, [0.5], block=[7, 1])
