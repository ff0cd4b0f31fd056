"""Learning-rate schedules (stepped per optimizer step)."""

from __future__ import annotations

import torch


def warmup_exponential_decay(optimizer: torch.optim.Optimizer, warmup_steps: int, hold_steps: int,
                             half_life_steps: int, min_factor: float, hold_until_pruned: bool,
                             pruning_end_step: int | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_steps``, constant until ``hold_steps``, then halving every
    ``half_life_steps``, never below ``min_factor`` times the base learning rate.

    ``hold_until_pruned``: constant until ``pruning_end_step`` instead, when that is later: the step a gradual
    pruning schedule makes its last mask update (given by the module when its trainer prunes; None: nothing
    prunes, the schedule is unchanged), so the rate is not decayed while the masks still change."""
    if hold_until_pruned and pruning_end_step is not None:
        hold_steps = max(hold_steps, pruning_end_step)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        decay = 0.5 ** (max(0, step - hold_steps) / half_life_steps)
        return max(min_factor, decay)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
