"""The search space ``S`` (paper section 3.1): an ``l x d`` matrix of ranks, one row per target.

Row ``i`` lists the ``d`` rank options of target ``i``; a scheme picks one option per row. Two ways
to fill it:

* :func:`uniform_space` (the paper's "slow" search): the same range for every target, options at
  evenly spaced fractions of each target's largest useful rank;
* :func:`sensitivity_space` (the paper's "fast" search): each target's range narrowed by the
  sensitivity table (Fig. 2): its smallest option is its rank at the lowest energy at which
  factorizing it alone raised WER by at most ``max_delta``.

The last option of every row is its break-even rank, which means "leave dense" (:data:`compress.cost.FULL`),
as does any option whose rank does not pay (``k (m + n) >= m n``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from compress.cost import FULL, estimate_speedup, pays
from compress.svd import Spectrum
from compress.targets import Target

if TYPE_CHECKING:
    from compress.latency_cost import LatencyTable


class SearchSpaceError(ValueError):
    """A search space that is malformed or cannot reach the target speed-up."""


@dataclass
class SearchSpace:
    """``options[i][j]`` = rank ``S_ij`` of target ``names[i]`` (int, or ``full``)."""

    names: list[str]
    options: list[list[int | str]]

    def __post_init__(self):
        widths = {len(row) for row in self.options}
        if len(self.names) != len(self.options) or len(widths) != 1 or 0 in widths:
            raise SearchSpaceError(f"search space must be l x d with d >= 1: {len(self.names)} targets, "
                                   f"row widths {sorted(widths)}")

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.names), len(self.options[0])

    def ranks(self, choices: Sequence[int]) -> dict[str, int | str]:
        """The scheme ``s`` (target -> rank) of one option index per target."""
        return {name: row[j] for name, row, j in zip(self.names, self.options, choices, strict=True)}

    def most_compressed(self) -> dict[str, int | str]:
        """Each target at its smallest option (the highest speed-up the space can reach)."""
        return {name: min(row, key=lambda r: float("inf") if r == FULL else r)
                for name, row in zip(self.names, self.options, strict=True)}

    def completable(self, i: int, earlier: Sequence[int], estimate: Callable[[dict], float],
                    target_speedup: float) -> list[bool]:
        """Which options of target ``i`` still let a scheme reach ``target_speedup``, given the option
        indices ``earlier`` of targets ``0 .. i-1``: option ``j`` is kept when the scheme with ``earlier``,
        ``j`` and every later target at its smallest option meets it. Exact for any estimate that falls as
        ranks grow (Eq. 3 summed over parameters or MACs); used to mask the controller (``search.feasibility``).
        """
        smallest = self.most_compressed()
        scheme = {name: row[j] for name, row, j in zip(self.names, self.options, earlier, strict=False)}
        scheme.update({name: smallest[name] for name in self.names[i + 1:]})
        keep = []
        for rank in self.options[i]:
            scheme[self.names[i]] = rank
            keep.append(estimate(scheme) >= target_speedup)
        return keep

    def check_reachable(self, targets: Sequence[Target], target_speedup: float, by: str = "params",
                        table: LatencyTable | None = None) -> float:
        """The highest estimated speed-up of the space (``table``: the measured table of ``by="latency"``);
        raises when it is below ``target_speedup``."""
        if target_speedup < 1.0:
            raise SearchSpaceError(f"search.target_speedup={target_speedup} is below 1; choose a_t >= 1")
        best = estimate_speedup(targets, self.most_compressed(), by, table)
        if best < target_speedup:
            raise SearchSpaceError(f"search.target_speedup={target_speedup} is out of reach: the search space's most "
                                   f"compressed scheme is estimated at {best:.2f}x; lower a_t, widen search.space "
                                   "(sensitivity: a larger max_delta or widen=true; uniform: a smaller min_fraction) "
                                   "or allow more targets")
        return best

    def to_dict(self) -> dict:
        return {"names": self.names, "options": self.options}


def _option(target: Target, rank: int) -> int | str:
    rank = max(1, min(rank, target.max_rank))
    return rank if pays(target.shape, rank) else FULL


def _row(target: Target, ranks: Sequence[float]) -> list[int | str]:
    """A target's options from spaced ranks whose last value is its break-even rank ``m n / (m + n)``: that last
    option is ``full`` (dense), whatever the rounding. The break-even rank is rarely an integer, and rounded
    down it still pays (1024x512: rank 341 of 341.3, a lossy factorization at speed-up 1.001), which would leave
    the row without a dense option."""
    return [_option(target, round(r)) for r in ranks[:-1]] + [FULL]


SPACINGS = ("linear", "geometric")


def spaced(low: float, high: float, count: int, spacing: str) -> list[float]:
    """``count`` values from ``low`` to ``high``: evenly (``linear``) or at a constant ratio (``geometric``,
    which spreads the options evenly in per-matrix speed-up ``high / value`` instead of in rank)."""
    if spacing not in SPACINGS:
        raise SearchSpaceError(f"search.space.spacing must be one of {SPACINGS}, got {spacing!r}")
    if spacing == "linear":
        return [low + (high - low) * j / (count - 1) for j in range(count)]
    return [low * (high / low) ** (j / (count - 1)) for j in range(count)]


def uniform_space(targets: Sequence[Target], options: int = 8, min_fraction: float = 0.05,
                  spacing: str = "linear") -> SearchSpace:
    """Every target gets ``options`` ranks from ``min_fraction`` of its break-even rank
    ``m n / (m + n)`` (the largest rank that can pay) up to it (dense)."""
    if options < 2 or not 0.0 < min_fraction < 1.0:
        raise SearchSpaceError(f"search.space needs options >= 2 and 0 < min_fraction < 1, got {options}, "
                               f"{min_fraction}")
    rows = []
    for target in targets:
        m, n = target.shape
        break_even = m * n / (m + n)
        ranks = spaced(break_even * min_fraction, break_even, options, spacing)
        rows.append(_row(target, ranks))
    return SearchSpace([t.name for t in targets], rows)


def sensitivity_space(targets: Sequence[Target], spectra: Mapping[str, Spectrum], table: dict, options: int = 8,
                      max_delta: float = 2.0, min_fraction: float = 0.05, spacing: str = "linear") -> SearchSpace:
    """Per-target ranges narrowed by the sensitivity ``table`` (the paper's fast search).

    Target ``i``'s smallest option is its rank at ``e_i``, the lowest energy of the table whose WER
    rise stays within ``max_delta`` points; a target within ``max_delta`` at every energy of the
    table may go as low as the uniform space (``min_fraction`` of its break-even rank), and one that
    exceeds it everywhere starts at the table's highest energy. The ``options`` ranks are evenly
    spaced (``spacing``) from there up to the break-even rank (the last option: dense).
    """
    if options < 2:
        raise SearchSpaceError(f"search.space.options must be >= 2, got {options}")
    rows_by_target: dict[str, list[dict]] = {}
    for row in table["rows"]:
        rows_by_target.setdefault(row["target"], []).append(row)
    rows = []
    for target in targets:
        measured = rows_by_target.get(target.name)
        if not measured:
            raise SearchSpaceError(f"target '{target.name}' is not in the sensitivity table; rerun "
                                   "scripts/sensitivity.py on this checkpoint or use search.space.kind=uniform")
        m, n = target.shape
        break_even = m * n / (m + n)
        fine = [r["energy"] for r in measured if r["delta"] <= max_delta]
        if fine and min(fine) == min(r["energy"] for r in measured):
            lowest = break_even * min_fraction
        else:
            energy = min(fine) if fine else max(r["energy"] for r in measured)
            lowest = min(spectra[target.name].rank_for_energy(energy, target.name), break_even)
        rows.append(_row(target, spaced(max(lowest, 1.0), break_even, options, spacing)))
    return SearchSpace([t.name for t in targets], rows)


def widened_sensitivity_space(targets: Sequence[Target], spectra: Mapping[str, Spectrum], table: dict,
                              target_speedup: float, estimate: Callable[[dict], float], options: int = 8,
                              max_delta: float = 2.0, min_fraction: float = 0.05,
                              spacing: str = "linear") -> tuple[SearchSpace, float]:
    """:func:`sensitivity_space` at the smallest ``max_delta`` (the given one, else the next WER rise of the
    ``table``) whose most compressed scheme reaches ``target_speedup`` under ``estimate``; returns the space and
    that ``max_delta``. Where none does, the widest space (as the uniform one for tolerant targets) is returned and
    :meth:`SearchSpace.check_reachable` names the gap. An improvement for targets beyond the paper's fixed
    threshold (``search.space.widen``): the sensitive targets are the last to open up."""
    deltas = [max_delta] + sorted({float(r["delta"]) for r in table["rows"] if r["delta"] > max_delta})
    for delta in deltas:
        space = sensitivity_space(targets, spectra, table, options, delta, min_fraction, spacing)
        if estimate(space.most_compressed()) >= target_speedup:
            break
    return space, delta
