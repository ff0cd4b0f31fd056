"""Write a trained recognizer as a deployable folder: ONNX graphs and/or TorchScript with the C++ kernels.

The folder (:data:`MANIFEST` names its files) holds everything a process needs to turn audio into text without
this project: the front-end settings and CMVN statistics, the sentencepiece model, and per format

* ``onnx``: ``encoder.onnx`` and ``decoder.onnx`` (:class:`asr.export.graphs.EncoderStep` /
  :class:`~asr.export.graphs.DecoderStep` in standard operators; any input length), for ONNX Runtime;
* ``torchscript``: ``model.ts``, one TorchScript module (:class:`asr.export.kernel_bundle.KernelBundle`) with
  methods ``encode``, ``step`` and ``greedy`` (the whole greedy loop in one call) that call the project's C++
  kernels as custom operators, and
  ``libshrinkml_kernels.so``, the library registering them (``torch.ops.load_library``).

Every file is written atomically (into a temporary folder moved into place at the end).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from dataclasses import asdict
from pathlib import Path

import torch

from asr import kernels
from asr.assets import AsrAssets
from asr.export import onnx_storage
from asr.export.graphs import DecoderStep, EncoderStep
from asr.export.kernel_bundle import KernelBundle
from asr.model.asr_model import AsrModel
from common.errors import KnownError

FORMATS = ("onnx", "torchscript")
MANIFEST = "manifest.json"
KERNEL_LIBRARY = "libshrinkml_kernels.so"
VERSION = 1


class ExportError(KnownError, ValueError):
    """An export that cannot be made as asked (unknown format, missing dependency, a model the format cannot hold)."""


def example_inputs(model: AsrModel, chunks: int = 3, frames: int = 7, rows: int = 2
                   ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """Inputs to trace the steps with: ``chunks`` encoder frames' worth of features and a decoder step of ``rows``
    hypotheses over ``frames`` encoder frames."""
    encoder, decoder = model.encoder, model.decoder
    layers, hidden = len(encoder.layers), encoder.hidden_size
    input_size = encoder.layers[0].input_size // encoder.input_stack
    features = torch.randn(1, chunks * encoder.reduction, input_size)
    zeros = torch.zeros(layers, 1, hidden)
    attention = decoder.attention.mono_key.out_features
    step = (torch.full((rows,), 3, dtype=torch.long), torch.zeros(rows, decoder.cell.hidden_size),
            torch.zeros(rows, decoder.cell.hidden_size), torch.zeros(rows, hidden), torch.zeros(rows, dtype=torch.long),
            torch.randn(1, frames, hidden), torch.randn(1, frames, attention), torch.randn(1, frames, attention),
            torch.zeros(1, dtype=torch.bool))
    return (features, zeros, zeros.clone()), step


def manifest(model: AsrModel, assets: AsrAssets, decoding: dict, formats: list[str]) -> dict:
    """What a runtime needs to know besides the graphs (written as ``manifest.json``)."""
    encoder, decoder = model.encoder, model.decoder
    return {
        "version": VERSION, "formats": formats,
        "features": asdict(assets.features), "cmvn_mean": assets.cmvn.mean.tolist(),
        "cmvn_std": assets.cmvn.std.tolist(), "tokenizer": "tokenizer.model",
        "encoder": {"layers": len(encoder.layers), "hidden_size": encoder.hidden_size,
                    "reduction": encoder.reduction, "input_size": encoder.layers[0].input_size // encoder.input_stack},
        "decoder": {"hidden_size": decoder.cell.hidden_size, "vocab_size": decoder.vocab_size,
                    "hard_fallback": bool(decoder.attention.hard_fallback)},
        "decoding": {"beam_size": int(decoding.get("beam_size", 0)),
                     "length_penalty": float(decoding.get("length_penalty", 0.0)),
                     "max_decode_ratio": float(model.max_decode_ratio)},
    }


def _export_onnx(model: AsrModel, folder: Path, opset: int, compact: bool) -> None:
    try:
        import onnx  # noqa: F401  (the exporter needs it)
    except ImportError as err:
        raise ExportError("format=onnx needs the onnx package: pip install onnx onnxruntime") from err
    encoder_inputs, step_inputs = example_inputs(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on shapes it keeps dynamic
        torch.onnx.export(EncoderStep(model, kernels=False), encoder_inputs, str(folder / "encoder.onnx"),
                          dynamo=False, opset_version=opset, input_names=["features", "h", "c"],
                          output_names=["memory", "mono_keys", "chunk_keys", "h_out", "c_out"],
                          dynamic_axes={"features": {1: "t"}, "memory": {1: "t_out"}, "mono_keys": {1: "t_out"},
                                        "chunk_keys": {1: "t_out"}})
        rows = {0: "n"}
        torch.onnx.export(DecoderStep(model, kernels=False), step_inputs, str(folder / "decoder.onnx"),
                          dynamo=False, opset_version=opset,
                          input_names=["tokens", "h", "c", "context", "boundary", "memory", "mono_keys", "chunk_keys",
                                       "fallback"],
                          output_names=["log_probs", "h_out", "c_out", "context_out", "boundary_out"],
                          dynamic_axes={"tokens": rows, "h": rows, "c": rows, "context": rows, "boundary": rows,
                                        "memory": {1: "frames"}, "mono_keys": {1: "frames"},
                                        "chunk_keys": {1: "frames"}, "log_probs": rows, "h_out": rows, "c_out": rows,
                                        "context_out": rows, "boundary_out": rows})
    if compact:  # pruned weights stored sparse, 8-bit ones as int8 (asr.export.onnx_storage)
        for name in ("encoder.onnx", "decoder.onnx"):
            onnx_storage.compact(str(folder / name))


def _export_torchscript(model: AsrModel, folder: Path) -> None:
    try:
        kernels.load()
    except (RuntimeError, FileNotFoundError) as err:
        raise ExportError(f"format=torchscript keeps the C++ kernels, which cannot be built here ({err})") from err
    encoder_inputs, _ = example_inputs(model)
    encoder_step = EncoderStep(model, kernels=True)
    plan = DecoderStep(model, kernels=True).plan
    encoder_step(*encoder_inputs)  # packs the kernels' weights into their caches: constants of the trace, not
    #                                packing operations run on every call
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes; torch.jit's deprecation notices
        encode = torch.jit.trace(encoder_step, encoder_inputs, check_trace=False)
        scripted = torch.jit.script(KernelBundle(encode, plan))
    scripted.save(str(folder / "model.ts"))
    shutil.copyfile(kernels.library_path(), folder / KERNEL_LIBRARY)


def export(model: AsrModel, assets: AsrAssets, decoding: dict, out_dir: str | Path, formats: list[str],
           opset: int = 17, compact: bool = True) -> Path:
    """Write ``model`` (eval mode, any compression it carries) with ``assets`` into ``out_dir`` in ``formats``
    (a subset of :data:`FORMATS`); returns the folder. An existing folder is replaced only once the new one is
    complete. ``compact``: ONNX files store pruned weights sparse and 8-bit weights as int8
    (:func:`asr.export.onnx_storage.compact`; the computed values are unchanged)."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ExportError(f"export format {unknown or formats} unknown: give format= one or more of {list(FORMATS)}")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    with torch.no_grad(), tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}.") as tmp:
        folder = Path(tmp) / "bundle"
        folder.mkdir()
        if "onnx" in formats:
            _export_onnx(model, folder, opset, compact)
        if "torchscript" in formats:
            _export_torchscript(model, folder)
        (folder / "tokenizer.model").write_bytes(assets.tokenizer.model_proto)
        (folder / MANIFEST).write_text(json.dumps(manifest(model, assets, decoding, list(formats)), indent=1))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        folder.rename(out_dir)
    return out_dir
