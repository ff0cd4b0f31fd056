"""One reader of finished runs, under every report (``compare``, ``prune_report``, ``budget``).

A run is a :class:`RunResult`: its name, its ``summary`` (the keys every stage writes to ``summary.json`` and logs
to W&B: ``wer/<split>``, ``speedup/*``, ``params``, ``best_checkpoint``, ...), its resolved ``config`` and where
it came from. :func:`read_run` reads one from a run directory (``summary.json``, Hydra's ``.hydra/config.yaml``,
the checkpoint the summary names); :mod:`shrinkml.compare` makes the same records from W&B run logs. A missing or
damaged file is one :class:`ResultsError` naming the file and the fix (a missing ``summary.json``:
:class:`UnfinishedRun`).

Honest selection is checked here too: :func:`check_selection` refuses a run whose checkpoint was not chosen on a
dev split (the training run's ``ModelCheckpoint`` monitor) or whose scheme a search chose on another split.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from common.errors import KnownError

SUMMARY = "summary.json"
CONFIG = Path(".hydra") / "config.yaml"


class ResultsError(KnownError, ValueError):
    """A run's result file that is missing or cannot be read; the message names the file and the fix."""


class UnfinishedRun(ResultsError):
    """A run directory without its ``summary.json``: not run, still running, or killed."""


class SelectionError(KnownError, ValueError):
    """A row whose selection looked at something other than dev; it is not reported."""


@dataclass
class RunResult:
    """One finished run. ``config``: its resolved config (a plain mapping; None when the run kept none);
    ``source``: where it was read (a run directory, a W&B log or API path); ``state``: W&B's run state
    (``finished`` for a run directory with its summary); ``order``: when it was last written (the newer of two
    runs into one output directory wins)."""

    name: str
    summary: dict = field(default_factory=dict)
    config: dict | None = None
    source: str = ""
    state: str = "finished"
    order: float = 0.0
    run_dir: Path | None = None
    error: str | None = None  # why a W&B log could not be read (the run is then empty)

    @property
    def checkpoint(self) -> str:
        """The checkpoint the run chose (``best_checkpoint`` of its summary, as written); :class:`ResultsError`
        when the summary names none."""
        best = self.summary.get("best_checkpoint")
        if not best:
            raise ResultsError(f"{self.source}: its summary names no best_checkpoint (a run that saved no "
                               "checkpoint); rerun its stage")
        return str(best)

    def checkpoint_sha256(self) -> str:
        """SHA-256 of the chosen checkpoint's bytes (what schemes and reports record of the model)."""
        from compress.scheme import file_fingerprint

        if not Path(self.checkpoint).is_file():
            raise ResultsError(f"{self.source}: its checkpoint {self.checkpoint} is missing; rerun its stage")
        return file_fingerprint(self.checkpoint)

    def setting(self, dotted: str, default=None):
        """A key of the run's config (``compress.sparsity``), ``default`` when absent."""
        if self.config is None:
            return default
        return OmegaConf.select(OmegaConf.create(self.config), dotted, default=default)


def read_json(path: Path, fix: str = "rerun the stage that writes it") -> dict:
    """A result file's JSON object; a missing or damaged file is one :class:`ResultsError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise ResultsError(f"{path} is missing; {fix}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ResultsError(f"{path} is not valid JSON ({err}); {fix}") from None
    if not isinstance(data, dict):
        raise ResultsError(f"{path} holds a {type(data).__name__}, not a JSON object; {fix}")
    return data


def read_config(run_dir: Path) -> dict | None:
    """The resolved config a run saved (Hydra's ``.hydra/config.yaml``), None when it has none."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        return None
    try:
        config = OmegaConf.to_container(OmegaConf.load(path))
    except Exception as err:  # noqa: BLE001 - yaml's and OmegaConf's errors alike: the file is damaged
        raise ResultsError(f"{path} cannot be read ({str(err).splitlines()[0]}); rerun the run's stage") from None
    if not isinstance(config, dict):
        raise ResultsError(f"{path} is not a config mapping; rerun the run's stage")
    return config


def read_run(run_dir: str | Path) -> RunResult:
    """The run in ``run_dir``: its ``summary.json`` (:class:`UnfinishedRun` without one, :class:`ResultsError`
    when damaged) and its saved config (None without one)."""
    run_dir = Path(run_dir)
    path = run_dir / SUMMARY
    if not path.is_file():
        raise UnfinishedRun(f"{run_dir}: unfinished (no {SUMMARY}); run its stage (it resumes)")
    summary = read_json(path, "delete it and rerun the run's stage (an interrupted run resumes)")
    return RunResult(name=run_dir.name, summary=summary, config=read_config(run_dir), source=str(run_dir),
                     order=path.stat().st_mtime, run_dir=run_dir)


def check_selection(run: RunResult, dev_splits: Sequence[str], search_report: Path | None = None) -> dict:
    """``run``'s training config; raise :class:`SelectionError` unless the run chose its checkpoint on a dev
    split (and the search behind it, ``search_report``, its scheme)."""
    if run.config is None:
        raise SelectionError(f"{Path(run.source) / CONFIG} is missing: how {run.source}'s checkpoint was chosen is "
                             "unknown, so the row is not reported; rerun it with scripts/budget.py")
    monitor = run.setting("callbacks.model_checkpoint.monitor")
    allowed = {f"wer/{split}" for split in dev_splits}
    if monitor not in allowed:
        raise SelectionError(f"{run.source} chose its checkpoint on {monitor!r}, not on a dev split "
                             f"({sorted(allowed)}); the row is not reported")
    if search_report is not None:
        selected = read_json(search_report).get("summary", {}).get("selected_on")
        if selected != "dev":
            raise SelectionError(f"{search_report} chose its scheme on {selected!r}, not dev; the rows retrained "
                                 "from it are not reported")
    return run.config


def relative_change(value: float | None, reference: float | None) -> float | None:
    """``100 (value / reference - 1)``, the change in percent (negative is better for an error rate); None without
    a value or a positive reference."""
    if value is None or reference is None or reference <= 0:
        return None
    return 100.0 * (value / reference - 1.0)

