#!/usr/bin/env python
"""Manual compression baselines (paper Fig. 4) for target speed-ups ``a_t``.

    python scripts/manual_baselines.py ckpt=runs/baseline/checkpoints/best.ckpt speedups=[1.2,2,3.7]

For each ``a_t`` and method (``naive``: one energy for every target; ``guided``: the same with the
sensitivity table's sensitive targets dense), writes the scheme as JSON with its dev WER
(``output_dir/schemes/<method>-<a_t>x.json``, the format the search and ``compress=lowrank`` read)
and a summary ``manual.json``; logs both to W&B (group ``manual``). The stage itself is
:mod:`shrinkml.manual`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from omegaconf import DictConfig

from common.cli import cli_main
from shrinkml.manual import run_manual


# ValueError: a speed-up below 1 or out of reach, an unknown method (shrinkml.manual, compress.manual)
@cli_main("manual_baselines", ValueError, config_path="../conf", config_name="manual")
def main(cfg: DictConfig) -> None:
    run_manual(cfg)
    print(json.dumps({"json": str(Path(cfg.output_dir) / "manual.json")}))


if __name__ == "__main__":
    sys.exit(main())
