#!/usr/bin/env python
"""Export a trained (compressed) recognizer for deployment and check it against PyTorch.

    python scripts/export.py ckpt=runs/retrain_automl/checkpoints/best.ckpt name=automl
    python scripts/export.py ckpt=runs/baseline/checkpoints/best.ckpt name=baseline format=[onnx]

Writes ``runs/export/<name>/model/`` (``encoder.onnx`` + ``decoder.onnx`` for ONNX Runtime; ``model.ts`` +
``libshrinkml_kernels.so``, TorchScript with the C++ kernels; ``manifest.json``, ``tokenizer.model``) and
``report.json`` (log-probability parity per backend, test WER of PyTorch and of each backend). Run the folder with
``python scripts/transcribe.py runs/export/<name>/model a.flac`` (docs/deploy.md).
"""

from __future__ import annotations

import sys

from omegaconf import DictConfig

from asr.export.bundle import ExportError
from common.cli import cli_main
from shrinkml.deploy_speed import format_table
from shrinkml.export import run_export


@cli_main("export", ExportError, config_path="../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    summary = run_export(cfg)
    files = ", ".join(f"{name} {mb:.1f} MB" for name, mb in summary["files_mb"].items())
    print(f"export: {summary['bundle']} ({files})")
    for key, value in summary.items():
        if key.startswith("parity/"):
            print(f"{key.split('/')[1]}: max |log-probability difference| from PyTorch {value:.2e}")
        elif key.startswith("wer/"):
            print(f"{key}: WER {value:.2f}")
    if "speed" in summary:
        print(f"greedy decoding, batch 1, {summary['speed_threads']} thread(s), {summary['cpu']}:")
        print("\n".join(format_table(summary["speed"])))


if __name__ == "__main__":
    sys.exit(main())
