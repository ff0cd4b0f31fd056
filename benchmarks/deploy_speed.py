#!/usr/bin/env python
"""Measured speed of deployable forms against the best dense runtime (prints numbers).

    python benchmarks/deploy_speed.py --baseline runs/baseline/checkpoints/best.ckpt \\
        --model svd3.0=runs/retrain_optuna_tpe_latency_3.0_d120/checkpoints/best.ckpt --utterances 40

Every model is exported (``asr.export.bundle``) and decoded greedily, batch 1, on one thread, on the same test
utterances, in every form a user could deploy:

* ``pytorch``: the model in this project's PyTorch runtime (``model.greedy_decode``: fused dense LSTM, the C++
  factorized and sparse recurrences, the C++ greedy loop);
* ``torchscript``: the exported ``model.ts`` with the kernel library (``asr.runtime``, greedy loop in Python);
* ``onnxruntime``: the exported ONNX pair in ONNX Runtime (one intra-op thread, greedy loop in Python).

The dense baseline is timed the same ways; a speed-up is given against PyTorch's dense model and against ONNX
Runtime's dense model. Runs alternate within each repeat (``asr.latency.alternate``); the clock is the thread's CPU
time (ONNX Runtime on one intra-op thread computes in the calling thread), wall time beside it. A model's time is
the median over repeats of its total over the utterances; its speed-up the median of the per-repeat ratios. Every
form's tokens are checked against the PyTorch model's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from asr.data.audio import load_audio
from asr.data.corpus import read_split
from asr.export.bundle import export
from asr.latency import DecodeClock, alternate
from asr.runtime import Recognizer, load_checkpoint_model
from compress.checkpoint import restore_compression


def cpu_name() -> str:
    """The CPU's model name and widest vector extension (AVX-512 or AVX2) from /proc/cpuinfo."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = next((line for line in info.splitlines() if line.startswith("flags")), "")
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{name} ({vector})"


def forms(name: str, checkpoint: str, folder: Path) -> dict:
    """``{form: (decode(features) -> ids)}`` of one checkpoint, exported into ``folder``."""
    model, assets, decoding = load_checkpoint_model(checkpoint, prepare=restore_compression)
    export(model, assets, decoding, folder, ["onnx", "torchscript"])
    onnx, script = Recognizer.load(folder, "onnx", threads=1), Recognizer.load(folder, "torchscript")

    def pytorch(features: torch.Tensor) -> list[int]:
        return model.greedy_decode(features.unsqueeze(0), torch.tensor([features.shape[0]]))[0]

    return {"assets": assets, f"pytorch {name}": pytorch,
            f"torchscript {name}": lambda f: script.decode(f, 0), f"onnxruntime {name}": lambda f: onnx.decode(f, 0)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="runs/baseline/checkpoints/best.ckpt")
    parser.add_argument("--model", action="append", default=[], help="NAME=CHECKPOINT of a compressed model")
    parser.add_argument("--data", default="data/synthetic", help="LibriSpeech-layout root")
    parser.add_argument("--split", default="test")
    parser.add_argument("--utterances", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    runs: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        entries = [("dense", args.baseline)] + [tuple(m.split("=", 1)) for m in args.model]
        assets = None
        for name, checkpoint in entries:
            made = forms(name, checkpoint, Path(tmp) / name)
            assets = assets or made.pop("assets")
            made.pop("assets", None)
            runs.update(made)
        utterances = read_split(args.data, args.split)[: args.utterances]
        features = [assets.cmvn(torch.as_tensor(_features(u.audio_path, assets))) for u in utterances]
        reference = {name: [runs[f"pytorch {name}"](f) for f in features] for name, _ in entries}
        mismatches = {form: sum(decode(f) != reference[form.split(" ", 1)[1]][i] for i, f in enumerate(features))
                      for form, decode in runs.items()}
        clock = DecodeClock(threads=1)

        def timed(decode):
            def run() -> tuple[float, float]:
                wall, cpu = time.perf_counter(), clock()
                for f in features:
                    decode(f)
                return clock() - cpu, time.perf_counter() - wall
            return run

        with clock.checked():
            results = alternate({form: timed(decode) for form, decode in runs.items()}, args.repeats, warmup=1)
    audio_seconds = sum(f.shape[0] for f in features) * assets.features.frame_shift_ms / 1000
    table = {}
    for form, values in results.items():
        cpu = [v[0] for v in values]
        table[form] = {"ms_per_audio_second": 1000 * statistics.median(cpu) / audio_seconds,
                       "wall_ms_per_audio_second": 1000 * statistics.median(v[1] for v in values) / audio_seconds,
                       "vs_pytorch_dense": statistics.median(
                           d[0] / v[0] for d, v in zip(results["pytorch dense"], values, strict=True)),
                       "vs_onnxruntime_dense": statistics.median(
                           d[0] / v[0] for d, v in zip(results["onnxruntime dense"], values, strict=True)),
                       "token_mismatches": mismatches[form]}
    print(f"{len(features)} {args.split} utterances ({audio_seconds:.0f} s of audio), greedy, batch 1, one thread, "
          f"{args.repeats} alternating repeats, thread CPU time; {cpu_name()}")
    print(f"{'form':<28} {'ms/audio s':>10} {'wall':>8} {'vs PyTorch dense':>17} {'vs ORT dense':>13} mismatches")
    for form, row in table.items():
        print(f"{form:<28} {row['ms_per_audio_second']:>10.3f} {row['wall_ms_per_audio_second']:>8.3f} "
              f"{row['vs_pytorch_dense']:>16.2f}x {row['vs_onnxruntime_dense']:>12.2f}x {row['token_mismatches']:>5}")
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_name(), "utterances": len(features),
                                               "audio_seconds": audio_seconds, "forms": table}, indent=1))
    return 0


def _features(path: Path, assets) -> torch.Tensor:
    from asr.data.features import log_mel

    return log_mel(load_audio(path, assets.features.sample_rate), assets.features)


if __name__ == "__main__":
    raise SystemExit(main())
