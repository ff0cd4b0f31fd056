#!/usr/bin/env python
"""Which compression wins at a fixed parameter budget: factorization, distillation, sparsity and combinations.

    python scripts/budget.py                                  # budgets 1/3.7 and 1/5 (make budget)
    python scripts/budget.py budgets=[1/2,1/3.7] methods=[svd_automl,csp]
    python scripts/budget.py collect_only=true                # the table of what is finished

Runs every method from the baseline with equal training time (docs/budget.md), then writes
``runs/budget/budget.md`` (one table per budget, the dense control first), ``budget.json`` and the figures
``budget_params.png`` and ``budget_latency.png``, and logs them to W&B (group ``budget``). Run it again to resume.
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig

from common.cli import cli_main
from shrinkml.budget import run_budget


@cli_main("budget", config_path="../conf", config_name="budget")
def main(cfg: DictConfig) -> None:
    result = run_budget(cfg)
    print(Path(result["files"]["markdown"]).read_text())


if __name__ == "__main__":
    sys.exit(main())
