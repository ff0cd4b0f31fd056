"""Measured speed of a model's deployable forms against PyTorch's and ONNX Runtime's dense models.

Used by the export stage (``report.json``: ``speedup/...``) and ``benchmarks/deploy_speed.py``. Every model is
exported (:func:`asr.export.bundle.export`) and decoded greedily at batch 1 in each form a user could deploy:

* ``pytorch``: the model in this project's PyTorch runtime (``model.greedy_decode``: fused dense LSTM, the C++
  factorized and sparse recurrences, the C++ greedy loop);
* ``torchscript``: the exported ``model.ts`` with its kernel library (:mod:`asr.runtime`; the greedy loop in one C++
  call);
* ``onnxruntime``: the exported ONNX pair in ONNX Runtime (one intra-op thread; greedy loop in Python).

The dense reference is the baseline in PyTorch and in ONNX Runtime; times alternate (:func:`asr.latency.alternate`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from asr.export.bundle import export
from asr.latency import deployment_speedups
from asr.runtime import Recognizer

REFERENCES = ("pytorch dense", "onnxruntime dense")


def forms(name: str, model: nn.Module, assets, decoding: Mapping, folder: Path, threads: int = 1
          ) -> dict[str, Callable[[torch.Tensor], list[int]]]:
    """``{"<form> <name>": decode(features (T, F)) -> ids}`` of ``model``, exported into ``folder`` (both formats)."""
    export(model, assets, dict(decoding), folder, ["onnx", "torchscript"])
    onnx, script = Recognizer.load(folder, "onnx", threads), Recognizer.load(folder, "torchscript")

    def pytorch(features: torch.Tensor) -> list[int]:
        return model.greedy_decode(features.unsqueeze(0), torch.tensor([features.shape[0]]))[0]

    return {f"pytorch {name}": pytorch, f"torchscript {name}": lambda f: script.decode(f, 0),
            f"onnxruntime {name}": lambda f: onnx.decode(f, 0)}


def measure(decoders: Mapping[str, Callable], features: Sequence[torch.Tensor], frame_shift_ms: float,
            repeats: int, threads: int = 1) -> dict[str, dict[str, float]]:
    """:func:`asr.latency.deployment_speedups` against :data:`REFERENCES` (``decoders`` holds their ``dense`` forms),
    with ``token_mismatches``: utterances whose ids differ from the PyTorch form of the same model."""
    table = deployment_speedups(decoders, features, frame_shift_ms, REFERENCES, repeats, threads)
    for name, decode in decoders.items():
        reference = decoders[f"pytorch {name.split(' ', 1)[1]}"]
        table[name]["token_mismatches"] = sum(decode(f) != reference(f) for f in features)
    return table


def cpu_name() -> str:
    """The CPU's model name and widest vector extension (AVX-512 or AVX2) from /proc/cpuinfo."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"
    lines = info.splitlines()
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "?")
    flags = next((line for line in lines if line.startswith("flags")), "")
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{name} ({vector})"


def format_table(table: Mapping[str, Mapping[str, float]]) -> list[str]:
    """The printed table of :func:`measure`'s result."""
    lines = [f"{'form':<34} {'ms/audio s':>10} {'wall':>8} {'vs PyTorch dense':>17} {'vs ORT dense':>13} mismatches"]
    for form, row in table.items():
        lines.append(f"{form:<34} {row['ms_per_audio_second']:>10.3f} {row['wall_ms_per_audio_second']:>8.3f} "
                     f"{row['vs_pytorch dense']:>16.2f}x {row['vs_onnxruntime dense']:>12.2f}x "
                     f"{row['token_mismatches']:>5}")
    return lines
