"""Searchers on the real search loop (:class:`rl.loop.SearchLoop`) over toy problems: no speech, a known WER."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from rl.explored import ExploredSet
from rl.loop import SearchLoop
from rl.rewards import wer_reward
from rl.searcher import Searcher, SearchProblem
from rl.searchers.random import RandomSearcher
from rl.searchers.reinforce import ReinforceSearcher
from rl.space import SearchSpace

# conf/search/searcher/reinforce.yaml with the paper's switches (no normalization, no entropy bonus, penalty)
PAPER_RL = dict(baseline_decay=0.9, normalize_advantage=False, entropy_weight=0.0, feasibility="penalty",
                controller_input_size=100, controller_hidden_size=100)


def toy_problem(space: SearchSpace, estimate: Callable[[dict], float], target_speedup: float, baseline_wer: float,
                out: Path, reward: str = "aggressive", seed: int = 0, worker: int = 0, workers: int = 1
                ) -> SearchProblem:
    return SearchProblem(space, estimate, target_speedup, reward, "params", baseline_wer, seed, worker, workers,
                         Path(out))


def rl_searcher(problem: SearchProblem, lr: float = 0.05, **options) -> ReinforceSearcher:
    return ReinforceSearcher(problem, lambda params: torch.optim.Adam(params, lr=lr), **{**PAPER_RL, **options})


def random_searcher(problem: SearchProblem, feasible: bool = False) -> RandomSearcher:
    return RandomSearcher(problem, feasible, 10_000)


def run_loop(searcher: Searcher, problem: SearchProblem, evaluate: Callable[[dict], float], steps: int,
             max_decodes: int | None = None, resume: bool = True) -> SearchLoop:
    """``steps`` search steps of ``searcher`` in ``problem.state_dir`` (resuming its state unless ``resume`` is
    false), as the search stage runs them."""
    out = Path(problem.state_dir)
    state = out / "checkpoints" / "last.ckpt"
    if not resume:
        state.unlink(missing_ok=True)
    reward = wer_reward(problem.reward)
    return SearchLoop(searcher, ExploredSet.shared(out, problem.worker), evaluate,
                      lambda wer: reward(wer, problem.baseline_wer), problem.target_speedup, steps, max_decodes,
                      state, worker=problem.worker).run()


def toy_worker(out: str, worker: int, workers: int, delay: float, start: int = 0) -> None:
    """One worker process of a toy search (the test of several workers): the grid searcher of
    test_toy_searcher over a 3 x 3 space, every worker walking the same schemes in the same order, each decode
    taking ``delay`` seconds and logged (fsynced) to ``decodes-worker<k>.txt`` before it returns. It starts when
    ``out/go`` exists (after writing ``out/ready-worker<k>``). ``start``: the grid index its walk starts at (walking
    the same order, a worker can find every scheme claimed by a quicker one and never decode)."""
    import json
    import os
    import time

    from test_toy_searcher import GridSearcher

    from rl.loop import WorkerLock

    space = SearchSpace(["a", "b", "c"], [[1, 2, 3]] * 3)
    problem = toy_problem(space, lambda ranks: 9.0 / sum(ranks.values()), 1.0, 20.0, Path(out), worker=worker,
                          workers=workers)

    def evaluate(ranks: dict) -> float:
        time.sleep(delay)
        with open(Path(out) / f"decodes-worker{worker}.txt", "a") as f:
            f.write(json.dumps(ranks, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return 30.0 - sum(ranks.values())

    (Path(out) / f"ready-worker{worker}").touch()
    while not (Path(out) / "go").exists():  # all workers start together (imports take seconds)
        time.sleep(0.01)
    with WorkerLock(out, worker):
        run_loop(GridSearcher(problem, start), problem, evaluate, steps=27)
