#!/usr/bin/env python
"""The table and WER-against-sparsity figure of the pruning runs (make prune), against the dense control.

    python scripts/prune_report.py                       # runs/prune_* -> runs/prune_report/prune.md, prune.json
    python scripts/prune_report.py latency.measure=false # without timing

Every run is timed against the dense baseline in one alternating measurement (batch 1, one thread), with the
sparse kernels and without them; the goals of the pruning experiments are stated, met or not.
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig

from common.cli import cli_main
from shrinkml.prune_report import run_prune_report


@cli_main("prune_report", config_path="../conf", config_name="prune_report")
def main(cfg: DictConfig) -> None:
    result = run_prune_report(cfg)
    print(Path(result["files"][0]).read_text())


if __name__ == "__main__":
    sys.exit(main())
