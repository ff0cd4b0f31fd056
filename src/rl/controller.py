"""The policy ``pi(theta)`` of the search (paper section 3.1) and its REINFORCE update.

A single LSTM layer with 100 input and 100 hidden units runs over the ``l`` targets; output ``i``
goes through its own fully connected layer of ``d`` units and a softmax, giving ``D_i``, the
distribution over target ``i``'s rank options. Input ``i`` is the embedding of the option chosen
for target ``i - 1`` (a learned start vector for ``i = 0``), as in the NAS controllers the paper
builds on, so later decisions can depend on earlier ones.

Update (Algorithm 1, line 18): minimize ``-log(prod_i p_i) (r - b)``, ``b`` an exponential moving
average of past rewards (``baseline_decay``; ``None`` gives the paper's plain ``-log(prod p_i) r``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Sample:
    """One sampled scheme: option index per target ``(l,)``, ``sum_i log p_i`` (scalar, differentiable)
    and the policy's mean entropy over targets (scalar)."""

    choices: torch.Tensor
    log_prob: torch.Tensor
    entropy: torch.Tensor


OptionMask = Callable[[int, list[int]], torch.Tensor]
"""``allowed(i, earlier) -> (d,) bool``: the options target ``i`` may take after the choices ``earlier``."""


class Controller(nn.Module):
    """Policy over ``num_targets`` (``l``) decisions of ``num_options`` (``d``) each."""

    def __init__(self, num_targets: int, num_options: int, input_size: int = 100, hidden_size: int = 100):
        super().__init__()
        self.num_targets, self.num_options = num_targets, num_options
        self.start = nn.Parameter(torch.zeros(input_size))
        # the choice for target i feeds step i + 1; the last choice feeds nothing (no unused parameters under DDP)
        self.embeddings = nn.ModuleList(nn.Embedding(num_options, input_size) for _ in range(num_targets - 1))
        self.cell = nn.LSTMCell(input_size, hidden_size)
        self.heads = nn.ModuleList(nn.Linear(hidden_size, num_options) for _ in range(num_targets))

    def _logits(self, i: int, state: tuple[torch.Tensor, torch.Tensor], earlier: list[int],
                allowed: OptionMask | None) -> torch.Tensor:
        """Target ``i``'s logits ``(d,)``, the options ``allowed`` forbids after ``earlier`` at ``-inf``
        (none allowed: scoring given choices that already left the allowed set, whose log p is -inf)."""
        logits = self.heads[i](state[0]).squeeze(0)
        if allowed is not None and (mask := allowed(i, earlier)).any():
            logits = logits.masked_fill(~mask, float("-inf"))
        return logits

    def forward(self, choices: torch.Tensor | None = None, generator: torch.Generator | None = None,
                allowed: OptionMask | None = None) -> Sample:
        """Sample a scheme (or score the given ``choices`` ``(l,)``): ``D_i`` step by step.

        ``allowed(i, earlier)`` (optional) gives the options target ``i`` may take after the choices
        ``earlier`` (a bool tensor ``(d,)``): ``D_i`` is renormalized over them (action masking), and
        ``log_prob`` is the probability of the scheme under that masked policy.
        """
        x = self.start.unsqueeze(0)
        state = None
        picked, log_probs, entropies = [], [], []
        for i in range(self.num_targets):
            state = self.cell(x, state)
            log_d = torch.log_softmax(self._logits(i, state, [int(c) for c in picked], allowed), dim=-1)
            if choices is None:
                j = torch.multinomial(log_d.exp().detach(), 1, generator=generator).squeeze(0)
            else:
                j = choices[i]
            picked.append(j)
            log_probs.append(log_d[j])
            p_d = log_d.exp()  # masked options: p = 0, and 0 log 0 = 0 (also in the gradient)
            entropies.append(-(p_d * log_d.masked_fill(p_d == 0, 0.0)).sum())
            if i + 1 < self.num_targets:
                x = self.embeddings[i](j.view(1))
        return Sample(torch.stack(picked), torch.stack(log_probs).sum(), torch.stack(entropies).mean())

    @torch.no_grad()
    def distributions(self, choices: torch.Tensor, allowed: OptionMask | None = None) -> torch.Tensor:
        """``D`` ``(l, d)`` along the path ``choices`` (each row conditioned on the earlier choices,
        masked by ``allowed`` as in :meth:`forward`)."""
        x, state, rows = self.start.unsqueeze(0), None, []
        for i in range(self.num_targets):
            state = self.cell(x, state)
            rows.append(torch.softmax(self._logits(i, state, choices[:i].tolist(), allowed), dim=-1))
            if i + 1 < self.num_targets:
                x = self.embeddings[i](choices[i].view(1))
        return torch.stack(rows)


class RewardBaseline:
    """Exponential moving average of rewards: ``b <- decay b + (1 - decay) r`` (first reward: ``b = r``).

    With ``normalize`` (an improvement over the paper, off by default) the advantage is also divided
    by a moving standard deviation of the rewards (at least 5% of the baseline's magnitude): Eq. 6's
    penalties (about -100 per unit of speed-up short of the target) are 10-20x larger than Eq. 5's
    rewards, and unnormalized they
    made the first updates so large that the policy collapsed (entropy 2.1 -> 0.35 in 150 steps).
    """

    def __init__(self, decay: float | None = 0.9, normalize: bool = False):
        if decay is not None and not 0.0 <= decay < 1.0:
            raise ValueError(f"search.baseline_decay must be in [0, 1) or null, got {decay}")
        if normalize and decay is None:
            raise ValueError("search.normalize_advantage needs the moving-average baseline (search.baseline_decay)")
        self.decay, self.normalize = decay, normalize
        self.value: float | None = None
        self.variance: float | None = None

    def advantage(self, reward: float) -> float:
        """``r - b`` with ``b`` before this reward (``r`` itself when the baseline is off), divided by
        the moving standard deviation when normalizing; then update ``b``."""
        if self.decay is None:
            return reward
        advantage = 0.0 if self.value is None else reward - self.value
        if self.value is None:
            self.value, self.variance = reward, 0.0
        else:
            self.value = self.decay * self.value + (1 - self.decay) * reward
            self.variance = self.decay * self.variance + (1 - self.decay) * advantage**2
        if self.normalize and advantage:
            # floor: 5% of the reward level, so that a converged policy's near-equal rewards are not blown up
            advantage /= max(self.variance**0.5, 0.05 * abs(self.value), 1e-3)
        return advantage

    def state_dict(self) -> dict:
        return {"decay": self.decay, "value": self.value, "variance": self.variance}

    def load_state_dict(self, state: dict) -> None:
        self.value, self.variance = state["value"], state["variance"]


def reinforce_loss(sample: Sample, advantage: float) -> torch.Tensor:
    """Algorithm 1, line 18: ``-log(prod_i p_i) * advantage``."""
    return -sample.log_prob * advantage
