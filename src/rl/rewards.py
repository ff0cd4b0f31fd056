"""Reward functions of the search (paper section 3.2).

* Eq. 4, conservative searches: ``R(w) = -exp(w - w_b)``;
* Eq. 5, aggressive searches: ``R(w) = -exp(sqrt(w / w_b))``;
* Eq. 6, schemes below the target speed-up: ``R_v(delta_a) = -100 delta_a - 10``.

``w`` and ``w_b`` are WERs in percent (the compressed model's and the baseline's, on the proxy set).
"""

from __future__ import annotations

import math
from collections.abc import Callable

VIOLATION_SLOPE, VIOLATION_OFFSET = -100.0, -10.0  # Eq. 6's constants
MAX_EXPONENT = 50.0  # Eq. 4's exponent is capped here: exp(w - w_b) overflows past ~710 WER points (and its square,
                     # in the reward baseline's variance, past ~355); a scheme 50 points worse is useless either way


def conservative_reward(wer: float, baseline_wer: float) -> float:
    """Eq. 4: ``-exp(w - w_b)``, exact up to ``w - w_b = 50`` WER points (:data:`MAX_EXPONENT`), constant above."""
    return -math.exp(min(wer - baseline_wer, MAX_EXPONENT))


def aggressive_reward(wer: float, baseline_wer: float) -> float:
    """Eq. 5: ``-exp(sqrt(w / w_b))``."""
    if baseline_wer <= 0:
        raise ValueError("the aggressive reward (Eq. 5) divides by the baseline WER, which is 0 on this proxy set; "
                         "use search.reward=conservative or a larger proxy set")
    return -math.exp(math.sqrt(wer / baseline_wer))


def violation_reward(delta_speedup: float) -> float:
    """Eq. 6: ``R_v(delta_a) = -100 delta_a - 10`` for a scheme ``delta_a = a_t - a`` short of the target."""
    return VIOLATION_SLOPE * delta_speedup + VIOLATION_OFFSET


REWARDS: dict[str, Callable[[float, float], float]] = {"conservative": conservative_reward,
                                                        "aggressive": aggressive_reward}


def wer_reward(kind: str) -> Callable[[float, float], float]:
    """The WER reward ``R(w, w_b)`` named by ``search.reward`` (``conservative`` = Eq. 4, ``aggressive`` = Eq. 5)."""
    if kind not in REWARDS:
        raise ValueError(f"search.reward must be one of {sorted(REWARDS)}, got {kind!r}")
    return REWARDS[kind]
