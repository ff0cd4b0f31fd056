"""Learning-rate schedules (stepped per optimizer step)."""

from __future__ import annotations

import torch


def warmup_exponential_decay(optimizer: torch.optim.Optimizer, warmup_steps: int, hold_steps: int,
                             half_life_steps: int, min_factor: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_steps``, constant until ``hold_steps``, then halving every
    ``half_life_steps``, never below ``min_factor`` times the base learning rate."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        decay = 0.5 ** (max(0, step - hold_steps) / half_life_steps)
        return max(min_factor, decay)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
