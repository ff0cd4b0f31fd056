#!/usr/bin/env python
"""Single-target sensitivity analysis (paper Fig. 2).

    python scripts/sensitivity.py ckpt=runs/baseline/checkpoints/best.ckpt
    python scripts/sensitivity.py energies=[0.9,0.7,0.5] max_utterances=200
    python scripts/sensitivity.py kind=sparsity max_utterances=100    # magnitude pruning, one target at a time

Factorizes each target alone at each energy, measures dev WER with greedy decoding, and writes
``sensitivity.json`` (the input of the guided baseline and of the search's rank ranges) and
``sensitivity.png`` to ``output_dir``; both are logged to W&B (group ``sensitivity``). The stage
itself is :mod:`shrinkml.sensitivity`.
"""

from __future__ import annotations

import json
import sys

from omegaconf import DictConfig

from common.cli import cli_main
from shrinkml.sensitivity import output_files, run_sensitivity


# ValueError: an energy outside (0, 1] (compress.sensitivity)
@cli_main("sensitivity", ValueError, config_path="../conf", config_name="sensitivity")
def main(cfg: DictConfig) -> None:
    table = run_sensitivity(cfg)
    json_path, figure = output_files(cfg)
    print(json.dumps({"baseline_wer": table["baseline_wer"], "json": str(json_path), "figure": str(figure)}))


if __name__ == "__main__":
    sys.exit(main())
