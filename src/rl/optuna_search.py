"""``search=optuna_tpe``: Optuna's TPE sampler over the RL search's space, proxy and reward, as a peer searcher.

One categorical parameter per target (the name of the target, its option indices ``0 .. d-1`` of
:class:`SearchSpace`), one study that maximizes the reward the RL search gets (Eq. 4 or 5 for a scheme
that meets ``a_t``, Eq. 6 below it). The speed-up of a scheme is known before decoding: a trial below
``a_t`` gets the constraint ``a_t - a > 0`` (:meth:`optuna.trial.Trial.set_constraint`, which TPE models)
and Eq. 6 as its value, and costs no decode.

Budget: one search step (``search.steps``) ends with at most one decode, as ``random_feasible``'s does.
A step asks the study for trials until one meets ``a_t`` (at most ``feasible_draws``); the infeasible
trials before it are free and do not count, so every searcher of the comparison gets the same number of
decodes. A feasible trial whose scheme is in the explored set is told its stored WER (no decode).

State: the study lives in Optuna's SQLite storage (``study.db`` in the output directory), each trial tagged
with its search step, rank and draw; the Lightning checkpoint keeps the step and the counts. Running the
search again resumes it: a step whose feasible trial is in the database is taken from it, a trial left
running by a kill is finished (its scheme, if it was decoded, comes from the explored set), and trial
``k`` of step ``t`` on rank ``q`` is sampled with seed ``(seed, t, q, k)`` from the study's history, so a
resumed search asks what an uninterrupted one would have. The study records what it was made for
(:func:`signature`): a database of another space, target or reward is never resumed.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import time
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from rl.explored import ExploredSet
from rl.rewards import violation_reward
from rl.search_module import SearchModule
from rl.space import SearchSpace

log = logging.getLogger(__name__)

STUDY_FILE = "study.db"  # with study.db-wal and study.db-shm beside it while open
STUDY_NAME = "search"
CONSTRAINT = "speedup_short"  # a_t - a: > 0 is infeasible (Optuna's convention)
ENTROPY_WINDOW = 50  # search/entropy: the option frequencies of the last this many trials


class StudyMismatchError(ValueError):
    """An Optuna study database made for another search (space, target speed-up, reward or estimate)."""


def signature(space: SearchSpace, target_speedup: float, reward: str, by: str) -> dict:
    """What a study's trials depend on besides the baseline checkpoint (guarded by ``source.json``)."""
    return {"space": space.to_dict(), "target_speedup": float(target_speedup), "reward": reward, "by": by}


def storage_url(path: str | Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"


def open_storage(path: str | Path) -> optuna.storages.RDBStorage:
    """The study's SQLite storage in write-ahead-log mode without an fsync per commit (``synchronous=NORMAL``):
    Optuna commits every suggestion and attribute separately (about 35 per trial of a 20-target space), and
    fsyncing each made a trial cost ~0.5 s. A killed process loses nothing (the log is in the file system);
    only a power cut can lose the last trials, which the search then samples again."""
    path = Path(path).resolve()

    def connect() -> sqlite3.Connection:
        connection = sqlite3.connect(path, check_same_thread=False, timeout=60.0)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        return connection

    return optuna.storages.RDBStorage(storage_url(path), engine_kwargs={"creator": connect})


def stored_signature(path: str | Path) -> dict | None:
    """The signature recorded in the study database ``path`` (None when the file or the study is absent);
    :class:`StudyMismatchError` when it is not a study database of this searcher."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        storage = open_storage(path)
        if STUDY_NAME not in optuna.study.get_all_study_names(storage):
            return None
        study = optuna.load_study(study_name=STUDY_NAME, storage=storage)
    except Exception as err:  # sqlalchemy / optuna raise many kinds on a file that is not their database
        raise StudyMismatchError(f"{path} is not an Optuna study database ({type(err).__name__}: {err}); move it "
                                 "away or delete it to start the study afresh") from err
    raw = study.user_attrs.get("signature")
    return json.loads(raw) if isinstance(raw, str) else {}


class OptunaSearchModule(SearchModule):
    """Optuna TPE over ``space`` against ``a_t``; the reward, logging, explored set and Lightning plumbing of
    :class:`SearchModule` (its controller is kept only so that Lightning has parameters; it never updates).

    Args (besides :class:`SearchModule`'s):
        storage: the study's SQLite file (``study.db`` in the output directory).
        study_signature: :func:`signature` of this search; a new study records it, an existing one must match.
        n_startup_trials, n_ei_candidates, multivariate: :class:`optuna.samplers.TPESampler`'s.
        feasible_draws: trials a step may ask before it keeps an infeasible one (then it decodes nothing).
        world_size: number of ranks (a trial left running without a step tag is failed only when 1).
    """

    def __init__(self, space: SearchSpace, estimate: Callable[[dict], float], evaluate: Callable[[dict], float],
                 baseline_wer: float, target_speedup: float, reward: str, explored: ExploredSet,
                 storage: str | Path, study_signature: dict, optimizer: Callable | None = None, seed: int = 0,
                 n_startup_trials: int = 10, n_ei_candidates: int = 24, multivariate: bool = True,
                 feasible_draws: int = 100, world_size: int = 1, max_decodes: int | None = None):
        # the random policy of SearchModule: no controller updates; the sampling is overridden below
        super().__init__(space, estimate, evaluate, baseline_wer, target_speedup, reward, explored, optimizer,
                         baseline_decay=None, policy="random", seed=seed, max_decodes=max_decodes)
        if feasible_draws < 1 or n_startup_trials < 0 or n_ei_candidates < 1:
            raise ValueError(f"search.feasible_draws ({feasible_draws}) and search.n_ei_candidates "
                             f"({n_ei_candidates}) must be >= 1, search.n_startup_trials ({n_startup_trials}) >= 0")
        self.policy = "optuna_tpe"
        self.storage, self.study_signature = Path(storage), study_signature
        self.sampler_args = {"n_startup_trials": n_startup_trials, "n_ei_candidates": n_ei_candidates,
                             "multivariate": multivariate}
        self.feasible_draws, self.world_size = feasible_draws, world_size
        self.counts.update({"trials": 0, "infeasible_trials": 0})
        self._study: optuna.Study | None = None
        self._recovered = False

    # -- the study -------------------------------------------------------------------------------
    @property
    def study(self) -> optuna.Study:
        if self._study is None:
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            stored = stored_signature(self.storage)
            if stored is not None and stored != self.study_signature:
                raise StudyMismatchError(f"{self.storage} holds a study of another search (space, a_t, reward or "
                                         "estimate); run with on_stale=restart to keep it aside, or choose another "
                                         "output_dir")
            self.storage.parent.mkdir(parents=True, exist_ok=True)
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
                       == self.global_rank), key=lambda t: t.user_attrs["draw"])

    def _recover(self, trials: list[FrozenTrial]) -> None:
        """Once per process: fail the trials a kill left running before they were tagged (single process only:
        under DDP another rank may be tagging its own right now)."""
        self._recovered = True
        if self.world_size != 1:
            return
        for trial in trials:
            if trial.state == TrialState.RUNNING and "step" not in trial.user_attrs:
                self.study.tell(trial.number, state=TrialState.FAIL)
                log.warning("optuna study %s: trial %d was left running by an interrupted search; failed",
                            self.storage, trial.number)

    def _suggest(self, trial: Trial) -> tuple[list[int], dict]:
        d = self.space.shape[1]
        choices = [int(trial.suggest_categorical(name, list(range(d)))) for name in self.space.names]
        return choices, self.space.ranks(choices)

    def _finish(self, trial: Trial, step: int) -> dict:
        """Score ``trial`` (a fresh one, or one a kill left running) and tell the study; returns what it got."""
        choices, ranks = self._suggest(trial)
        speedup = float(self.estimate(ranks))
        trial.set_user_attr("speedup", speedup)
        if CONSTRAINT not in trial.constraints:  # a trial reopened after a kill may have it already
            trial.set_constraint(CONSTRAINT, self.target_speedup - speedup)
        wer = None
        decoded = False
        if speedup < self.target_speedup:
            reward = violation_reward(self.target_speedup - speedup)
        else:
            point = self.explored.get(ranks)
            if point is None:
                wer = float(self.evaluate(ranks))
                decoded = True
                self.counts["evaluated"] += 1
                self.explored.add({"step": step, "rank": self.global_rank, "ranks": ranks, "choices": choices,
                                   "speedup": speedup, "wer": wer, "policy": self.policy, "trial": trial.number,
                                   "time": time.time()})
            else:
                wer = float(point["wer"])
            reward = self.reward_fn(wer, self.baseline_wer)
            trial.set_user_attr("wer", wer)
        self.study.tell(trial.number, reward)
        self.counts["trials"] += 1
        self.counts["infeasible_trials"] += wer is None
        return {"choices": choices, "speedup": speedup, "wer": wer, "reward": reward, "decoded": decoded}

    @staticmethod
    def _result(trial: FrozenTrial) -> dict:
        """What a finished trial got, read back from the study (a step replayed after a resume)."""
        speedup = float(trial.user_attrs["speedup"])
        feasible = trial.constraints.get(CONSTRAINT, 1.0) <= 0
        return {"choices": None, "speedup": speedup, "reward": float(trial.value), "decoded": False,
                "wer": None if not feasible else float(trial.user_attrs.get("wer", math.nan))}

    def _entropy(self, trials: list[FrozenTrial]) -> float:
        """Mean over targets of the entropy (nats) of the options of the last :data:`ENTROPY_WINDOW` trials:
        how far TPE has concentrated (the controller's ``search/entropy`` for RL)."""
        recent = [t.params for t in trials if t.state == TrialState.COMPLETE][-ENTROPY_WINDOW:]
        if not recent:
            return math.log(self.space.shape[1])
        total = 0.0
        for name in self.space.names:
            counts = Counter(p.get(name) for p in recent)
            total -= sum(c / len(recent) * math.log(c / len(recent)) for c in counts.values())
        return total / len(self.space.names)

    # -- one search step -------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        started = time.perf_counter()
        step = int(self.global_step)
        trials = self.study.get_trials(deepcopy=False)
        if not self._recovered:
            self._recover(trials)
        mine = self._trials_of(trials, step)
        result = None
        for trial in mine:  # a resumed step: finish what a kill left running, reuse a feasible trial
            if trial.state == TrialState.RUNNING:  # Trial(study, id) reopens it: its suggestions are stored
                result = self._finish(Trial(self.study, trial._trial_id), step)
            elif trial.state == TrialState.COMPLETE:
                result = self._result(trial)
        draws = len(mine)
        while (result is None or result["wer"] is None) and draws < self.feasible_draws:
            self.study.sampler = self._sampler(hash((self.seed, step, self.global_rank, draws)) % 2**32)
            trial = self.study.ask()
            trial.set_user_attr("step", step)
            trial.set_user_attr("rank", self.global_rank)
            trial.set_user_attr("draw", draws)
            draws += 1
            result = self._finish(trial, step)
        self.counts["samples"] += 1
        self.counts["accepted"] += result["wer"] is not None
        self.step_seconds.append(time.perf_counter() - started)
        if result["decoded"]:
            self.evaluated_step_seconds.append(self.step_seconds[-1])
        metrics = {"search/reward": result["reward"], "search/speedup": result["speedup"],
                   "search/entropy": self._entropy(self.study.get_trials(deepcopy=False)),
                   "search/acceptance": self.counts["accepted"] / self.counts["samples"],
                   "search/explored": float(len(self.explored)), "search/step_seconds": self.step_seconds[-1],
                   "search/trials": float(self.counts["trials"])}
        if result["wer"] is not None:
            metrics["search/wer"] = result["wer"]
        self.log_dict(metrics, batch_size=1, on_step=True, on_epoch=False)
        return None  # nothing to back-propagate: the study is the policy

    def study_summary(self) -> dict:
        """Study counts for the search report."""
        trials = self.study.get_trials(deepcopy=False)
        return {"trials": len(trials), "infeasible_trials": sum(t.constraints.get(CONSTRAINT, 0.0) > 0
                                                                 for t in trials),
                "decodes": self.counts["evaluated"]}
