"""Scheme format 2 (per target: a rank, a sparsity, both, or full) and the technique registry; format 1 files
(rank-only) still load and apply as before."""

from __future__ import annotations

import json

import pytest
import torch
from test_compress_core import small_asr

from compress.cost import estimate_speedup
from compress.lowrank import LowRankLinear
from compress.prune import MASK_SUFFIX, kept
from compress.scheme import FORMAT, Scheme, SchemeError, apply_scheme, current_ranks
from compress.svd import SvdCache
from compress.targets import discover_targets
from compress.techniques import TECHNIQUES, owner, technique

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_format_1_file_loads_and_applies_as_a_rank_only_scheme(tmp_path):
    model = small_asr()
    targets = discover_targets(model)
    ranks = {"encoder.layers.0": 3, "decoder.pre_output": 2, "decoder.output": "full"}
    path = tmp_path / "v1.json"
    path.write_text(json.dumps({"format": "shrinkml-scheme/1", "provenance": "automl", "ranks": ranks,
                                "shapes": {t.name: list(t.shape) for t in targets},
                                "estimates": {"speedup/params": 1.5}, "metrics": {"wer/dev": 20.0},
                                "meta": {"checkpoint_sha256": "abc"}}))
    scheme = Scheme.load(path)
    assert scheme.ranks == ranks and scheme.options == {} and scheme.provenance == "automl"
    assert scheme.estimates == {"speedup/params": 1.5} and scheme.metrics == {"wer/dev": 20.0}
    assert scheme.meta["checkpoint_sha256"] == "abc"
    assert scheme.settings == {"encoder.layers.0": {"rank": 3}, "decoder.pre_output": {"rank": 2},
                               "decoder.output": "full"}
    compressed = apply_scheme(model, scheme, targets, SvdCache())
    assert isinstance(compressed.get_submodule("decoder.pre_output"), LowRankLinear)
    assert current_ranks(compressed, targets)["encoder.layers.0"] == 3
    scheme.save(tmp_path / "v2.json")   # written as format 2, read back the same
    assert json.loads((tmp_path / "v2.json").read_text())["format"] == FORMAT == "shrinkml-scheme/2"
    assert Scheme.load(tmp_path / "v2.json") == scheme


def test_a_mixed_scheme_round_trips_with_its_shape_and_costs(tmp_path):
    targets = discover_targets(small_asr())
    settings = {"encoder.layers.0": {"rank": 4}, "encoder.layers.1": {"sparsity": 0.75, "pattern": "4x1"},
                "decoder.pre_output": {"rank": 3, "sparsity": 0.5}, "decoder.output": "full"}
    scheme = Scheme.build(targets, settings, "manual")
    assert scheme.settings == settings
    assert scheme.ranks == {"encoder.layers.0": 4, "encoder.layers.1": "full", "decoder.pre_output": 3,
                            "decoder.output": "full"}
    assert scheme.options == {"encoder.layers.1": {"sparsity": 0.75, "pattern": "4x1"},
                              "decoder.pre_output": {"sparsity": 0.5}}
    assert scheme.techniques() == ["lowrank", "prune"]
    scheme.save(tmp_path / "mixed.json")
    stored = json.loads((tmp_path / "mixed.json").read_text())
    assert stored["format"] == "shrinkml-scheme/2" and stored["targets"] == settings
    assert Scheme.load(tmp_path / "mixed.json") == scheme
    by_name = {t.name: t for t in targets}
    dense = sum(t.params for t in targets)
    l0, l1, pre = by_name["encoder.layers.0"], by_name["encoder.layers.1"], by_name["decoder.pre_output"]
    stored_params = (dense - l0.params - l1.params - pre.params + 4 * sum(l0.shape)
                     + kept(l1.params, 0.75) + kept(3 * sum(pre.shape), 0.5))
    assert scheme.estimates["speedup/params"] == pytest.approx(dense / stored_params)
    ranks_only = Scheme.build(targets, {"encoder.layers.0": 4}, "manual")   # rank-only: Eq. 3 exactly, as before
    assert ranks_only.estimates["speedup/params"] == estimate_speedup(targets, {"encoder.layers.0": 4})


def test_applying_a_mixed_scheme_factorizes_then_prunes_the_factors():
    model = small_asr()
    targets = discover_targets(model)
    scheme = Scheme.build(targets, {"decoder.pre_output": {"rank": 3, "sparsity": 0.5},
                                    "encoder.layers.1": {"sparsity": 0.75}}, "manual")
    compressed = apply_scheme(model, scheme, targets, SvdCache())
    pre = compressed.get_submodule("decoder.pre_output")
    assert isinstance(pre, LowRankLinear)
    for half in (pre.first, pre.second):
        mask = getattr(half, "weight" + MASK_SUFFIX)
        assert int((~mask).sum()) == half.weight.numel() - kept(half.weight.numel(), 0.5)
        assert not half.weight[~mask].any()
    layer = compressed.get_submodule("encoder.layers.1")
    assert float((~getattr(layer, "kernel" + MASK_SUFFIX)).float().mean()) == pytest.approx(0.75, abs=0.01)
    assert not hasattr(model.get_submodule("encoder.layers.1"), "kernel" + MASK_SUFFIX)   # the original untouched
    x, lengths = torch.randn(1, 40, 20), torch.tensor([40])
    assert compressed.encode(x, lengths)[0].isfinite().all()


@pytest.mark.parametrize("settings, match", [
    ({"encoder.layers.0": {"sparsity": 1.2}}, "scheme target 'encoder.layers.0' sparsity must be a fraction"),
    ({"decoder.output": {"sparsity": 0.5, "pattern": "diagonal"}}, "is not a pruning pattern"),
    ({"decoder.output": {"sparsity": 0.5, "pattern": "1x5"}}, "does not divide its 30 x 12 matrix"),
    ({"decoder.output": {"pattern": "2x1"}}, "a pattern needs a sparsity"),
    ({"decoder.output": {"rank": 99}}, r"rank 99 for target 'decoder.output' .* 1..12"),
    ({"decoder.output": {"colour": 3}}, "scheme key 'colour' belongs to no compression technique"),
    ({"decoder.output": {"bits": 4}}, "only 8-bit rounding"),
])
def test_bad_settings_name_the_target_and_key(settings, match):
    with pytest.raises(SchemeError, match=match):
        Scheme.build(discover_targets(small_asr()), settings, "manual")


def test_the_registry_finds_techniques_by_name_and_key():
    assert list(TECHNIQUES) == ["lowrank", "prune", "quantize"]
    assert owner("rank") is technique("lowrank") and owner("pattern") is technique("prune")
    target = discover_targets(small_asr())[0]
    assert technique("lowrank").options(target)[-1] == {"rank": target.max_rank}
    assert all(0 < o["sparsity"] < 1 for o in technique("prune").options(target))
    with pytest.raises(SchemeError, match="unknown compression technique 'svd'"):
        technique("svd")
