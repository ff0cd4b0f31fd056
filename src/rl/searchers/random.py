"""``search=random`` and ``search=random_feasible``: the random-search baselines of the paper's RL search.

``random``: one uniform sample per step (same budget in samples, no learning). ``random_feasible``: uniform
draws until one meets ``a_t`` (rejection sampling: uniform over the feasible schemes, at most ``feasible_draws``
per step), so that, like a converged controller, it decodes a scheme at nearly every step: the random baseline
at an equal number of decodes rather than of samples.
"""

from __future__ import annotations

import torch

from rl.searcher import Proposal, Searcher, SearchProblem
from rl.searchers.reinforce import step_generator


class RandomSearcher(Searcher):
    """Uniform samples over ``problem.space`` (``feasible``: uniform over those that meet ``a_t``)."""

    provenance = "random"

    def __init__(self, problem: SearchProblem, feasible: bool, feasible_draws: int):
        if feasible_draws < 1:
            raise ValueError(f"search.searcher.feasible_draws must be >= 1, got {feasible_draws}")
        self.problem, self.feasible = problem, feasible
        self.draws = feasible_draws if feasible else 1
        self.policy = "random_feasible" if feasible else "random"

    def ask(self, step: int) -> Proposal:
        p = self.problem
        generator = step_generator(p.seed, step, p.worker)
        for _ in range(self.draws):
            if p.space.ragged:  # each target uniform over its own row
                choices = [int(torch.randint(width, (1,), generator=generator)) for width in p.space.widths]
            else:
                choices = torch.randint(p.space.shape[1], (p.space.shape[0],), generator=generator).tolist()
            ranks = p.space.ranks(choices)
            speedup = float(p.estimate(ranks))
            if speedup >= p.target_speedup:
                break
        return Proposal(ranks, choices, speedup)

    def signature(self) -> dict:
        return {"space": self.problem.space.to_dict()}
