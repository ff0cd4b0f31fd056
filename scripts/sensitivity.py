#!/usr/bin/env python
"""Single-target sensitivity analysis (paper Fig. 2).

    python scripts/sensitivity.py ckpt=runs/baseline/checkpoints/best.ckpt
    python scripts/sensitivity.py energies=[0.9,0.7,0.5] max_utterances=200

Factorizes each target alone at each energy, measures dev WER with greedy decoding, and writes
``sensitivity.json`` (the input of the guided baseline and of the search's rank ranges) and
``sensitivity.png`` to ``output_dir``; both are logged to W&B (group ``sensitivity``). The stage
itself is :mod:`shrinkml.sensitivity`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from omegaconf import DictConfig

from common.cli import cli_main
from shrinkml.sensitivity import run_sensitivity


# ValueError: an energy outside (0, 1] (compress.sensitivity)
@cli_main("sensitivity", ValueError, config_path="../conf", config_name="sensitivity")
def main(cfg: DictConfig) -> None:
    table = run_sensitivity(cfg)
    out = Path(cfg.output_dir)
    print(json.dumps({"baseline_wer": table["baseline_wer"], "json": str(out / "sensitivity.json"),
                      "figure": str(out / "sensitivity.png")}))


if __name__ == "__main__":
    sys.exit(main())
