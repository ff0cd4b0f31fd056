#!/usr/bin/env python
"""Compare the runs of every stage in one table and two figures (``make compare``).

    python scripts/compare_runs.py                         # offline runs under runs/ (or W&B when logged in)
    python scripts/compare_runs.py runs_dir=/some/other/runs output_dir=/tmp/compare
    python scripts/compare_runs.py source=online project=shrinkml entity=my-team

Writes ``pareto.png`` (WER of every model against its estimated and its measured speed-up, one
legend entry per model), ``retraining.png`` (the paper's Fig. 5: WER before and after retraining,
the dense control beside the compressed seeds), ``comparison.md`` (the figures, the table of every
model, the final models against the dense control and the baseline, stage wall times) and
``comparison.csv``, and prints the tables with the runs it skipped and why.
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig

from asr.tracking import wandb_mode
from common.cli import cli_main
from common.errors import KnownError
from shrinkml.compare import compare, markdown, offline_runs, read_online_runs, read_stage_times, write_outputs


def read_runs(cfg: DictConfig) -> list[dict]:
    """The runs of ``cfg.source`` (online: the W&B project; offline: the run directories under ``runs_dir``);
    none at all is refused, so that an earlier comparison is not overwritten by empty tables."""
    source = cfg.source if cfg.source != "auto" else ("online" if wandb_mode() == "online" else "offline")
    if source == "online":
        runs = read_online_runs(cfg.project, cfg.entity)
        where = f"in the W&B project {cfg.entity + '/' if cfg.entity else ''}{cfg.project}"
    elif source == "offline":
        if not Path(cfg.runs_dir).is_dir():
            raise KnownError(f"runs_dir {cfg.runs_dir} is not a directory; point runs_dir= at the runs "
                             "(the W&B offline run directories are found below it)")
        runs = list(offline_runs(cfg.runs_dir))
        where = f"under {cfg.runs_dir}"
    else:
        raise KnownError(f"source={cfg.source!r}; choose auto, online or offline")
    if not runs:
        raise KnownError(f"no runs found {where}; run a stage first (nothing written to {cfg.output_dir})")
    return runs


@cli_main("compare_runs", config_path="../conf", config_name="compare")
def main(cfg: DictConfig) -> None:
    comparison = compare(read_runs(cfg))
    comparison.stage_times = read_stage_times(cfg.stage_times)
    written = write_outputs(comparison, cfg.output_dir, cfg.split)
    print(markdown(comparison, cfg.split))
    print("written: " + ", ".join(f"{k} {v}" for k, v in written.items()))
    if not comparison.rows:
        print("compare_runs: no run had a model to compare (see the skipped runs above)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    sys.exit(main())
