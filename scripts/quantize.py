#!/usr/bin/env python
"""8-bit quantization of the retrained compressed model (paper section 4.3).

    python scripts/quantize.py                                  # runs/retrain_automl's best checkpoint
    python scripts/quantize.py ckpt=runs/retrain_guided/checkpoints/best.ckpt name=guided
    python scripts/quantize.py linear=dynamic name=automl_dynamic   # PyTorch dynamic int8 Linears (int8 products)

Writes ``runs/quantize/<name>/model_int8.pt`` and ``report.json`` (size in MB, test WER float and
int8, measured batch-1 speed-up against the dense baseline) and logs a W&B run (group ``quantize``).
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from asr.data.errors import DataError
from shrinkml.quantize import run_quantize


@hydra.main(config_path="../conf", config_name="quantize", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        summary = run_quantize(cfg)
    except (FileNotFoundError, ValueError, DataError) as err:
        print(f"quantize: {err}", file=sys.stderr)
        sys.exit(2)
    splits = ", ".join(f"{s} {summary[f'wer_float/{s}']:.2f} -> {summary[f'wer/{s}']:.2f}" for s in cfg.splits)
    print(f"quantize ({cfg.linear} int8 Linears): size {summary['size_mb_float']:.2f} MB -> "
          f"{summary['size_mb']:.2f} MB "
          f"(baseline {summary['size_mb_baseline']:.2f} MB); WER float -> int8: {splits}; measured speed-up vs "
          f"baseline: float {summary['speedup/measured_float']:.2f}x, int8 {summary['speedup/measured']:.2f}x "
          f"(estimated {summary.get('speedup/params', 1.0):.2f}x)")


if __name__ == "__main__":
    main()
