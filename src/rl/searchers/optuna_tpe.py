"""``search=optuna_tpe``: Optuna's TPE sampler over the RL search's space, proxy and reward, as a peer searcher.

One categorical parameter per target (the name of the target, its option indices ``0 .. d-1`` of
:class:`SearchSpace`), one study that maximizes the reward the RL search gets (Eq. 4 or 5 for a scheme that
meets ``a_t``, Eq. 6 below it). The speed-up of a scheme is known before decoding: a trial below ``a_t`` gets
the constraint ``a_t - a > 0`` (:meth:`optuna.trial.Trial.set_constraint`, which TPE models) and Eq. 6 as its
value, and costs no decode.

Budget: one search step ends with at most one decode, as ``random_feasible``'s does. :meth:`ask` asks the
study for trials until one meets ``a_t`` (at most ``feasible_draws``); the infeasible trials before it are told
at once, are free and do not count. A feasible trial whose scheme is in the explored set is told its stored WER.
With ``repair`` (improvement; for tight targets, where most of the space misses ``a_t`` and the draws made a step
slow) a step asks one trial only: when it misses ``a_t`` it is told as infeasible and repaired the way HAQ repairs
a proposal over budget (:meth:`rl.space.OptionCosts.repair`: target by target one option cheaper until it meets
``a_t``; in the joint space, where the sensitivity tables give every option an estimated WER rise, each move is
the cheaper option that costs the least rise per saving); the repaired scheme is decoded and added to the study as
a trial of its own (:meth:`optuna.study.Study.add_trial`), so a step costs two trials at most.

State: the study lives in Optuna's storage (``study.db``, SQLite in the output directory, or the database URL
``search.searcher.storage``, which several workers on several machines share), each trial tagged with its search
step, worker and draw. Running the search again resumes it: a step whose feasible trial is in the study is taken
from it, a trial left running by a kill is finished (its scheme, if it was decoded, comes from the explored set),
and trial ``k`` of step ``t`` on worker ``q`` is sampled with seed ``(seed, t, q, k)`` from the study's history,
so a resumed search asks what an uninterrupted one would have. The study records what it was made for
(:func:`signature`): a study of another space, target or reward is never resumed.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import sqlite3
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, Trial, TrialState, create_trial

from rl.rewards import violation_reward
from rl.searcher import Outcome, Proposal, Searcher, SearchProblem
from rl.space import SearchSpace

log = logging.getLogger(__name__)

STUDY_FILE = "study.db"  # with study.db-wal and study.db-shm beside it while open
STUDY_NAME = "search"
CONSTRAINT = "speedup_short"  # a_t - a: > 0 is infeasible (Optuna's convention)
ENTROPY_WINDOW = 50  # search/entropy: the option frequencies of the last this many trials


class StudyMismatchError(ValueError):
    """An Optuna study made for another search (space, target speed-up, reward or estimate), or no study."""


def signature(space: SearchSpace, target_speedup: float, reward: str, by: str) -> dict:
    """What a study's trials depend on besides the baseline checkpoint and the proxy set."""
    return {"space": space.to_dict(), "target_speedup": float(target_speedup), "reward": reward, "by": by}


def storage_url(path: str | Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"


def open_storage(where: str | Path) -> optuna.storages.BaseStorage:
    """The study's storage: a database URL as it is (several machines share one), or a local SQLite file in
    write-ahead-log mode without an fsync per commit (``synchronous=NORMAL``): Optuna commits every suggestion
    and attribute separately (about 35 per trial of a 20-target space), and fsyncing each made a trial cost
    ~0.5 s. A killed process loses nothing (the log is in the file system); only a power cut can lose the last
    trials, which the search then samples again. Several processes on one machine share the file (SQLite locks
    it; ``timeout`` waits for the other writers)."""
    if "://" in str(where):
        return optuna.storages.RDBStorage(str(where), heartbeat_interval=None)
    path = Path(where).resolve()

    def connect() -> sqlite3.Connection:
        connection = sqlite3.connect(path, check_same_thread=False, timeout=60.0)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        return connection

    return optuna.storages.RDBStorage(storage_url(path), engine_kwargs={"creator": connect})


@contextmanager
def opening(where: str | Path) -> Iterator[None]:
    """While a local SQLite study ``where`` is read or created: one process of this machine at a time (an exclusive
    ``flock`` of the empty file ``.<name>.lock`` beside it, which is no search state). Two workers that created the
    database at once failed (Optuna's schema version row inserted twice: ``UNIQUE constraint failed:
    alembic_version``), and one reading it half-created took it for a file of another program. A database URL is
    left to its server."""
    if "://" in str(where):
        yield
        return
    lock = Path(where).with_name(f".{Path(where).name}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def stored_signature(where: str | Path) -> dict | None:
    """The signature recorded in the study of ``where`` (a file or URL; None when the file or the study is
    absent); :class:`StudyMismatchError` when it is not a study database of this searcher."""
    if "://" not in str(where) and not Path(where).is_file():
        return None
    try:
        storage = open_storage(where)
        if STUDY_NAME not in optuna.study.get_all_study_names(storage):
            return None
        study = optuna.load_study(study_name=STUDY_NAME, storage=storage)
    except Exception as err:  # sqlalchemy / optuna raise many kinds on a file that is not their database
        raise StudyMismatchError(f"{where} is not an Optuna study database ({type(err).__name__}: {err}); move it "
                                 "away or delete it to start the study afresh") from err
    raw = study.user_attrs.get("signature")
    return json.loads(raw) if isinstance(raw, str) else {}


class OptunaTpeSearcher(Searcher):
    """Optuna TPE over ``problem.space`` against ``a_t`` (see the module docstring).

    Args:
        problem: the space, estimate, target, reward, estimate name, seed, worker and state directory.
        storage: a database URL shared by the workers, or None: ``study.db`` in the state directory.
        n_startup_trials, n_ei_candidates, multivariate: :class:`optuna.samplers.TPESampler`'s.
        feasible_draws: trials a step may ask before it keeps an infeasible one (then it decodes nothing).
        repair: ask one trial a step and repair it when it misses ``a_t`` (see the module docstring) instead of
            asking up to ``feasible_draws``; None: in a ragged (joint) space only.
    """

    policy, provenance = "optuna_tpe", "optuna"

    def __init__(self, problem: SearchProblem, storage: str | None, n_startup_trials: int, n_ei_candidates: int,
                 multivariate: bool, feasible_draws: int, repair: bool | None = None):
        if feasible_draws < 1 or n_startup_trials < 0 or n_ei_candidates < 1:
            raise ValueError(f"search.searcher.feasible_draws ({feasible_draws}) and n_ei_candidates "
                             f"({n_ei_candidates}) must be >= 1, n_startup_trials ({n_startup_trials}) >= 0")
        self.problem = problem
        self.storage = storage if storage else Path(problem.state_dir) / STUDY_FILE
        self.study_signature = signature(problem.space, problem.target_speedup, problem.reward, problem.by)
        repair = problem.space.ragged if repair is None else repair
        if repair:  # its study holds repaired trials: not one to resume without them, nor the reverse
            self.study_signature["repair"] = True
        self.sampler_args = {"n_startup_trials": n_startup_trials, "n_ei_candidates": n_ei_candidates,
                             "multivariate": multivariate}
        self.feasible_draws = feasible_draws
        self.repair = bool(repair)
        self._repaired: dict | None = None  # the repaired scheme of this step: its user attributes
        self.counts = {"trials": 0, "infeasible_trials": 0, "evaluated": 0}
        self._study: optuna.Study | None = None
        self._recovered = False
        self._pending: Trial | None = None

    # -- the study -------------------------------------------------------------------------------
    @property
    def study(self) -> optuna.Study:
        if self._study is None:
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            with opening(self.storage):  # the workers of one machine create the study one at a time
                stored = stored_signature(self.storage)
                if stored is not None and stored != self.study_signature:
                    raise StudyMismatchError(f"{self.storage} holds a study of another search (space, a_t, reward "
                                             "or estimate); run with on_stale=restart to keep it aside, or choose "
                                             "another output_dir")
                self._study = optuna.create_study(study_name=STUDY_NAME, storage=open_storage(self.storage),
                                                  direction="maximize", load_if_exists=True, sampler=self._sampler(0))
                if stored is None:
                    self._study.set_user_attr("signature", json.dumps(self.study_signature, sort_keys=True))
        return self._study

    def _sampler(self, seed: int) -> optuna.samplers.TPESampler:
        with warnings.catch_warnings():  # multivariate TPE is marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, **self.sampler_args)

    def _trials_of(self, trials: list[FrozenTrial], step: int) -> list[FrozenTrial]:
        return sorted((t for t in trials if t.user_attrs.get("step") == step and t.user_attrs.get("rank")
                       == self.problem.worker), key=lambda t: t.user_attrs["draw"])

    def _recover(self, trials: list[FrozenTrial]) -> None:
        """Once per process: fail the trials a kill left running before they were tagged (one worker only:
        another worker may be tagging its own right now)."""
        self._recovered = True
        if self.problem.workers != 1:
            return
        for trial in trials:
            if trial.state == TrialState.RUNNING and "step" not in trial.user_attrs:
                self.study.tell(trial.number, state=TrialState.FAIL)
                log.warning("optuna study %s: trial %d was left running by an interrupted search; failed",
                            self.storage, trial.number)

    def _propose(self, trial: Trial) -> Proposal:
        """The scheme of ``trial`` (a fresh one, or one a kill left running), its speed-up and constraint set."""
        space = self.problem.space
        choices = [int(trial.suggest_categorical(name, list(range(width))))
                   for name, width in zip(space.names, space.widths, strict=True)]
        ranks = self.problem.space.ranks(choices)
        speedup = float(self.problem.estimate(ranks))
        trial.set_user_attr("speedup", speedup)
        if CONSTRAINT not in trial.constraints:  # a trial reopened after a kill may have it already
            trial.set_constraint(CONSTRAINT, self.problem.target_speedup - speedup)
        return Proposal(ranks, choices, speedup, point={"trial": trial.number})

    def _tell(self, trial: Trial, reward: float, wer: float | None) -> None:
        if wer is not None:
            trial.set_user_attr("wer", wer)
        self.study.tell(trial.number, reward)
        self.counts["trials"] += 1
        self.counts["infeasible_trials"] += wer is None

    def _replayed(self, trial: FrozenTrial) -> Proposal:
        """The proposal of a step a resumed search finds finished in the study (told already)."""
        ranks = self.problem.space.ranks([int(trial.params[name]) for name in self.problem.space.names])
        return Proposal(ranks, [int(trial.params[n]) for n in self.problem.space.names],
                        float(trial.user_attrs["speedup"]), point={"trial": trial.number})

    # -- the protocol ----------------------------------------------------------------------------
    def ask(self, step: int) -> Proposal:
        p = self.problem
        trials = self.study.get_trials(deepcopy=False)
        if not self._recovered:
            self._recover(trials)
        mine = self._trials_of(trials, step)
        proposal = None
        self._pending = None
        for trial in mine:  # a resumed step: finish what a kill left running, replay a finished feasible trial
            if trial.state == TrialState.RUNNING:  # Trial(study, id) reopens it: its suggestions are stored
                self._pending = Trial(self.study, trial._trial_id)
                proposal = self._propose(self._pending)
            elif trial.state == TrialState.COMPLETE:
                proposal = self._replayed(trial)
        draws = len(mine)
        self._repaired = None
        if self.repair:
            return self._ask_repaired(step, proposal, draws)
        while (proposal is None or proposal.speedup < p.target_speedup) and draws < self.feasible_draws:
            if self._pending is not None:  # an infeasible trial before the feasible one: free, told at once
                self._tell(self._pending, violation_reward(p.target_speedup - proposal.speedup), None)
            self.study.sampler = self._sampler(hash((p.seed, step, p.worker, draws)) % 2**32)
            self._pending = self.study.ask()
            self._pending.set_user_attr("step", step)
            self._pending.set_user_attr("rank", p.worker)
            self._pending.set_user_attr("draw", draws)
            draws += 1
            proposal = self._propose(self._pending)
        return proposal

    def _draw(self, step: int, draw: int) -> Proposal:
        """A fresh trial of step ``step`` (its ``draw``-th), sampled with seed ``(seed, step, worker, draw)``."""
        p = self.problem
        self.study.sampler = self._sampler(hash((p.seed, step, p.worker, draw)) % 2**32)
        self._pending = self.study.ask()
        self._pending.set_user_attr("step", step)
        self._pending.set_user_attr("rank", p.worker)
        self._pending.set_user_attr("draw", draw)
        return self._propose(self._pending)

    def _ask_repaired(self, step: int, proposal: Proposal | None, draws: int) -> Proposal:
        """``repair``: the step's one trial, or its repair when it misses ``a_t`` (a resumed step repairs the same
        told trial again: the repair is deterministic)."""
        p = self.problem
        costs = p.space.costs(p.estimate)
        if proposal is None:
            proposal = self._draw(step, draws)
            draws += 1
        if proposal.speedup >= p.target_speedup:
            return proposal
        if self._pending is not None:  # the sampled trial misses a_t: told at once, free
            self._tell(self._pending, violation_reward(p.target_speedup - proposal.speedup), None)
            self._pending = None
        choices = costs.repair(proposal.choices, p.target_speedup, start=step % len(p.space.names),
                               rises=p.option_rises)
        if choices is None:  # not even the cheapest scheme meets a_t (check_reach refuses such a space)
            return proposal
        return self._repaired_proposal(choices, step, draws)

    def _repaired_proposal(self, choices: list[int], step: int, draw: int) -> Proposal:
        """The proposal of a repaired scheme, added to the study when it is told."""
        p = self.problem
        ranks = p.space.ranks(choices)
        repaired = Proposal(ranks, choices, float(p.estimate(ranks)), point={"repaired": True})
        self._repaired = {"step": step, "rank": p.worker, "draw": draw, "repaired": True, "speedup": repaired.speedup}
        return repaired

    def _add_repaired(self, outcome: Outcome) -> None:
        """Put the decoded repaired scheme into the study as a finished trial of its own."""
        space, attrs = self.problem.space, dict(self._repaired)
        if outcome.wer is not None:
            attrs["wer"] = outcome.wer
        self.study.add_trial(create_trial(
            value=outcome.reward, params=dict(zip(space.names, outcome.proposal.choices, strict=True)),
            distributions={name: CategoricalDistribution(list(range(width)))
                           for name, width in zip(space.names, space.widths, strict=True)},
            user_attrs=attrs, constraints={CONSTRAINT: self.problem.target_speedup - outcome.proposal.speedup}))
        self.counts["trials"] += 1
        self._repaired = None

    def tell(self, outcome: Outcome) -> dict:
        if self._repaired is not None:
            self._add_repaired(outcome)
        if self._pending is not None:  # None: a replayed step, told before the kill
            self._tell(self._pending, outcome.reward, outcome.wer)
            self._pending = None
        self.counts["evaluated"] += outcome.decoded
        return {"search/entropy": self._entropy(self.study.get_trials(deepcopy=False)),
                "search/trials": float(self.counts["trials"])}

    def _entropy(self, trials: list[FrozenTrial]) -> float:
        """Mean over targets of the entropy (nats) of the options of the last :data:`ENTROPY_WINDOW` trials:
        how far TPE has concentrated (the controller's ``search/entropy`` for RL)."""
        recent = [t.params for t in trials if t.state == TrialState.COMPLETE][-ENTROPY_WINDOW:]
        names = self.problem.space.names
        if not recent:
            return math.log(self.problem.space.shape[1])
        total = 0.0
        for name in names:
            counts = Counter(p.get(name) for p in recent)
            total -= sum(c / len(recent) * math.log(c / len(recent)) for c in counts.values())
        return total / len(names)

    def state_dict(self) -> dict:
        return {"counts": dict(self.counts)}  # the study itself is in its storage

    def load_state_dict(self, state: dict) -> None:
        self.counts.update(state["counts"])

    def signature(self) -> dict:
        return self.study_signature

    def stale_reason(self, state_dir: Path) -> str | None:
        try:
            with opening(self.storage):
                stored = stored_signature(self.storage)
        except StudyMismatchError as err:
            return f"cannot be resumed ({err})"
        if stored not in (None, self.study_signature):
            return f"{self.storage} holds a study of another search space, a_t, reward or estimate"
        return None

    def state_files(self) -> tuple[str, ...]:
        return () if "://" in str(self.storage) else (f"{STUDY_FILE}*",)

    def summary(self) -> dict:
        trials = self.study.get_trials(deepcopy=False)
        return {"trials": len(trials), "infeasible_trials": sum(t.constraints.get(CONSTRAINT, 0.0) > 0
                                                                 for t in trials),
                "decodes": self.counts["evaluated"]}
