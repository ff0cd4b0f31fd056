#!/usr/bin/env python
"""Transcribe audio files with a trained checkpoint or an exported model folder (the light runtime, asr.runtime).

    python scripts/transcribe.py runs/baseline/checkpoints/best.ckpt a.flac b.wav
    python scripts/transcribe.py runs/export/automl/model a.flac                 # exported: TorchScript + kernels
    python scripts/transcribe.py runs/export/automl/model a.flac --backend onnx  # exported: ONNX Runtime
    python scripts/transcribe.py MODEL a.flac --stream --chunk-ms 160   # partial results as they become final

--stream feeds the audio in chunks through the streaming encoder and the hard monotonic attention, printing
the text as soon as the attention commits to tokens. Nothing here imports Lightning, Hydra or W&B.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from asr.data.audio import load_audio
from asr.data.features import StreamingFeatures
from asr.runtime import BACKENDS, Recognizer, load_checkpoint_model
from common.cli import cli_main


def load(model: str, backend: str, threads: int) -> Recognizer:
    """A recognizer for an exported folder or a training checkpoint (compressed ones included)."""
    if Path(model).is_dir():
        return Recognizer.load(model, "auto" if backend == "model" else backend, threads)
    from compress.checkpoint import restore_compression  # torch only

    network, assets, decoding = load_checkpoint_model(model, prepare=restore_compression)
    return Recognizer.from_model(network, assets, decoding)


def min_samples(recognizer: Recognizer) -> int:
    """Fewest samples that give the encoder one output frame (a whole group of feature frames)."""
    framing = StreamingFeatures(recognizer.features)
    return framing.window + (recognizer.reduction - 1) * framing.shift


@cli_main("transcribe")
@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a training checkpoint (.ckpt) or an exported folder (scripts/export.py)")
    parser.add_argument("audio", nargs="+")
    parser.add_argument("--stream", action="store_true", help="streaming decoding with partial results")
    parser.add_argument("--chunk-ms", type=int, default=160, help="audio per streaming chunk")
    parser.add_argument("--beam", type=int, default=None,
                        help="beam size (default: the model's decoding.beam_size; 0 = greedy)")
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="for an exported folder: torchscript (C++ kernels) or onnx (default: torchscript)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    recognizer = load(args.model, args.backend, args.threads)
    needed = min_samples(recognizer)
    rate = recognizer.features.sample_rate
    for path in args.audio:
        wave = load_audio(path, rate)
        if wave.numel() < needed:
            print(f"transcribe: audio file {path} is too short: {wave.numel()} samples, the model needs at least "
                  f"{needed} ({1000 * needed / rate:.0f} ms) for one encoder frame", file=sys.stderr)
            return 2
        if args.stream:
            stream = recognizer.stream()
            step = max(1, int(rate * args.chunk_ms / 1000))
            for start in range(0, wave.numel(), step):
                if stream.accept_audio(wave[start : start + step]):
                    print(f"{path} [{min(wave.numel(), start + step) / rate:6.2f}s] {stream.text()}", flush=True)
            stream.finish()
            print(f"{path}: {stream.text()}")
        else:
            print(f"{path}: {recognizer.transcribe(wave, args.beam)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
