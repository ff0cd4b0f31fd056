"""``SearchModule``: the RL search of the paper's Algorithm 1 as a LightningModule.

Each training step is one iteration of Algorithm 1: sample a scheme ``s`` from the controller,
estimate its speed-up ``a``; when ``a < a_t`` the reward is ``R_v(a_t - a)`` (Eq. 6), otherwise the
scheme is compressed and scored on the proxy set (WER ``w``), rewarded ``R(w)`` (Eq. 4 or 5) and
added to the explored set ``W``; the controller is updated with ``-log(prod p_i) (r - b)``.

The module knows nothing of speech: ``estimate(ranks) -> a`` and ``evaluate(ranks) -> w`` are
callables (DESIGN.md). Under DDP every rank samples and evaluates its own scheme (its own random
stream and explored-set file) and Lightning averages the policy gradients across ranks.
``policy="random"`` is the random-search baseline: uniform samples, same budget, no updates;
``policy="random_feasible"`` draws uniform samples until one meets ``a_t`` (rejection sampling: uniform
over the feasible schemes), so that, like a converged controller, it decodes a scheme at nearly every
step: the random baseline at an equal number of decodes rather than of samples.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import lightning as L
import torch

from rl.controller import Controller, RewardBaseline, reinforce_loss
from rl.explored import ExploredSet
from rl.rewards import violation_reward, wer_reward
from rl.space import SearchSpace

log = logging.getLogger(__name__)

POLICIES = ("rl", "random", "random_feasible")
FEASIBILITY = ("penalty", "mask")
FEASIBLE_DRAWS = 10_000  # random_feasible: uniform draws per step before it keeps an infeasible one


class SearchModule(L.LightningModule):
    """Algorithm 1 over ``space`` against target speed-up ``target_speedup`` (``a_t``).

    Args:
        space: the ``l x d`` search space ``S``.
        estimate: ranks -> estimated speed-up ``a``.
        evaluate: ranks -> proxy-set WER ``w`` (percent).
        baseline_wer: ``w_b``, the uncompressed model's WER on the same proxy set.
        reward: ``conservative`` (Eq. 4) or ``aggressive`` (Eq. 5).
        explored: the explored set ``W`` (opened by the caller: one file per DDP rank).
        optimizer: partial taking the controller's parameters (``search.optimizer``; needed to train).
        baseline_decay: moving-average reward baseline (None: the paper's plain ``r``).
        policy: ``rl`` (the controller), ``random`` (uniform sampling, the baseline search) or
            ``random_feasible`` (uniform over the schemes that meet ``a_t``, by rejection).
        seed: the sampling stream of step ``t`` on rank ``q`` is seeded from ``(seed, t, q)``, so a
            resumed search samples what an uninterrupted one would have.
        controller_input_size, controller_hidden_size: 100 and 100 in the paper.
        normalize_advantage, entropy_weight: improvements over the paper (off = the paper): divide
            the advantage by a moving reward standard deviation (:class:`RewardBaseline`), and add
            ``-entropy_weight * H(pi)`` to the loss to keep the policy exploring.
        feasibility: ``penalty`` (the paper: a sample below ``a_t`` is rewarded by Eq. 6) or ``mask``
            (improvement: the controller picks target by target only among the options that keep ``a_t``
            reachable (:meth:`SearchSpace.completable`), so every sample meets it and every reward is a
            WER reward). With Eq. 6 the penalties (tens to hundreds) set the advantage's scale, the WER
            differences between accepted schemes (Eq. 5: about -4 to -5) hardly move the policy, and it
            learns mostly to stay clear of the target, over-compressing (README "Search").
        max_decodes: stop once the explored set holds this many schemes (a budget in decodes, the cost that
            matters, rather than in steps; None: ``search.steps`` alone). A resumed search that already has them
            runs no step. Under DDP each rank counts its own and the files it opened with.
    """

    def __init__(self, space: SearchSpace, estimate: Callable[[dict], float], evaluate: Callable[[dict], float],
                 baseline_wer: float, target_speedup: float, reward: str, explored: ExploredSet,
                 optimizer: Callable | None = None, baseline_decay: float | None = 0.9, policy: str = "rl",
                 seed: int = 0, controller_input_size: int = 100, controller_hidden_size: int = 100,
                 normalize_advantage: bool = False, entropy_weight: float = 0.0, feasibility: str = "penalty",
                 max_decodes: int | None = None):
        super().__init__()
        if max_decodes is not None and max_decodes < 1:
            raise ValueError(f"search.max_decodes must be >= 1 or null (no limit), got {max_decodes}")
        self.max_decodes = max_decodes
        if policy not in POLICIES:
            raise ValueError(f"search.policy must be one of {POLICIES}, got {policy!r}")
        if target_speedup < 1.0:
            raise ValueError(f"search.target_speedup={target_speedup} is below 1; choose a_t >= 1")
        self.space, self.estimate, self.evaluate = space, estimate, evaluate
        self.baseline_wer, self.target_speedup = baseline_wer, target_speedup
        self.reward_fn = wer_reward(reward)
        self.explored = explored
        self.optimizer_factory = optimizer
        self.policy, self.seed = policy, seed
        self.controller = Controller(*space.shape, controller_input_size, controller_hidden_size)
        self.reward_baseline = RewardBaseline(baseline_decay, normalize_advantage)
        self.entropy_weight = entropy_weight
        if feasibility not in FEASIBILITY:
            raise ValueError(f"search.feasibility must be one of {FEASIBILITY}, got {feasibility!r}")
        self.feasibility = feasibility
        self.counts = {"samples": 0, "accepted": 0, "evaluated": 0}
        self.step_seconds: list[float] = []  # every step of this process
        self.evaluated_step_seconds: list[float] = []  # the steps that decoded the proxy set

    # -- one step of Algorithm 1 ---------------------------------------------------------------
    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(hash((self.seed, int(self.global_step), self.global_rank)) % 2**62)

    def allowed_options(self, i: int, earlier: list[int]) -> torch.Tensor:
        """The controller's mask under ``feasibility=mask``: target ``i``'s options ``(d,)`` that keep
        ``a_t`` reachable after the choices ``earlier``."""
        return torch.tensor(self.space.completable(i, earlier, self.estimate, self.target_speedup))

    def decode_budget_spent(self) -> bool:
        return self.max_decodes is not None and len(self.explored) >= self.max_decodes

    def on_train_batch_start(self, batch, batch_idx):
        if self.decode_budget_spent():
            log.info("search.max_decodes=%d reached: the search stops", self.max_decodes)
            self.trainer.should_stop = True
            return -1  # Lightning: skip the rest of the epoch; should_stop ends the fit
        return None

    def training_step(self, batch, batch_idx):
        started = time.perf_counter()
        generator = self._generator()
        if self.policy == "rl":
            sample = self.controller(generator=generator,
                                     allowed=self.allowed_options if self.feasibility == "mask" else None)
            ranks = self.space.ranks(sample.choices.tolist())
            speedup = float(self.estimate(ranks))
        else:
            for _ in range(FEASIBLE_DRAWS if self.policy == "random_feasible" else 1):
                choices = torch.randint(self.space.shape[1], (self.space.shape[0],), generator=generator)
                ranks = self.space.ranks(choices.tolist())
                speedup = float(self.estimate(ranks))
                if speedup >= self.target_speedup:
                    break
            sample = self.controller(choices)
        self.counts["samples"] += 1
        wer = point = None
        if speedup < self.target_speedup:
            reward = violation_reward(self.target_speedup - speedup)
        else:
            self.counts["accepted"] += 1
            point = self.explored.get(ranks)
            if point is None:
                wer = float(self.evaluate(ranks))
                self.counts["evaluated"] += 1
                self.explored.add({"step": int(self.global_step), "rank": self.global_rank, "ranks": ranks,
                                   "choices": sample.choices.tolist(), "speedup": speedup, "wer": wer,
                                   "policy": self.policy, "time": time.time()})
            else:
                wer = float(point["wer"])
            reward = self.reward_fn(wer, self.baseline_wer)
        advantage = self.reward_baseline.advantage(reward)
        self.step_seconds.append(time.perf_counter() - started)
        if wer is not None and point is None:
            self.evaluated_step_seconds.append(self.step_seconds[-1])
        metrics = {"search/reward": reward, "search/speedup": speedup, "search/entropy": float(sample.entropy.detach()),
                   "search/acceptance": self.counts["accepted"] / self.counts["samples"],
                   "search/explored": float(len(self.explored)), "search/step_seconds": self.step_seconds[-1]}
        if wer is not None:
            metrics["search/wer"] = wer
        self.log_dict(metrics, batch_size=1, on_step=True, on_epoch=False)
        if self.policy != "rl":
            return None  # the random searches never update
        return reinforce_loss(sample, advantage) - self.entropy_weight * sample.entropy

    # -- Lightning plumbing --------------------------------------------------------------------
    def configure_optimizers(self):
        if self.optimizer_factory is None:
            raise ValueError("SearchModule needs an optimizer to train its controller (search.optimizer)")
        return self.optimizer_factory(self.controller.parameters())

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["search_state"] = {"reward_baseline": self.reward_baseline.state_dict(), "counts": self.counts,
                                      "space": self.space.to_dict(), "target_speedup": self.target_speedup}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "search_state" not in checkpoint:
            raise ValueError("the checkpoint holds no search state (it was not written by SearchModule); delete the "
                             "search's output_dir or choose a new one to start afresh")
        state = checkpoint["search_state"]
        if state["space"] != self.space.to_dict():
            raise ValueError("the search checkpoint was made for another search space (other targets, ranges or "
                             "baseline); delete the search's output_dir or choose a new one to start afresh")
        self.reward_baseline.load_state_dict(state["reward_baseline"])
        self.counts.update(state["counts"])
