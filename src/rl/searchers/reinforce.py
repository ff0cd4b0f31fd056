"""``search=aggressive`` / ``conservative``: the paper's Algorithm 1, the LSTM 100/100 controller trained by
REINFORCE.

Each search step is one iteration of Algorithm 1: sample a scheme ``s`` from the controller (:meth:`ask`),
estimate its speed-up ``a``; when ``a < a_t`` the reward is ``R_v(a_t - a)`` (Eq. 6), otherwise the loop scores
the scheme on the proxy set (WER ``w``), rewards ``R(w)`` (Eq. 4 or 5) and adds it to the explored set ``W``;
:meth:`tell` updates the controller with ``-log(prod p_i) (r - b)`` (Algorithm 1, line 18; one optimizer step
per search step, as Lightning's automatic optimization did). Several workers each train their own controller
on the shared explored set.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rl.controller import Controller, RewardBaseline, reinforce_loss
from rl.searcher import Outcome, Proposal, Searcher, SearchProblem

FEASIBILITY = ("penalty", "mask")


def step_generator(seed: int, step: int, worker: int) -> torch.Generator:
    """The sampling stream of step ``step`` on worker ``worker``: a resumed search samples what an uninterrupted
    one would have."""
    return torch.Generator().manual_seed(hash((seed, int(step), worker)) % 2**62)


class ReinforceSearcher(Searcher):
    """Algorithm 1 over ``problem.space`` against ``a_t``.

    Args:
        problem: the space, estimate, target, seed and worker.
        optimizer: partial taking the controller's parameters (``searcher.optimizer``, Adam lr 0.003).
        baseline_decay: moving-average reward baseline (None: the paper's plain ``r``).
        normalize_advantage, entropy_weight: improvements over the paper (off = the paper): divide the advantage
            by a moving reward standard deviation (:class:`RewardBaseline`), and add ``-entropy_weight * H(pi)``
            to the loss to keep the policy exploring.
        feasibility: ``penalty`` (the paper: a sample below ``a_t`` is rewarded by Eq. 6) or ``mask``
            (improvement: the controller picks target by target only among the options that keep ``a_t``
            reachable (:meth:`SearchSpace.completable`), so every sample meets it and every reward is a WER
            reward). With Eq. 6 the penalties set the advantage's scale and the policy learns mostly to stay
            clear of the target (docs/search.md).
        controller_input_size, controller_hidden_size: 100 and 100 in the paper.
    """

    policy, provenance = "rl", "automl"

    def __init__(self, problem: SearchProblem, optimizer: Callable, baseline_decay: float | None,
                 normalize_advantage: bool, entropy_weight: float, feasibility: str, controller_input_size: int,
                 controller_hidden_size: int):
        if feasibility not in FEASIBILITY:
            raise ValueError(f"search.searcher.feasibility must be one of {FEASIBILITY}, got {feasibility!r}")
        self.problem, self.feasibility, self.entropy_weight = problem, feasibility, entropy_weight
        self.controller = Controller(*problem.space.shape, controller_input_size, controller_hidden_size)
        self.optimizer = optimizer(self.controller.parameters())
        self.reward_baseline = RewardBaseline(baseline_decay, normalize_advantage)
        self._sample = None

    def allowed_options(self, i: int, earlier: list[int]) -> torch.Tensor:
        """The controller's mask under ``feasibility=mask``: target ``i``'s options ``(d,)`` that keep ``a_t``
        reachable after the choices ``earlier``."""
        p = self.problem
        return torch.tensor(p.space.completable(i, earlier, p.estimate, p.target_speedup))

    def existing_options(self, i: int, earlier: list[int]) -> torch.Tensor:
        """In a ragged (joint) space: target ``i``'s own options ``(d,)`` (its row may be shorter than ``d``)."""
        return torch.arange(self.problem.space.shape[1]) < self.problem.space.widths[i]

    def ask(self, step: int) -> Proposal:
        if self.feasibility == "mask":
            allowed = self.allowed_options
        elif self.problem.space.ragged:  # the paper's penalty: any option of the target's own row
            allowed = self.existing_options
        else:
            allowed = None
        self._sample = self.controller(generator=step_generator(self.problem.seed, step, self.problem.worker),
                                       allowed=allowed)
        choices = self._sample.choices.tolist()
        ranks = self.problem.space.ranks(choices)
        return Proposal(ranks, choices, float(self.problem.estimate(ranks)))

    def tell(self, outcome: Outcome) -> dict:
        sample, self._sample = self._sample, None
        advantage = self.reward_baseline.advantage(outcome.reward)
        loss = reinforce_loss(sample, advantage) - self.entropy_weight * sample.entropy
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"search/entropy": float(sample.entropy.detach())}

    def state_dict(self) -> dict:
        return {"controller": self.controller.state_dict(), "optimizer": self.optimizer.state_dict(),
                "reward_baseline": self.reward_baseline.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.controller.load_state_dict(state["controller"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.reward_baseline.load_state_dict(state["reward_baseline"])

    def signature(self) -> dict:
        return {"space": self.problem.space.to_dict()}  # the controller's shape and meaning
