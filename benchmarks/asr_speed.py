#!/usr/bin/env python
"""Training and decoding speed of the ASR model on the embedded corpus (prints numbers, asserts nothing).

    python benchmarks/asr_speed.py                                   # baseline shape, random weights
    python benchmarks/asr_speed.py --ckpt runs/baseline/checkpoints/best.ckpt
    python benchmarks/asr_speed.py --encoder-only                    # fused concat-kernel LSTM vs nn.LSTM

Reports training throughput (utterances/s, forward + backward + Adam, real batches from the
data module) and decoding real-time factor (decode seconds per audio second; lower is faster)
for greedy and beam search at batch 1 and batched. With a trained checkpoint the decoders stop
at end-of-sentence as in real use; random weights decode to the length limit (a worst case).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from asr.checkpoint import load_module
from asr.data.datamodule import AsrDataModule
from asr.model.asr_model import AsrModel
from asr.model.lstm import ConcatLSTM

ROOT = Path(__file__).resolve().parents[1]


def data_module(batch_size: int) -> AsrDataModule:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"data.batch_size={batch_size}", f"data.eval_batch_size={batch_size}",
                                          "data.progress=false", "paths.output_dir=/tmp"])
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    data_cfg.pop("_target_")
    dm = AsrDataModule(**data_cfg)
    dm.prepare_data()
    dm.setup("fit")
    return dm, cfg


def training_throughput(model: AsrModel, dm: AsrDataModule, steps: int) -> tuple[float, float]:
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), 1e-4)
    batches = iter(dm.train_dataloader())
    next(batches)
    utterances, seconds = 0, 0.0
    for _ in range(steps):
        batch = next(batches)
        start = time.perf_counter()
        model.loss(batch)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
        seconds += time.perf_counter() - start
        utterances += batch["features"].shape[0]
    return utterances / seconds, 1000 * seconds / steps


def decoding_rtf(model: AsrModel, dm: AsrDataModule, batch_size: int, beam: int, utterances: int) -> float:
    model.eval()
    dataset = dm.datasets[dm.dev_split_names[0]]
    shift = dm.feature_cfg.frame_shift_ms / 1000
    done, audio, seconds = 0, 0.0, 0.0
    with torch.no_grad():
        while done < utterances:
            items = [dataset[i] for i in range(done, min(done + batch_size, len(dataset)))]
            feats = torch.nn.utils.rnn.pad_sequence([it["features"] for it in items], batch_first=True)
            lengths = torch.tensor([it["features"].shape[0] for it in items])
            start = time.perf_counter()
            if beam > 0:
                model.beam_decode(feats, lengths, beam)
            else:
                model.greedy_decode(feats, lengths)
            seconds += time.perf_counter() - start
            audio += float(lengths.sum()) * shift
            done += len(items)
    return seconds / audio


def encoder_kernel(hidden: int, batch: int, frames: int, repeats: int) -> None:
    x = torch.randn(batch, frames, hidden)
    ours = ConcatLSTM(hidden, hidden)
    ref = torch.nn.LSTM(hidden, hidden, batch_first=True)
    for name, fn in (("torch.nn.LSTM", lambda: ref(x)), ("ConcatLSTM (fused)", lambda: ours(x))):
        for train in (False, True):
            times = []
            for _ in range(repeats + 1):
                start = time.perf_counter()
                if train:
                    fn()[0].sum().backward()
                else:
                    with torch.no_grad():
                        fn()
                times.append(time.perf_counter() - start)
            best = 1000 * min(times[1:])
            print(f"  {name:<20} H={hidden} batch={batch} frames={frames} {'fwd+bwd' if train else 'forward'}: "
                  f"{best:7.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", help="trained checkpoint (default: the baseline config with random weights)")
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--decode-utts", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--beam", type=int, default=4)
    parser.add_argument("--encoder-only", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.encoder_only:
        for hidden in (256, 512):
            encoder_kernel(hidden, 16, 400, 3)
        return
    dm, cfg = data_module(args.batch)
    if args.ckpt:
        model = load_module(args.ckpt).model
        source = args.ckpt
    else:
        model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
        model = AsrModel(dm.tokenizer.vocab_size, dm.feature_cfg.n_mels, **model_cfg)
        source = "conf/model/small.yaml, random weights"
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {source} ({params / 1e6:.2f} M parameters)")
    utt_s, ms_step = training_throughput(model, dm, args.train_steps)
    print(f"training   batch {args.batch}: {utt_s:6.1f} utterances/s ({ms_step:.0f} ms/step, "
          f"{len(dm.datasets[dm.train_split]) / utt_s / 60:.2f} min/epoch of {len(dm.datasets[dm.train_split])})")
    for beam in (0, args.beam):
        for batch in (1, args.batch):
            rtf = decoding_rtf(model, dm, batch, beam, args.decode_utts)
            name = "greedy" if beam == 0 else f"beam {beam}"
            print(f"decoding   {name:<7} batch {batch:>2}: RTF {rtf:.4f} ({1 / rtf:6.1f}x faster than real time)")


if __name__ == "__main__":
    main()
