"""The worked example of docs/architecture.md "Adding a searcher": a toy searcher in one module, built from its
config by Hydra's ``_target_`` and run on the real search loop (explored set, budget, state, resume)."""

from __future__ import annotations

import hydra
from loop_helpers import run_loop, toy_problem
from omegaconf import OmegaConf

from rl.explored import ExploredSet
from rl.searcher import Proposal, Searcher, SearchProblem
from rl.space import SearchSpace


class GridSearcher(Searcher):
    """Every scheme of the space in order, one per step: step ``t`` takes the option indices of ``start + t``
    written in base ``d`` (``l`` digits). Done (None) when the grid is."""

    policy = provenance = "grid"

    def __init__(self, problem: SearchProblem, start: int):
        self.problem, self.start = problem, start

    def ask(self, step: int) -> Proposal | None:
        (targets, d), index = self.problem.space.shape, self.start + step
        if index >= d**targets:
            return None
        choices = [index // d**i % d for i in reversed(range(targets))]
        ranks = self.problem.space.ranks(choices)
        return Proposal(ranks, choices, float(self.problem.estimate(ranks)))

    def signature(self) -> dict:
        return {"space": self.problem.space.to_dict(), "start": self.start}


# conf/search/searcher/grid.yaml would hold exactly this
CONFIG = {"_target_": "test_toy_searcher.GridSearcher", "start": 0}
SPACE = SearchSpace(["a", "b"], [[1, 2, 3]] * 2)


def estimate(ranks: dict) -> float:
    return 6.0 / sum(ranks.values())  # meets a_t = 1.5 when the ranks sum to 4 or less


class Wer:
    def __init__(self):
        self.decoded: list[dict] = []

    def __call__(self, ranks: dict) -> float:
        self.decoded.append(ranks)
        return 30.0 - ranks["a"] - 2 * ranks["b"]


def test_a_toy_searcher_from_its_config_runs_on_the_search_loop_and_resumes(tmp_path):
    problem = toy_problem(SPACE, estimate, 1.5, 20.0, tmp_path)
    searcher = hydra.utils.instantiate(OmegaConf.create(CONFIG), _partial_=True)(problem=problem)
    wer = Wer()
    loop = run_loop(searcher, problem, wer, steps=4)
    assert loop.step == 4 and loop.counts["samples"] == 4
    # steps 0-3: (1,1) (1,2) (1,3) (2,1); (1,3) sums to 4 as well: all four meet a_t
    assert wer.decoded == [{"a": 1, "b": 1}, {"a": 1, "b": 2}, {"a": 1, "b": 3}, {"a": 2, "b": 1}]
    resumed = Wer()
    loop = run_loop(searcher, problem, resumed, steps=100)  # resumes at step 4; the grid ends at 9
    assert loop.step == 9 and resumed.decoded == [{"a": 2, "b": 2}, {"a": 3, "b": 1}]
    points = list(ExploredSet(tmp_path / "explored-rank0.jsonl"))
    assert [p["step"] for p in points] == [0, 1, 2, 3, 4, 6] and {p["policy"] for p in points} == {"grid"}
    assert ExploredSet(tmp_path / "explored-rank0.jsonl").best(1.5, 1)[0]["ranks"] == {"a": 1, "b": 3}
