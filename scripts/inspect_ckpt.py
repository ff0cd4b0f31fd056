#!/usr/bin/env python
"""Target by target: shape, rank, nonzeros, sparsity and shipped bytes of a checkpoint or int8 model.

    python scripts/inspect_ckpt.py runs/baseline/checkpoints/best.ckpt
    python scripts/inspect_ckpt.py runs/quantize/automl/model_int8.pt --json

Bytes: dense float32, sparse (float32 values in the cheapest of CSR, bitmask and block formats) and
int8 (the same with int8 values and row scales); non-targets dense (compress.storage).
"""

from __future__ import annotations

import argparse
import json
import sys

from common.cli import cli_main
from shrinkml.inspect_ckpt import format_table, inspect_checkpoint


@cli_main("inspect_ckpt")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a .ckpt of any training stage, or a quantize stage's model_int8.pt")
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    args = parser.parse_args(argv)
    result = inspect_checkpoint(args.checkpoint)
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
