"""The ``Searcher`` protocol: what every searcher of the search stage implements, and what it is given.

The split is Optuna's sampler/study split: a searcher only proposes schemes and learns from their results
(:meth:`Searcher.ask`, :meth:`Searcher.tell`); the loop (:mod:`rl.loop`) owns everything else: the explored
set, the decode budget, the clock, checkpointing and resuming the searcher's state, setting stale state aside
and the report. A searcher is built from its config group (``conf/search/searcher/<name>.yaml``, a Hydra
``_target_``) with one extra argument, the :class:`SearchProblem`.

A search step: ``proposal = searcher.ask(step)``; the loop estimates nothing (the proposal carries its
speed-up), decodes the scheme on the proxy set when it meets ``a_t`` and is not in the explored set, rewards
it (Eq. 4/5, or Eq. 6 below ``a_t``) and calls ``searcher.tell(outcome)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rl.space import SearchSpace


@dataclass
class SearchProblem:
    """What a searcher searches: the space ``S`` (``l x d``), the speed-up estimate ``a(ranks)``, the target
    ``a_t``, the reward's name (``conservative``: Eq. 4, ``aggressive``: Eq. 5), the estimate's name (``by``,
    with a latency table's hash), the dense model's proxy WER ``w_b``, the seed, this worker's index, the
    directory of the search's state (for a searcher's own files, e.g. Optuna's ``study.db``) and, in the joint
    space, each option's WER rise estimated by the sensitivity tables (:func:`rl.space.option_rises`)."""

    space: SearchSpace
    estimate: Callable[[dict], float]
    target_speedup: float
    reward: str
    by: str
    baseline_wer: float
    seed: int = 0
    worker: int = 0
    workers: int = 1
    state_dir: Path = Path(".")
    option_rises: list[list[float]] | None = None  # per target and option its estimated WER rise (joint space)


@dataclass
class Proposal:
    """A scheme to measure: ``ranks`` (target -> rank), its option indices ``choices`` ``(l,)`` and estimated
    ``speedup``. ``point`` adds fields to (or overrides ``step`` of) its explored-set point. A ``probe`` is a
    measurement that is no search step (greedy's single-target curve points): decoded when it meets nothing
    (no ``a_t`` check), never put into the explored set, not counted in ``search.steps``."""

    ranks: dict
    choices: list[int]
    speedup: float
    point: dict = field(default_factory=dict)
    probe: bool = False


@dataclass
class Outcome:
    """What the loop measured for a proposal: whether it meets ``a_t``, its proxy WER (None below ``a_t``),
    its reward (Eq. 4/5, or Eq. 6 below ``a_t``) and whether this step decoded it (False: taken from the
    explored set)."""

    proposal: Proposal
    feasible: bool
    wer: float | None
    reward: float
    decoded: bool


class Searcher:
    """The protocol with its defaults. ``policy`` names the searcher in explored points and report rows;
    ``provenance`` is written into the result scheme."""

    policy: str = "searcher"
    provenance: str = "random"

    def ask(self, step: int) -> Proposal | None:
        """The scheme of search step ``step`` (0-based; a resumed search continues its count); None: done."""
        raise NotImplementedError

    def tell(self, outcome: Outcome) -> dict:
        """Learn from the measured ``outcome`` of the last proposal; returns extra metrics to log."""
        return {}

    def state_dict(self) -> dict:
        """Everything a resumed search needs (saved atomically by the loop with its step)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""

    def signature(self) -> dict:
        """What this searcher's saved state depends on besides the checkpoint and the proxy set (the loop's
        part): state made for another signature is stale and set aside (or refused)."""
        return {}

    def stale_reason(self, state_dir: Path) -> str | None:
        """Why this searcher's own files in ``state_dir`` cannot be resumed (e.g. not its format), or None."""
        return None

    def state_files(self) -> tuple[str, ...]:
        """Glob patterns of this searcher's own files in the state directory (set aside with the rest)."""
        return ()

    def summary(self) -> dict:
        """The searcher's entries of the search report's summary."""
        return {}
