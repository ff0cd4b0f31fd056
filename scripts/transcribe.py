#!/usr/bin/env python
"""Transcribe audio files with a trained checkpoint.

    python scripts/transcribe.py runs/baseline/checkpoints/best.ckpt a.flac b.wav
    python scripts/transcribe.py CKPT a.flac --stream --chunk-ms 160   # partial results as they become final

--stream feeds the audio in chunks through the streaming encoder and the hard monotonic
attention, printing each token's text as soon as the attention commits to it.
"""

from __future__ import annotations

import argparse
import sys

import torch

from asr.checkpoint import load_module, transcribe_features
from asr.data.audio import load_audio
from asr.data.features import log_mel
from asr.streaming import StreamingRecognizer
from common.cli import cli_main
from compress.checkpoint import restore_compression


def min_samples(module) -> int:
    """Fewest samples that give the encoder one output frame (a whole pooling group of feature frames)."""
    cfg = module.assets.features
    window = int(cfg.sample_rate * cfg.frame_length_ms / 1000)
    shift = int(cfg.sample_rate * cfg.frame_shift_ms / 1000)
    return window + (module.model.encoder.reduction - 1) * shift


@cli_main("transcribe")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("audio", nargs="+")
    parser.add_argument("--stream", action="store_true", help="streaming decoding with partial results")
    parser.add_argument("--chunk-ms", type=int, default=160, help="audio per streaming chunk")
    parser.add_argument("--beam", type=int, default=None,
                        help="beam size (default: the checkpoint's decoding.beam_size; 0 = greedy)")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    module = load_module(args.checkpoint, prepare=restore_compression)
    assets = module.assets
    needed = min_samples(module)
    for path in args.audio:
        wave = load_audio(path, assets.features.sample_rate)
        if wave.numel() < needed:
            print(f"transcribe: audio file {path} is too short: {wave.numel()} samples, the model needs at least "
                  f"{needed} ({1000 * needed / assets.features.sample_rate:.0f} ms) for one encoder frame",
                  file=sys.stderr)
            return 2
        if args.stream:
            recognizer = StreamingRecognizer(module.model, assets)
            step = max(1, int(assets.features.sample_rate * args.chunk_ms / 1000))
            for start in range(0, wave.numel(), step):
                tokens = recognizer.accept_audio(wave[start : start + step])
                if tokens:
                    seconds = min(wave.numel(), start + step) / assets.features.sample_rate
                    print(f"{path} [{seconds:6.2f}s] {recognizer.text()}", flush=True)
            recognizer.finish()
            print(f"{path}: {recognizer.text()}")
        else:
            feats = assets.cmvn(log_mel(wave, assets.features))
            print(f"{path}: {transcribe_features(module, [feats], args.beam)[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
