#!/usr/bin/env python
"""Wall time of ``scripts/transcribe.py`` from a cold process (prints numbers).

    python benchmarks/transcribe_cold.py runs/export/automl/model data/synthetic/test/.../x.flac
    python benchmarks/transcribe_cold.py runs/baseline/checkpoints/best.ckpt FILE --backend model --runs 5

Each run is a new Python process transcribing one file (what a user waits for: interpreter start, imports, loading
the model, features, decoding); the table gives the median and range of ``--runs`` runs per backend, beside the
file's duration and the time ``python -c "import torch"`` takes on the same machine (the floor).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import soundfile as sf

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "transcribe.py"


def wall(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="an exported folder or a training checkpoint")
    parser.add_argument("audio")
    parser.add_argument("--backend", action="append", default=None,
                        help="backends to time (default: torchscript and onnx for a folder, model for a checkpoint)")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    backends = args.backend or (["torchscript", "onnx"] if Path(args.model).is_dir() else ["model"])
    wall([sys.executable, str(SCRIPT), args.model, args.audio, "--backend", backends[0]])  # warm the file cache
    floor = [wall([sys.executable, "-c", "import torch"]) for _ in range(args.runs)]
    times = {b: [wall([sys.executable, str(SCRIPT), args.model, args.audio, "--backend", b]) for _ in range(args.runs)]
             for b in backends}
    print(f"{args.audio}: {sf.info(args.audio).duration:.2f} s of audio; {args.runs} cold processes each")
    print(f"{'import torch alone':<24} median {statistics.median(floor):.2f} s ({min(floor):.2f}-{max(floor):.2f})")
    for backend, values in times.items():
        print(f"{'transcribe ' + backend:<24} median {statistics.median(values):.2f} s "
              f"({min(values):.2f}-{max(values):.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
