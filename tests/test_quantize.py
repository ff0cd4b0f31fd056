"""8-bit quantization (compress.quantize) of dense and compressed models, and the quantize stage
(scripts/quantize.py) end to end on a tiny trained checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from asr_helpers import VOCAB, corpus_copy_for_runs, shared_dir, small_asr_model, trained_run
from torch import nn

from asr.model.fast_decode import step_plan
from compress.quantize import (
    dequantize_rows,
    kernel_parameters,
    linear_weights,
    load_int8,
    quantize_int8,
    quantize_rows,
    save_int8,
    serialized_mb,
)

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_rows_round_to_eight_bits_within_half_a_step():
    weight = torch.randn(12, 40) * torch.linspace(0.01, 5.0, 12).unsqueeze(1)
    weight[3] = 0.0  # an all-zero row must not divide by zero
    q, scale = quantize_rows(weight)
    assert q.dtype == torch.int8 and q.abs().max() <= 127 and scale.shape == (12, 1)
    error = (dequantize_rows(q, scale) - weight).abs()
    assert torch.all(error <= scale / 2 + 1e-7)
    assert torch.equal(dequantize_rows(q, scale)[3], torch.zeros(40))


@pytest.mark.parametrize("compressed", [False, True])
def test_int8_model_stays_close_leaves_the_original_and_round_trips(compressed, tmp_path):
    model = small_asr_model(compressed)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    features, lengths = torch.randn(2, 40, 20), torch.tensor([40, 31])
    with torch.no_grad():
        memory, memory_lengths = model.encode(features, lengths)
    quantized = quantize_int8(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # original untouched
    linears = [m for m in quantized.modules() if type(m) is nn.Linear]
    dynamic = [m for m in quantized.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    assert not linears and len(dynamic) == sum(isinstance(m, nn.Linear) for m in model.modules())
    kernels = kernel_parameters(quantized)
    assert len(kernels) == (6 if compressed else 3)  # 2 encoder layers + decoder cell, U' and V* when factorized
    for tensor in kernels.values():  # every kernel row lies on its 8-bit grid
        q, scale = quantize_rows(tensor)
        assert torch.allclose(dequantize_rows(q, scale), tensor, atol=1e-6)
    with torch.no_grad():
        q_memory, _ = quantized.encode(features, lengths)
    relative = (q_memory - memory).norm() / memory.norm()
    assert 0 < relative < 0.05, relative
    size = save_int8(tmp_path / "m.pt", quantized, note="kept")
    assert size < 0.7 * serialized_mb(model.state_dict())  # tiny tensors: pickling overhead weighs in
    loaded, stored = load_int8(tmp_path / "m.pt", lambda _: small_asr_model(compressed))
    assert stored["note"] == "kept"
    with torch.no_grad():
        assert torch.equal(loaded.encode(features, lengths)[0], q_memory)
        assert loaded.greedy_decode(features, lengths) == quantized.greedy_decode(features, lengths)


@pytest.mark.parametrize("compressed", [False, True])
def test_weight_only_int8_keeps_float_linears_on_the_8_bit_grid_and_the_fast_decoder_step(compressed, tmp_path):
    model = small_asr_model(compressed)
    features, lengths = torch.randn(2, 40, 20), torch.tensor([40, 31])
    quantized = quantize_int8(model, linear="weight_only")
    linears = linear_weights(quantized)
    assert len(linears) == sum(isinstance(m, nn.Linear) for m in model.modules()) > 0
    assert not any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in quantized.modules())
    for key, tensor in {**linears, **kernel_parameters(quantized)}.items():  # every row on its 8-bit grid
        q, scale = quantize_rows(tensor)
        assert torch.allclose(dequantize_rows(q, scale), tensor, atol=1e-6), key
    original = model.state_dict()
    assert any(not torch.equal(original[key], tensor) for key, tensor in linears.items())  # really rounded
    with torch.no_grad():
        # the C++ decoder step applies exactly where it applies to the float model (dynamic Linears: never)
        assert (step_plan(quantized.decoder) is None) == (step_plan(model.decoder) is None)
        assert step_plan(quantize_int8(model).decoder) is None
        q_memory, _ = quantized.encode(features, lengths)
        memory, _ = model.encode(features, lengths)
    assert 0 < (q_memory - memory).norm() / memory.norm() < 0.05
    size = save_int8(tmp_path / "m.pt", quantized)
    dynamic_size = save_int8(tmp_path / "d.pt", quantize_int8(model))
    assert size < 0.7 * serialized_mb(model.state_dict()) and size < 1.3 * dynamic_size
    loaded, stored = load_int8(tmp_path / "m.pt", lambda _: small_asr_model(compressed))
    assert stored["linear"] == "weight_only"
    assert not any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in loaded.modules())
    with torch.no_grad():
        assert torch.equal(loaded.encode(features, lengths)[0], q_memory)
        assert loaded.greedy_decode(features, lengths) == quantized.greedy_decode(features, lengths)
    with pytest.raises(ValueError, match="weight_only"):
        quantize_int8(model, linear="int4")


def test_dense_size_of_a_pruned_model_leaves_its_masks_out():
    from compress.prune import register_mask_buffers
    from compress.targets import discover_targets
    from shrinkml.quantize import dense_mb

    model = small_asr_model(False)
    plain = dense_mb(model.state_dict())
    targets = discover_targets(model)
    register_mask_buffers(model, [t.name + (".weight" if t.kind == "linear" else ".kernel") for t in targets])
    assert serialized_mb(model.state_dict()) > 1.1 * plain  # the bool masks are there
    assert dense_mb(model.state_dict()) == pytest.approx(plain, rel=0.02)


def test_damaged_or_foreign_int8_files_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="scripts/quantize.py"):
        load_int8(tmp_path / "none.pt", lambda _: small_asr_model(False))
    (tmp_path / "bad.pt").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="damaged"):
        load_int8(tmp_path / "bad.pt", lambda _: small_asr_model(False))
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not an int8 model"):
        load_int8(tmp_path / "foreign.pt", lambda _: small_asr_model(False))


def test_quantize_script_reports_size_wer_and_speedup(tiny_corpus, tmp_path_factory):
    base = shared_dir(tmp_path_factory)
    run_dir, _ = trained_run(tiny_corpus, base)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    corpus = corpus_copy_for_runs(tiny_corpus, base)
    out = base / "quantize"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    args = [f"ckpt={ckpt}", f"baseline={ckpt}", f"data.root={corpus}", f"data.cache_dir={base / 'features'}",
            f"data.tokenizer.vocab_size={VOCAB}", f"data.tokenizer.dir={base / 'tokenizer'}", "data.feature_jobs=1",
            "data.progress=false", "logger=csv", "decoding.beam_size=2", "latency.utterances=3", "latency.repeats=1",
            f"output_dir={out}"]
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "quantize.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["stage"] == "quantize" and report["provenance"] == "dense"
    assert report["size_mb"] < 0.7 * report["size_mb_float"]
    assert report["wer/test"] >= 0 and report["wer_float/test"] >= 0
    assert report["speedup/measured"] > 0 and report["rtf"]["int8"] > 0
    assert "quantize (weight_only int8 Linears): size" in done.stdout  # the default mode
    assert report["bytes/sparse"] == report["bytes/dense"] > report["bytes/sparse_int8"]  # dense: no zeros to drop
    assert 0 < report["params/nonzero"] <= report["params"] and "stored sparse:" in done.stdout
    missing = subprocess.run([sys.executable, str(ROOT / "scripts" / "quantize.py"), *args,
                              f"ckpt={base / 'none.ckpt'}"], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=600)
    assert missing.returncode == 2 and "none.ckpt" in missing.stderr
