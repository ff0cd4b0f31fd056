"""benchmarks/sparse_speedup.py: one-shot pruning at the asked sparsity and block shape, decoding for a fixed
number of greedy steps (the same tokens as greedy decoding), per-repeat speed-ups, where pruning starts to pay,
and the kernel table on a tiny model (no speed asserted)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from asr_helpers import load_benchmark, tiny_model_config

from asr.latency import DecodeClock
from asr.model.asr_model import AsrModel
from compress.prune import prunable_matrices

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("sparse_speedup")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_model() -> AsrModel:
    torch.manual_seed(0)
    config = tiny_model_config()
    config["ctc_weight"] = 0.3
    model = AsrModel(40, 20, **config).eval()
    model.set_decoding(1.0, False, None)
    return model


@pytest.mark.parametrize("block", [(1, 1), (1, 4), (4, 1)])
def test_one_shot_pruning_reaches_the_sparsity_in_blocks_and_leaves_the_ctc_head(bench, block):
    model = tiny_model()
    pruned, skipped = bench.prune_one_shot(model, 0.75, block)
    assert torch.count_nonzero(model.decoder.output.weight) == model.decoder.output.weight.numel()  # a copy
    assert torch.equal(pruned.ctc_head.weight, model.ctc_head.weight)
    for matrix in prunable_matrices(pruned, exclude=["ctc_head"]):
        weight = matrix.param
        if matrix.path in skipped:
            assert block == (4, 1) and weight.shape[0] % 4  # chunk_v (1 x A) has no 4 x 1 blocks
            continue
        assert abs((weight == 0).float().mean().item() - 0.75) < 0.02, matrix.path
        bh, bw = block
        blocks = (weight != 0).reshape(weight.shape[0] // bh, bh, weight.shape[1] // bw, bw)
        assert torch.equal(blocks.any(dim=3).any(dim=1), blocks.all(dim=3).all(dim=1))  # whole blocks kept
    assert skipped == (["decoder.attention.chunk_v.weight"] if block == (4, 1) else [])


def test_fixed_steps_decode_the_greedy_tokens(bench):
    model = tiny_model()
    torch.manual_seed(1)
    utterances = [(torch.randn(1, 40, 20), torch.tensor([40])), (torch.randn(1, 28, 20), torch.tensor([28]))]
    steps = bench.greedy_steps(model, utterances)
    with torch.inference_mode():
        greedy = [model.greedy_decode(f, n)[0] for f, n in utterances]
    assert steps == [len(g) + 1 for g in greedy]
    encoder, decoder = bench.decode_pass(model, utterances, steps, DecodeClock(1))()
    assert encoder > 0 and decoder > 0


def test_speedups_are_medians_of_per_repeat_ratios_and_where_pruning_pays(bench):
    seconds = {"dense": [(2.0, 1.0), (4.0, 2.0), (2.0, 1.0)],
               "unstructured 0.5": [(2.0, 2.0), (4.0, 4.0), (2.0, 2.0)],       # slower
               "unstructured 0.9": [(1.0, 0.5), (2.0, 1.0), (1.0, 0.5)]}       # twice as fast, load drift cancels
    results = bench.summarize(seconds, audio=10.0)
    assert results["unstructured 0.9"]["total"]["speedup"] == pytest.approx(2.0)
    assert results["unstructured 0.9"]["total"]["speedup_spread"] == pytest.approx((2.0, 2.0))
    assert results["unstructured 0.5"]["encoder"]["speedup"] == pytest.approx(1.0)
    assert results["dense"]["total"]["ms_per_s"] == pytest.approx(300.0)  # 3 s of 10 s audio: median repeat
    assert bench.pays_from(results, "unstructured", [0.5, 0.9]) == 0.9
    results["unstructured 0.5"]["total"]["speedup"] = 1.1
    assert bench.pays_from(results, "unstructured", [0.5, 0.9]) == 0.5
    results["unstructured 0.9"]["total"]["speedup"] = 0.9
    assert bench.pays_from(results, "unstructured", [0.5, 0.9]) is None  # the sparsest must pay first
    seconds[bench.CONTROL] = [(1.5, 1.0), (3.0, 2.0), (1.5, 1.0)]  # the dense weights on the sparse kernels
    results = bench.summarize(seconds, audio=10.0)
    assert results["unstructured 0.9"]["total"]["speedup_vs_control"] == pytest.approx(2.5 / 1.5)
    assert bench.pays_from(results, "unstructured", [0.5, 0.9], "speedup_vs_control") == 0.9


def test_kernel_rows_on_the_model_shapes(bench):
    rows = bench.kernel_rows(tiny_model(), [0.5], repeats=1, calls=4)
    assert {r["matrix"] for r in rows} == {"encoder.layers.0", "encoder.layers.1", "decoder.cell"}
    assert {r["pattern"] for r in rows} == set(bench.PATTERNS) and all(r["us"]["sparse"] > 0 for r in rows)


def test_the_factorized_layer_table_times_every_case(bench):
    from asr.model.lstm import ConcatLSTM

    torch.manual_seed(0)
    layer = ConcatLSTM(8, 8).eval()
    cases = bench.factorized_cases(layer, [4], [0.5])
    assert list(cases) == ["dense (oneDNN fused)", "dense pruned 0.8 4x1 (sparse W_hh)", "r4",
                           "r4 on the sparse loop (control)", "r4+s0.5 unstructured", "r4+s0.5 4x1"]
    entry = cases["r4+s0.5 4x1"].parametrizations.kernel
    u, v = entry.original0, entry.original1
    assert (u == 0).float().mean() == 0.5 and (v == 0).float().mean() == 0.5
    assert cases["r4"].sparse_min_sparsity is None and (cases["r4"].kernel != 0).all()
    rows = bench.factorized_rows(layer, [4], [0.5], frames=5, repeats=1, calls=1)
    assert [r["layer"] for r in rows] == list(cases) and all(r["ms"] > 0 for r in rows)
    assert rows[2]["speedup_vs_rank"] == 1.0 and rows[0]["speedup_vs_rank"] is None
    assert rows[-1]["blocks"] in {"x".join(map(str, b)) for b in bench.sparse.FACTOR_BLOCK_COST}
    assert not rows[2]["blocks"] and rows[2]["decodes_sparse"] is None and rows[-1]["decodes_sparse"] in (True, False)
