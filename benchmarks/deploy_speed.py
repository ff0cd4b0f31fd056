#!/usr/bin/env python
"""Measured speed of deployable forms against the best dense runtime (prints numbers).

    python benchmarks/deploy_speed.py --model svd3.0=runs/retrain_optuna_tpe_latency_3.0_d120/checkpoints/best.ckpt

Each model (and the dense baseline) is exported and decoded greedily, batch 1, one thread, on the same test
utterances in three forms (PyTorch in this project, TorchScript with the C++ kernels, ONNX Runtime:
``shrinkml.deploy_speed``); speed-ups are against the baseline in PyTorch and in ONNX Runtime. The clock is the
thread's CPU time (ONNX Runtime on one intra-op thread computes in the calling thread), wall time beside it; runs
alternate within each repeat; every form's tokens are checked against the same model's PyTorch form.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from asr.data.audio import load_audio
from asr.data.corpus import read_split
from asr.data.features import log_mel
from asr.runtime import load_checkpoint_model
from compress.checkpoint import restore_compression
from shrinkml.deploy_speed import cpu_name, format_table, forms, measure


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
    decoders, assets = {}, None
    with tempfile.TemporaryDirectory() as tmp:
        for name, checkpoint in [("dense", args.baseline)] + [tuple(m.split("=", 1)) for m in args.model]:
            model, model_assets, decoding = load_checkpoint_model(checkpoint, prepare=restore_compression)
            assets = assets or model_assets
            decoders.update(forms(name, model, model_assets, decoding, Path(tmp) / name))
        utterances = read_split(args.data, args.split)[: args.utterances]
        features = [assets.cmvn(log_mel(load_audio(u.audio_path, assets.features.sample_rate), assets.features))
                    for u in utterances]
        table = measure(decoders, features, assets.features.frame_shift_ms, args.repeats)
    audio = sum(f.shape[0] for f in features) * assets.features.frame_shift_ms / 1000
    print(f"{len(features)} {args.split} utterances ({audio:.0f} s of audio), greedy, batch 1, one thread, "
          f"{args.repeats} alternating repeats, thread CPU time; {cpu_name()}")
    print("\n".join(format_table(table)))
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_name(), "utterances": len(features), "audio_seconds": audio,
                                               "models": dict(m.split("=", 1) for m in args.model),
                                               "forms": table}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
