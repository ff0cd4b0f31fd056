#!/usr/bin/env python
"""Condensed proxy set for the search (paper Listing 1 and Fig. 3).

    python scripts/condense.py ckpt=runs/baseline/checkpoints/best.ckpt

Decodes the dev split with a cohort of models (the baseline, other checkpoints, naive SVD schemes of
the baseline), keeps the utterances whose WER correlates with the whole-set WER above
``correl_min``, and checks the set on held-out models (random SVD schemes, not in the cohort)
against random subsets of the same sizes. Writes ``condensed.txt`` (the proxy list read by
``search.py proxy=condensed``), ``condense.json`` and ``condense.png``; logs them to W&B. The stage
itself is :mod:`shrinkml.condense`.
"""

from __future__ import annotations

import json
import sys

from omegaconf import DictConfig

from common.cli import cli_main
from shrinkml.condense import EmptyCondensedSetError, run_condense


# ValueError: too few cohort models, a naive speed-up out of reach (rl.condense, compress.manual)
@cli_main("condense", ValueError, config_path="../conf", config_name="condense")
def main(cfg: DictConfig) -> None:
    try:
        summary = run_condense(cfg)
    except EmptyCondensedSetError as err:  # the stage ran, its threshold kept nothing: exit status 1
        print(f"condense: {err}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps({k: v for k, v in summary.items() if not isinstance(v, list)}))


if __name__ == "__main__":
    sys.exit(main())
