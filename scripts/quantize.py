#!/usr/bin/env python
"""8-bit quantization of the retrained compressed model (paper section 4.3).

    python scripts/quantize.py                                  # runs/retrain_automl's best checkpoint
    python scripts/quantize.py ckpt=runs/retrain_guided/checkpoints/best.ckpt name=guided
    python scripts/quantize.py linear=dynamic name=automl_dynamic   # PyTorch dynamic int8 Linears (int8 products)

Writes ``runs/quantize/<name>/model_int8.pt`` and ``report.json`` (size in MB, bytes with pruned targets
stored sparse, float32 and int8, nonzero parameters, test WER float and int8, measured batch-1 speed-up
against the dense baseline) and logs a W&B run (group ``quantize``).
"""

from __future__ import annotations

import sys

from omegaconf import DictConfig

from common.cli import cli_main
from shrinkml.quantize import run_quantize


@cli_main("quantize", config_path="../conf", config_name="quantize")
def main(cfg: DictConfig) -> None:
    summary = run_quantize(cfg)
    splits = ", ".join(f"{s} {summary[f'wer_float/{s}']:.2f} -> {summary[f'wer/{s}']:.2f}" for s in cfg.splits)
    print(f"quantize ({cfg.linear} int8 Linears): size {summary['size_mb_float']:.2f} MB -> "
          f"{summary['size_mb']:.2f} MB "
          f"(baseline {summary['size_mb_baseline']:.2f} MB); WER float -> int8: {splits}; measured speed-up vs "
          f"baseline: float {summary['speedup/measured_float']:.2f}x, int8 {summary['speedup/measured']:.2f}x "
          f"(estimated {summary.get('speedup/params', 1.0):.2f}x)")
    mb = {key: summary[f"bytes/{key}"] / 2**20 for key in ("dense", "sparse", "sparse_int8")}
    print(f"stored sparse: {mb['dense']:.2f} MB dense float32 -> {mb['sparse']:.2f} MB sparse float32, "
          f"{mb['sparse_int8']:.2f} MB sparse int8; nonzero parameters "
          f"{summary['params/nonzero']:,} of {summary['params']:,} (targets {summary['sparsity/targets']:.1%} zeros)")


if __name__ == "__main__":
    sys.exit(main())
