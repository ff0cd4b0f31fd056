"""The one search loop: any :class:`rl.searcher.Searcher` against the proxy set.

The loop owns what every searcher shares: the explored set ``W`` (one per search, shared by its workers), the
decode budget (``steps``: search steps of this worker; ``max_decodes``: schemes in ``W``), the clock (the wall
time of every attempt, :class:`SearchClock`), saving the searcher's state atomically and resuming it
(:class:`SearchLoop`), setting stale state aside once (:func:`guard_state`) and one output directory per search:
a second process on the same worker of the same directory is refused (:class:`WorkerLock`).

One step: ``proposal = searcher.ask(step)``; below ``a_t`` it is rewarded by Eq. 6 and costs nothing; otherwise
its WER comes from ``W``, or another worker's decode of it is waited for, or it is claimed, decoded on the proxy
set and appended to ``W``; it is rewarded by Eq. 4 or 5 and ``searcher.tell(outcome)`` learns from it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from common.atomic import save_atomic, write_json_atomic
from common.errors import KnownError
from rl.explored import ExploredSet
from rl.rewards import violation_reward
from rl.searcher import Outcome, Proposal, Searcher

log = logging.getLogger(__name__)

STATE_FORMAT = "shrinkml-search-state/1"
# the loop's files in the output directory (a searcher adds its own: Searcher.state_files)
STATE_FILES = ("explored-rank*.jsonl", "claims", "checkpoints", "best_scheme.json", "report.json", "report.md",
               "explored.png", "wall_time*.json")
CLAIM_POLL_SECONDS = 0.2
CLAIM_WARN_SECONDS = 600.0  # a decode of the proxy set takes seconds: a claim held this long names its file


class StaleSearchError(KnownError, RuntimeError):
    """The search state in ``output_dir`` was made for another checkpoint, proxy set or searcher."""


class SearchBusyError(KnownError, RuntimeError):
    """Another live process runs the same worker of the same search."""


def worker_file(name: str, worker: int) -> str:
    """``name`` of worker 0 (``wall_time.json``), ``<stem>-worker<k><suffix>`` of worker ``k > 0``."""
    if worker == 0:
        return name
    stem, dot, suffix = name.partition(".")
    return f"{stem}-worker{worker}{dot}{suffix}"


class WorkerLock:
    """``worker-<k>.lock`` in the output directory while worker ``k`` of a search runs there (pid, host).

    A second process for the same worker is refused with one line (two identical searches on one directory
    decoded schemes twice, crashed on a finished Optuna trial and lost one's wall time). The lock of a process of
    this host that is gone (killed) is taken over; one of another host is refused (delete it when that run is
    known dead). Several workers of one search are the supported way to share a directory (``search.workers``,
    ``search.worker``)."""

    def __init__(self, directory: str | Path, worker: int = 0):
        self.path = Path(directory) / f"worker-{worker}.lock"
        self.worker = worker

    def __enter__(self) -> WorkerLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "worker": self.worker}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and not self._gone(owner):
                    raise SearchBusyError(
                        f"{self.path.parent} is in use by worker {self.worker} of a search (pid {owner.get('pid')} "
                        f"on {owner.get('host')}): wait for it, add a worker with search.workers=N "
                        f"search.worker=<another index>, or choose another output_dir (if that process is known "
                        f"dead, delete {self.path})") from None
                log.warning("taking over %s of a process that is gone (%s)", self.path, owner)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            return self
        raise SearchBusyError(f"could not take {self.path}; another process keeps taking it")

    def _owner(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except ValueError:
            return {"pid": "?", "host": "?"}  # being written this instant

    @staticmethod
    def _gone(owner: dict) -> bool:
        if owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
            return False
        try:
            os.kill(owner["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def __exit__(self, *exc) -> None:
        owner = self._owner()
        if owner and owner.get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)


def guard_state(directory: str | Path, signature: dict, on_stale: str, patterns: Sequence[str] = STATE_FILES,
                reason: str | None = None, note: dict | None = None) -> None:
    """Set stale search state aside once, whatever made it stale, before anything is resumed.

    ``source.json`` records the ``signature`` of the search that made the state (the loop's part: checkpoint and
    proxy set; the searcher's: :meth:`Searcher.signature`) and ``note`` (e.g. the checkpoint's path). State made for
    another signature, or with no record, or that the searcher cannot read (``reason``), is stale: resuming it
    would mix WERs of two models or two searches. With ``on_stale=error`` the search stops and says what to do;
    with ``restart`` the files of ``patterns`` move into ``stale-<hash of the old signature>/`` (nothing is deleted)
    and the search starts afresh."""
    if on_stale not in ("error", "restart"):
        raise ValueError(f"on_stale={on_stale!r}; choose error or restart")
    out = Path(directory)
    record = out / "source.json"
    state = [p for pattern in patterns for p in out.glob(pattern)]
    try:
        made_for = json.loads(record.read_text()).get("signature") if record.is_file() else None
    except ValueError:
        made_for = None
    if state and reason is None and made_for != signature:
        if made_for is None:
            reason = "holds search state with no record of what it was made for (source.json)"
        else:
            differ = sorted(k for k in {*signature, *made_for} if made_for.get(k) != signature.get(k))
            reason = f"holds a search of another {', '.join(SIGNATURE_WORDS.get(k, k) for k in differ)}"
    if state and reason is not None:
        if on_stale == "error":
            raise StaleSearchError(f"{out} {reason}: run with on_stale=restart to keep it aside and start afresh, or "
                                   "choose another output_dir")
        digest = hashlib.sha1(json.dumps(made_for, sort_keys=True).encode()).hexdigest()[:12] if made_for else "unknown"
        aside = out / f"stale-{digest}"
        suffix = 1
        while aside.exists():
            aside, suffix = out / f"stale-{digest}-{suffix}", suffix + 1
        aside.mkdir(parents=True)
        for path in state:
            path.rename(aside / path.name)
        log.warning("search state in %s (%s) moved to %s; starting afresh", out, reason, aside)
    write_json_atomic(record, {**(note or {}), "signature": signature})


SIGNATURE_WORDS = {"checkpoint_sha256": "baseline checkpoint", "baseline_proxy_wer": "proxy set",
                   "searcher": "searcher", "settings": "search space or searcher settings"}


class SearchClock:
    """Wall time of a search over all its attempts (running the command again to resume is a new attempt).

    ``path`` (``wall_time.json``; worker ``k``: ``wall_time-worker<k>.json``) lists the seconds of every attempt;
    this attempt's entry is rewritten atomically after every search step and at the end, so an attempt that is
    killed still counts up to its last step."""

    def __init__(self, path: str | Path, started: float):
        self.path, self.started = Path(path), started
        self.earlier: list[float] = []
        if self.path.is_file():
            try:
                self.earlier = [float(s) for s in json.loads(self.path.read_text())["attempt_seconds"]]
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(f"{self.path} is not a search wall-time record ({err!r}); delete it (the total "
                                 "then counts from this attempt) or restore it") from err

    @property
    def attempts(self) -> int:
        return len(self.earlier) + 1

    def total(self) -> float:
        """Seconds over every attempt, this one up to now."""
        return sum(self.earlier) + time.time() - self.started

    def save(self) -> None:
        write_json_atomic(self.path, {"attempt_seconds": [*self.earlier, round(time.time() - self.started, 3)]})


class SearchLoop:
    """Run ``searcher`` for ``steps`` search steps (or until ``max_decodes`` schemes are explored, or it is done).

    Args:
        searcher: any :class:`Searcher`.
        explored: the explored set ``W`` (:meth:`ExploredSet.shared` for several workers).
        evaluate: ranks -> proxy-set WER (percent): one decode.
        reward: ``w -> R(w)`` (Eq. 4 or 5 with ``w_b`` bound); Eq. 6 below ``target_speedup``.
        target_speedup: ``a_t``.
        steps: this worker's search steps (a resumed search counts the steps it has done).
        max_decodes: stop once ``W`` (all workers) holds this many schemes; None: ``steps`` alone.
        state_path: the searcher's saved state (``checkpoints/last.ckpt``), written atomically every
            ``checkpoint_every`` steps and at the end; read back when the loop starts.
        worker: this worker's index (explored points record it).
        clock: the wall clock, saved after every step (None: not kept).
        log_metrics: ``(metrics, step)`` after every step (loggers).
    """

    def __init__(self, searcher: Searcher, explored: ExploredSet, evaluate: Callable[[dict], float],
                 reward: Callable[[float], float], target_speedup: float, steps: int, max_decodes: int | None,
                 state_path: str | Path, checkpoint_every: int = 1, worker: int = 0, clock: SearchClock | None = None,
                 log_metrics: Callable[[dict, int], None] | None = None):
        if max_decodes is not None and max_decodes < 1:
            raise ValueError(f"search.max_decodes must be >= 1 or null (no limit), got {max_decodes}")
        if target_speedup < 1.0:
            raise ValueError(f"search.target_speedup={target_speedup} is below 1; choose a_t >= 1")
        self.searcher, self.explored, self.evaluate, self.reward = searcher, explored, evaluate, reward
        self.target_speedup, self.steps, self.max_decodes = target_speedup, steps, max_decodes
        self.state_path, self.checkpoint_every, self.worker = Path(state_path), max(1, checkpoint_every), worker
        self.clock, self.log_metrics = clock, log_metrics
        self.step = 0
        self.counts = {"samples": 0, "accepted": 0, "evaluated": 0}
        self.step_seconds: list[float] = []  # every step of this process
        self.evaluated_step_seconds: list[float] = []  # the steps that decoded the proxy set

    # -- state -----------------------------------------------------------------------------------------------
    def save(self) -> None:
        state = {"format": STATE_FORMAT, "step": self.step, "counts": self.counts,
                 "searcher": self.searcher.state_dict()}
        save_atomic(self.state_path, lambda tmp: torch.save(state, tmp))

    def resume(self) -> None:
        if not self.state_path.is_file():
            return
        try:
            state = torch.load(self.state_path, map_location="cpu", weights_only=False)
            assert state["format"] == STATE_FORMAT
        except Exception as err:
            raise StaleSearchError(f"{self.state_path} is no search state of this version ({type(err).__name__}); "
                                   "run with on_stale=restart after moving it away, or choose another output_dir"
                                   ) from err
        self.step, self.counts = int(state["step"]), {**self.counts, **state["counts"]}
        self.searcher.load_state_dict(state["searcher"])

    def budget_spent(self) -> bool:
        self.explored.refresh()
        return self.max_decodes is not None and len(self.explored) >= self.max_decodes

    # -- one step --------------------------------------------------------------------------------------------
    def measure(self, proposal: Proposal) -> Outcome:
        """The proposal's WER (None below ``a_t``) and reward: from ``W``, or decoded once across workers."""
        if not proposal.probe and proposal.speedup < self.target_speedup:
            return Outcome(proposal, False, None, violation_reward(self.target_speedup - proposal.speedup), False)
        if proposal.probe:
            wer = float(self.evaluate(proposal.ranks))
            self.counts["evaluated"] += 1
            return Outcome(proposal, True, wer, self.reward(wer), True)
        point = self.claim_or_find(proposal.ranks)
        if point is not None:
            wer = float(point["wer"])
            return Outcome(proposal, True, wer, self.reward(wer), False)
        try:
            wer = float(self.evaluate(proposal.ranks))
            self.counts["evaluated"] += 1
            self.explored.add({"step": self.step, "rank": self.worker, "ranks": proposal.ranks,
                               "choices": proposal.choices, "speedup": proposal.speedup, "wer": wer,
                               "policy": self.searcher.policy, "time": time.time(), **proposal.point})
        finally:
            self.explored.release(proposal.ranks)
        return Outcome(proposal, True, wer, self.reward(wer), True)

    def claim_or_find(self, ranks: dict) -> dict | None:
        """The stored point of ``ranks`` (waiting while another worker decodes it), or None once it is claimed."""
        waiting_since = time.time()
        warned = False
        while True:
            self.explored.refresh()
            if (point := self.explored.get(ranks)) is not None:
                return point
            if self.explored.claim(ranks):
                self.explored.refresh()  # its decoder may have added it and released the claim just now
                if (point := self.explored.get(ranks)) is not None:
                    self.explored.release(ranks)
                return point
            if not warned and time.time() - waiting_since > CLAIM_WARN_SECONDS:
                warned = True
                log.warning("waiting for another worker's decode of a scheme (%s); if that worker is dead on "
                            "another machine, delete that claim file", self.explored.claim_path(ranks))
            time.sleep(CLAIM_POLL_SECONDS)

    def run(self) -> SearchLoop:
        """Resume the saved state, run the remaining steps, save; returns self (counts, seconds)."""
        self.resume()
        while self.step < self.steps:
            if self.budget_spent():
                log.info("search.max_decodes=%d reached: the search stops", self.max_decodes)
                break
            started = time.perf_counter()
            proposal = self.searcher.ask(self.step)
            if proposal is None:
                break
            outcome = self.measure(proposal)
            metrics = self.searcher.tell(outcome)
            seconds = time.perf_counter() - started
            self.step_seconds.append(seconds)
            if outcome.decoded:
                self.evaluated_step_seconds.append(seconds)
            if not proposal.probe:
                self.counts["samples"] += 1
                self.counts["accepted"] += outcome.feasible
            metrics = {"search/reward": outcome.reward, "search/speedup": proposal.speedup,
                       "search/acceptance": self.counts["accepted"] / max(self.counts["samples"], 1),
                       "search/explored": float(len(self.explored)), "search/step_seconds": seconds,
                       **({"search/wer": outcome.wer} if outcome.wer is not None else {}), **metrics}
            if self.log_metrics is not None:
                self.log_metrics(metrics, self.step)
            if not proposal.probe:
                self.step += 1
                if self.step % self.checkpoint_every == 0:
                    self.save()
            if self.clock is not None:
                self.clock.save()
        self.save()
        if self.clock is not None:
            self.clock.save()
        return self

    def summary(self) -> dict:
        """The loop's entries of the report's summary (acceptance, step times) and the searcher's."""
        def mean(values: list[float]) -> float | None:
            return sum(values) / len(values) if values else None

        return {"acceptance": self.counts["accepted"] / max(self.counts["samples"], 1),
                "mean_step_seconds": mean(self.step_seconds),
                "mean_evaluated_step_seconds": mean(self.evaluated_step_seconds), **self.searcher.summary()}
