"""Export (asr.export) and the light runtime (asr.runtime): the exported pair decodes like PyTorch, in ONNX Runtime
and in TorchScript with the C++ kernels, offline and streaming, for dense, factorized, pruned and factorized + pruned
models; the TorchScript folder runs in a process that cannot import the project."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from asr_helpers import (
    compose_root,
    corpus_copy_for_runs,
    firing_model,
    hydra_job,
    run_overrides,
    shared_dir,
    streaming_waves,
    tiny_assets,
    trained_run,
)

from asr.data.audio import load_audio
from asr.data.corpus import read_split
from asr.data.features import log_mel
from asr.export.bundle import ExportError, export
from asr.model.asr_model import AsrModel
from asr.runtime import Recognizer, RuntimeError_
from compress.scheme import Scheme, apply_scheme
from compress.svd import SvdCache
from compress.targets import discover_targets
from shrinkml.export import log_prob_difference

pytestmark = pytest.mark.usefixtures("one_torch_thread", "cpp_extension")

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
KINDS = ["dense", "factorized", "pruned", "factorized_pruned"]


@pytest.fixture(scope="module")
def assets(tiny_corpus, tmp_path_factory):
    return tiny_assets(tiny_corpus, tmp_path_factory)


@pytest.fixture(scope="module")
def waves(tiny_corpus, assets):
    return streaming_waves(tiny_corpus, assets)


def prune_(tensor: torch.Tensor, sparsity: float) -> None:
    """Zero the ``sparsity`` share of smallest-magnitude entries of ``tensor`` in place."""
    threshold = tensor.abs().flatten().kthvalue(max(1, int(sparsity * tensor.numel()))).values
    tensor.masked_fill_(tensor.abs() <= threshold, 0.0)


def make_model(assets, kind: str) -> AsrModel:
    """A random tiny model whose hard attention fires on some frames (its boundary moves), compressed as ``kind``."""
    model = firing_model(assets, 3)
    if kind.startswith("factorized"):
        targets = discover_targets(model)
        scheme = Scheme.build(targets, {t.name: max(1, t.max_rank // 2) for t in targets if t.max_rank >= 4}, "test")
        model = apply_scheme(model, scheme, targets, SvdCache()).eval()
    if kind.endswith("pruned"):
        with torch.no_grad():
            for name, param in model.named_parameters():
                if param.dim() == 2 and "embedding" not in name:
                    prune_(param, 0.8)
    model.set_decoding(1.0, False, 0.5)  # pruned matrices run on the sparse kernels
    return model


@pytest.fixture(scope="module", params=KINDS)
def exported(request, assets, tmp_path_factory):
    model = make_model(assets, request.param)
    folder = export(model, assets, {"beam_size": 3, "length_penalty": 0.5}, tmp_path_factory.mktemp("export") / "m",
                    ["onnx", "torchscript"])
    return model, folder


def offline(model, assets, wave, beam: int = 0, length_penalty: float = 0.5) -> list[int]:
    feats = assets.cmvn(log_mel(wave, assets.features)).unsqueeze(0)
    return model.decode(feats, torch.tensor([feats.shape[1]]), beam, length_penalty)[0]


@pytest.mark.parametrize("backend", ["onnx", "torchscript"])
def test_exported_steps_decode_like_pytorch(exported, assets, waves, backend):
    model, folder = exported
    recognizer = Recognizer.load(folder, backend)
    reference = Recognizer.from_model(model, assets, {"beam_size": 3, "length_penalty": 0.5})
    decoded_some = False
    for wave in waves:
        feats = recognizer.normalized_features(wave)
        assert log_prob_difference(reference, recognizer, feats) <= 1e-4
        greedy = offline(model, assets, wave)
        decoded_some |= len(greedy) > 0
        assert recognizer.decode(feats, 0) == greedy
        assert recognizer.decode(feats) == offline(model, assets, wave, beam=3)  # the manifest's beam and penalty
    assert decoded_some


@pytest.mark.parametrize("backend", ["onnx", "torchscript"])
def test_exported_streaming_equals_offline_greedy(exported, assets, waves, backend):
    model, folder = exported
    recognizer = Recognizer.load(folder, backend)
    for wave in waves:
        stream = recognizer.stream()
        early, start = [], 0
        for size in [160, 1234, 7, 5000, 399] * 100:
            if start >= wave.numel():
                break
            early += stream.accept_audio(wave[start : start + size])
            start += size
        late = stream.finish()
        assert early + late == stream.tokens == offline(model, assets, wave)


def test_onnx_graphs_take_any_input_length(assets, tmp_path):
    import onnxruntime as ort

    model = make_model(assets, "factorized")
    folder = export(model, assets, {"beam_size": 0}, tmp_path / "m", ["onnx"])
    session = ort.InferenceSession(str(folder / "encoder.onnx"), providers=["CPUExecutionProvider"])
    manifest = json.loads((folder / "manifest.json").read_text())
    layers, hidden = manifest["encoder"]["layers"], manifest["encoder"]["hidden_size"]
    reduction = manifest["encoder"]["reduction"]
    for groups in (1, 5, 40):
        features = torch.randn(1, groups * reduction, assets.features.n_mels)
        zeros = torch.zeros(layers, 1, hidden)
        memory = session.run(None, {"features": features.numpy(), "h": zeros.numpy(), "c": zeros.numpy()})[0]
        expected, _ = model.encoder(features, torch.tensor([features.shape[1]]))
        assert memory.shape == (1, groups, hidden)
        assert torch.allclose(torch.from_numpy(memory), expected, atol=1e-5)


def test_torchscript_folder_runs_without_the_project(exported, assets, waves, tmp_path):
    """A fresh process whose imports of the project's packages fail loads the kernel library and the model."""
    model, folder = exported
    recognizer = Recognizer.from_model(model, assets, {"beam_size": 0})
    feats = recognizer.normalized_features(waves[0])[: 8 * 4].unsqueeze(0).contiguous()
    torch.save({"features": feats}, tmp_path / "inputs.pt")
    code = textwrap.dedent(f"""
        import sys, importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in ("asr", "compress", "rl", "shrinkml", "common"):
                    raise ImportError("the project is not importable here: " + name)
        sys.meta_path.insert(0, Block())
        import torch
        torch.ops.load_library({str(folder / "libshrinkml_kernels.so")!r})
        module = torch.jit.load({str(folder / "model.ts")!r})
        feats = torch.load({str(tmp_path / "inputs.pt")!r})["features"]
        layers, hidden = {len(model.encoder.layers)}, {model.encoder.hidden_size}
        zeros = torch.zeros(layers, 1, hidden)
        memory, mono, chunk, h, c = module.encode(feats, zeros, zeros)
        torch.save({{"memory": memory}}, {str(tmp_path / "out.pt")!r})
        try:
            import asr
        except ImportError:
            print("blocked")
        """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "blocked"
    expected, _ = model.encoder(feats, torch.tensor([feats.shape[1]]))
    assert torch.allclose(torch.load(tmp_path / "out.pt")["memory"], expected, atol=1e-5)


def test_bad_export_requests_stop_with_one_line(assets, tmp_path):
    model = make_model(assets, "dense")
    with pytest.raises(ExportError, match="format"):
        export(model, assets, {}, tmp_path / "m", ["tflite"])
    with pytest.raises(RuntimeError_, match="no manifest.json"):
        Recognizer.load(tmp_path)
    folder = export(model, assets, {}, tmp_path / "onnx_only", ["onnx"])
    with pytest.raises(RuntimeError_, match="backend=torchscript"):
        Recognizer.load(folder, "torchscript")


def test_export_stage_checks_parity_and_wer(tiny_corpus, tmp_path_factory):
    """scripts/export.py's task on a trained checkpoint: both backends match PyTorch's test WER."""
    from shrinkml.export import run_export

    base = shared_dir(tmp_path_factory)
    run_dir, _ = trained_run(tiny_corpus, base)
    out = base / "export_stage"
    corpus = corpus_copy_for_runs(tiny_corpus, base)
    checkpoint = run_dir / "checkpoints" / "best.ckpt"
    cfg = compose_root("export", [f"ckpt={checkpoint}", "parity_utterances=2", *run_overrides(corpus, base)[:7],
                                  f"output_dir={out}", f"baseline={checkpoint}", "latency.utterances=2",
                                  "latency.repeats=1"])
    with hydra_job(cfg, out) as task:
        summary = run_export(task)
    assert summary["parity/onnx"] <= 1e-4 and summary["parity/torchscript"] <= 1e-4
    assert summary["wer/test/onnx"] == summary["wer/test/torchscript"] == summary["wer/test/pytorch"]
    assert json.loads((out / "report.json").read_text())["formats"] == ["onnx", "torchscript"]
    assert (out / "model" / "encoder.onnx").is_file() and (out / "model" / "model.ts").is_file()
    assert set(summary["speed"]) == {f"{form} {name}" for form in ("pytorch", "torchscript", "onnxruntime")
                                     for name in ("dense", "model")}
    assert all(row["token_mismatches"] == 0 and row["ms_per_audio_second"] > 0 for row in summary["speed"].values())
    assert summary["speedup/onnxruntime_vs_onnxruntime_dense"] > 0


@pytest.mark.parametrize("backend", ["torchscript", "onnx"])
def test_transcribe_script_runs_an_exported_folder(tiny_corpus, tmp_path_factory, backend, capsys):
    from asr_helpers import load_module

    from asr.checkpoint import load_module as load_checkpoint
    from asr.checkpoint import transcribe_features

    base = shared_dir(tmp_path_factory)
    run_dir, _ = trained_run(tiny_corpus, base)
    checkpoint = run_dir / "checkpoints" / "best.ckpt"
    module = load_checkpoint(checkpoint)
    folder = export(module.model, module.assets, dict(module.decoding), tmp_path_factory.mktemp("t") / "m",
                    ["onnx", "torchscript"])
    script = load_module(SCRIPTS / "transcribe.py", "transcribe_export")
    flac = read_split(tiny_corpus, "test")[0].audio_path
    wave = load_audio(flac, module.assets.features.sample_rate)
    expected = transcribe_features(module, [module.assets.cmvn(log_mel(wave, module.assets.features))], None)[0]
    assert script.main([str(folder), str(flac), "--backend", backend]) == 0
    assert capsys.readouterr().out == f"{flac}: {expected}\n"


def test_onnx_files_store_pruned_weights_sparse_and_int8_weights_as_int8(assets, waves, tmp_path):
    """A pruned, then int8-rounded model: the compact ONNX files are much smaller and compute the same values."""
    from compress.quantize import quantize_int8

    model = make_model(assets, "dense")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2 and "embedding" not in name:
                prune_(param, 0.9)
    model = quantize_int8(model, "weight_only")
    plain = export(model, assets, {"beam_size": 0}, tmp_path / "plain", ["onnx"], compact=False)
    small = export(model, assets, {"beam_size": 0}, tmp_path / "small", ["onnx"])
    size = {folder: sum((folder / n).stat().st_size for n in ("encoder.onnx", "decoder.onnx")) for folder in
            (plain, small)}
    assert size[small] < 0.6 * size[plain]  # tiny tensors (under MIN_ELEMENTS) and the graph itself stay as they are
    a, b = Recognizer.load(plain, "onnx"), Recognizer.load(small, "onnx")
    for wave in waves:
        feats = a.normalized_features(wave)
        assert all(torch.equal(x, y) for x, y in zip(a.encode(feats), b.encode(feats), strict=True))
        assert a.decode(feats) == b.decode(feats) == offline(model, assets, wave)


def test_the_runtime_and_transcribe_import_no_training_stack():
    """A cold transcription pays for torch's import and little else: no Lightning, Hydra, W&B or torch._dynamo."""
    code = textwrap.dedent(f"""
        import importlib.util, sys
        import asr.runtime
        spec = importlib.util.spec_from_file_location("transcribe", {str(SCRIPTS / "transcribe.py")!r})
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("lightning", "pytorch_lightning", "hydra",
                                                                      "wandb", "lhotse", "optuna")
                       or m.startswith("torch._dynamo"))
        print(heavy)
        """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
