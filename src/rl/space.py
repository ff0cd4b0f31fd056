"""The search space ``S`` (paper section 3.1): an ``l x d`` matrix of ranks, one row per target.

Row ``i`` lists the ``d`` rank options of target ``i``; a scheme picks one option per row. Three ways
to fill it:

* :func:`uniform_space` (the paper's "slow" search): the same range for every target, options at
  evenly spaced fractions of each target's largest useful rank;
* :func:`sensitivity_space` (the paper's "fast" search): each target's range narrowed by the
  sensitivity table (Fig. 2): its smallest option is its rank at the lowest energy at which
  factorizing it alone raised WER by at most ``max_delta``.

* :func:`joint_space` (improvement, ``search.space.kind=joint``): every technique's options per target (any form
  of :mod:`compress.options`): the sensitivity space's ranks, sparsities (unstructured and in blocks where the
  block divides the matrix), ranks with their factors pruned, and ``full``; rows may differ in length.

The last option of every rank row is its break-even rank, which means "leave dense" (:data:`compress.cost.FULL`),
as does any option whose rank does not pay (``k (m + n) >= m n``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from compress.cost import FULL, estimate_speedup, pays
from compress.options import normalize, option_key
from compress.svd import Spectrum
from compress.targets import Target

if TYPE_CHECKING:
    from compress.latency_cost import LatencyTable


class SearchSpaceError(ValueError):
    """A search space that is malformed or cannot reach the target speed-up."""


@dataclass
class SearchSpace:
    """``options[i][j]`` = option ``S_ij`` of target ``names[i]``: a rank (int) or ``full``, or in a ``ragged``
    (joint) space any option of :mod:`compress.options`, with rows of different lengths."""

    names: list[str]
    options: list[list]
    ragged: bool = False

    def __post_init__(self):
        widths = {len(row) for row in self.options}
        if len(self.names) != len(self.options) or 0 in widths or (len(widths) != 1 and not self.ragged):
            raise SearchSpaceError(f"search space must be l x d with d >= 1: {len(self.names)} targets, "
                                   f"row widths {sorted(widths)}")
        self._costs: dict[int, OptionCosts] = {}

    @property
    def shape(self) -> tuple[int, int]:
        """``(l, d)``: targets and the widest row's options."""
        return len(self.names), max(len(row) for row in self.options)

    @property
    def widths(self) -> list[int]:
        """Each row's number of options."""
        return [len(row) for row in self.options]

    def costs(self, estimate: Callable[[dict], float]) -> OptionCosts:
        """The per-option costs of ``estimate`` (:class:`OptionCosts`), computed once per estimate."""
        if id(estimate) not in self._costs:
            self._costs[id(estimate)] = OptionCosts(self, estimate)
        return self._costs[id(estimate)]

    def ranks(self, choices: Sequence[int]) -> dict[str, int | str]:
        """The scheme ``s`` (target -> rank) of one option index per target."""
        return {name: row[j] for name, row, j in zip(self.names, self.options, choices, strict=True)}

    def most_compressed(self, estimate: Callable[[dict], float] | None = None) -> dict:
        """Each target at its smallest option (the highest speed-up the space can reach): its smallest rank, or in
        a ragged space its cheapest option under ``estimate`` (:class:`OptionCosts`)."""
        if self.ragged:
            if estimate is None:
                raise SearchSpaceError("the most compressed scheme of a joint space needs the speed-up estimate")
            return self.ranks(self.costs(estimate).cheapest())
        return {name: min(row, key=lambda r: float("inf") if r == FULL else r)
                for name, row in zip(self.names, self.options, strict=True)}

    def completable(self, i: int, earlier: Sequence[int], estimate: Callable[[dict], float],
                    target_speedup: float) -> list[bool]:
        """Which options of target ``i`` still let a scheme reach ``target_speedup``, given the option
        indices ``earlier`` of targets ``0 .. i-1``: option ``j`` is kept when the scheme with ``earlier``,
        ``j`` and every later target at its smallest option meets it. Exact for any estimate that falls as
        ranks grow (Eq. 3 summed over parameters or MACs); used to mask the controller (``search.feasibility``).
        In a ragged space: by the separable costs of ``estimate`` (:meth:`OptionCosts.completable`), and the options
        past a row's end are never allowed.
        """
        if self.ragged:
            keep = self.costs(estimate).completable(i, earlier, target_speedup)
            return keep + [False] * (self.shape[1] - len(keep))
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
        if self.ragged:  # options of several techniques: the estimate of the search (search.py) decides
            raise SearchSpaceError("a joint space's reach is checked with SearchSpace.check_reach(estimate, a_t)")
        best = estimate_speedup(targets, self.most_compressed(), by, table)
        if best < target_speedup:
            raise SearchSpaceError(f"search.target_speedup={target_speedup} is out of reach: the search space's most "
                                   f"compressed scheme is estimated at {best:.2f}x; lower a_t, widen search.space "
                                   "(sensitivity: a larger max_delta or widen=true; uniform: a smaller min_fraction) "
                                   "or allow more targets")
        return best

    def check_reach(self, estimate: Callable[[dict], float], target_speedup: float) -> float:
        """The highest speed-up of the space under ``estimate``; raises when it is below ``target_speedup``."""
        if target_speedup < 1.0:
            raise SearchSpaceError(f"search.target_speedup={target_speedup} is below 1; choose a_t >= 1")
        best = estimate(self.most_compressed(estimate))
        if best < target_speedup:
            raise SearchSpaceError(f"search.target_speedup={target_speedup} is out of reach: the search space's most "
                                   f"compressed scheme is estimated at {best:.2f}x; lower a_t or widen search.space "
                                   "(a larger max_delta, more sparsities or ranks)")
        return best

    def to_dict(self) -> dict:
        return {"names": self.names, "options": self.options, **({"ragged": True} if self.ragged else {})}


class OptionCosts:
    """The cost of every option of ``space`` under a separable speed-up ``estimate``: ``1 / a(s)`` is the dense
    model's share plus, per target, what its option adds (``delta[i][j]``, negative when it saves), measured as
    ``1 / a(target i at option j, every other full) - 1 / a(all full)``. Exact for the estimates of the search
    (parameters, MACs and the measured-latency table all sum over targets), and ``l d`` estimates once instead
    of one per completion check."""

    def __init__(self, space: SearchSpace, estimate: Callable[[dict], float]):
        self.space = space
        dense = {name: FULL for name in space.names}
        self.base = 1.0 / estimate(dense)
        self.delta: list[list[float]] = []
        for name, row in zip(space.names, space.options, strict=True):
            deltas = []
            for option in row:
                scheme = {**dense, name: option}
                deltas.append(1.0 / estimate(scheme) - self.base)
            self.delta.append(deltas)

    def speedup(self, choices: Sequence[int]) -> float:
        """The estimated speed-up of the option indices ``choices`` ``(l,)``."""
        return 1.0 / (self.base + sum(row[j] for row, j in zip(self.delta, choices, strict=True)))

    def cheapest(self) -> list[int]:
        """Per target the index of its cheapest option."""
        return [min(range(len(row)), key=row.__getitem__) for row in self.delta]

    def completable(self, i: int, earlier: Sequence[int], target_speedup: float) -> list[bool]:
        """Which options of target ``i`` (its row) keep ``target_speedup`` reachable after ``earlier`` (targets
        ``0 .. i-1``), every later target at its cheapest option."""
        spent = self.base + sum(self.delta[t][j] for t, j in enumerate(earlier))
        rest = sum(min(row) for row in self.delta[i + 1:])
        budget = 1.0 / target_speedup + 1e-12
        return [spent + cost + rest <= budget for cost in self.delta[i]]

    def repair(self, choices: Sequence[int], target_speedup: float, start: int = 0,
               rises: Sequence[Sequence[float]] | None = None) -> list[int] | None:
        """``choices`` moved to more compressed options until they meet ``target_speedup``; None when the cheapest
        scheme misses it too.

        Without ``rises``: the targets take turns one notch at a time (the next cheaper option of its row by
        cost), from target ``start``: HAQ's repair of a proposal that misses its resource budget (Wang et al.
        2019, section 3.3: the bit widths are lowered layer by layer until the constraint holds). With ``rises``
        (per target and option its estimated WER rise, :func:`option_rises`): each move is the cheaper option, of
        any target, that saves the most cost per point of estimated WER rise (a move that lowers the rise first),
        as AIMET's greedy selection trades its per-layer curves."""
        choices = list(choices)
        budget = 1.0 / target_speedup + 1e-12
        cost = self.base + sum(row[j] for row, j in zip(self.delta, choices, strict=True))
        if rises is not None:
            return self._repair_by_rise(choices, cost, budget, rises)
        count = len(choices)
        while cost > budget:
            moved = False
            for turn in range(count):
                i = (start + turn) % count
                row, current = self.delta[i], self.delta[i][choices[i]]
                cheaper = [j for j in range(len(row)) if row[j] < current - 1e-15]
                if not cheaper:
                    continue
                j = max(cheaper, key=row.__getitem__)  # the next notch: the dearest of the cheaper options
                cost += row[j] - current
                choices[i] = j
                moved = True
                if cost <= budget:
                    return choices
            if not moved:
                return None
        return choices

    def _repair_by_rise(self, choices: list[int], cost: float, budget: float,
                        rises: Sequence[Sequence[float]]) -> list[int] | None:
        while cost > budget:
            best, best_key = None, (-math.inf, 0.0)
            for i, (row, rise) in enumerate(zip(self.delta, rises, strict=True)):
                current = choices[i]
                for j, option_cost in enumerate(row):
                    saving = row[current] - option_cost
                    if saving <= 1e-15:
                        continue
                    extra = rise[j] - rise[current]
                    key = (math.inf if extra <= 0 else saving / extra, saving)  # ties: the larger saving
                    if key > best_key:
                        best, best_key = (i, j), key
            if best is None:
                return None
            i, j = best
            cost += self.delta[i][j] - self.delta[i][choices[i]]
            choices[i] = j
        return choices


def pareto_options(space: SearchSpace, costs: OptionCosts, rises: Sequence[Sequence[float]]) -> SearchSpace:
    """``space`` without the options another option of the same target beats on both counts: no dearer by
    ``costs`` and with no larger estimated WER rise (``rises``, :func:`option_rises`), better in one (improvement,
    ``search.space.pareto``; ties keep the first). ``full`` always stays. On this project's Xeon unstructured
    pruning of an encoder layer runs slower than the dense layer (RESULTS.md "Latency model"), so such options
    only cost a search decodes."""
    rows = []
    for row, delta, rise in zip(space.options, costs.delta, rises, strict=True):
        kept = []
        for j, option in enumerate(row):
            dominated = any((delta[k] <= delta[j] and rise[k] <= rise[j]) and (delta[k] < delta[j] or rise[k] < rise[j])
                            for k in range(len(row)))
            if option == FULL or not dominated:
                kept.append(option)
        rows.append(kept)
    return SearchSpace(list(space.names), rows, ragged=True)


def option_rises(space: SearchSpace, rank_table: dict | None, sparsity_table: dict | None) -> list[list[float]]:
    """Per target and option the WER rise (points) the single-target sensitivity tables estimate for it alone:
    0 for ``full``, the rank table's at a rank (:func:`rank_delta`), the sparsity table's at a sparsity
    (:func:`sparsity_delta`, measured unstructured: a block pattern is taken as costing the same), their sum for a
    rank with pruned factors. The tables measure single options, not schemes: an ordering, not a prediction."""
    out = []
    for name, row in zip(space.names, space.options, strict=True):
        rises = []
        for option in row:
            setting = normalize(option)
            if setting == FULL:
                rises.append(0.0)
                continue
            rise = rank_delta(rank_table, name, int(setting["rank"])) if "rank" in setting else 0.0
            if "sparsity" in setting:
                rise += sparsity_delta(sparsity_table, name, float(setting["sparsity"]))
            rises.append(rise)
        out.append(rises)
    return out


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


def _fits(shape: tuple[int, int], pattern: str) -> bool:
    """Whether ``pattern`` (``unstructured`` or ``"RxC"``) tiles an ``m x n`` matrix."""
    if pattern == "unstructured":
        return True
    rows, _, cols = pattern.partition("x")
    return shape[0] % int(rows) == 0 and shape[1] % int(cols) == 0


def sparsity_delta(table: dict | None, name: str, sparsity: float) -> float:
    """The WER rise of pruning ``name`` alone to ``sparsity`` in the sparsity-sensitivity ``table`` (its nearest
    measured sparsity at or above it, else its highest); 0 without a table or a row of the target."""
    if table is None:
        return 0.0
    rows = sorted((float(r["sparsity"]), float(r["delta"])) for r in table["rows"] if r["target"] == name)
    if not rows:
        return 0.0
    at_or_above = [delta for s, delta in rows if s >= sparsity - 1e-9]
    return at_or_above[0] if at_or_above else rows[-1][1]


def rank_delta(table: dict | None, name: str, rank: int) -> float:
    """The WER rise of factorizing ``name`` alone at ``rank`` in the rank-sensitivity ``table`` (its nearest measured
    rank at or below it, whose rise is at least as large; its smallest otherwise); 0 without a table or a row."""
    if table is None:
        return 0.0
    rows = sorted((int(r["rank"]), float(r["delta"])) for r in table["rows"] if r["target"] == name)
    if not rows:
        return 0.0
    at_or_below = [delta for k, delta in rows if k <= rank]
    return max(0.0, at_or_below[-1] if at_or_below else rows[0][1])


def joint_space(targets: Sequence[Target], rank_space: SearchSpace, sparsities: Sequence[float],
                patterns: Sequence[str], factor_sparsities: Sequence[float], factor_patterns: Sequence[str],
                rank_multiple: int = 4, sparsity_table: dict | None = None, max_delta: float = float("inf"),
                rank_table: dict | None = None) -> SearchSpace:
    """Per target, the options of every technique (improvement over the paper's rank-only space):

    * the ranks of ``rank_space``'s row (the sensitivity space: bounded by the rank-sensitivity table);
    * ``{"sparsity": s, "pattern": p}`` for ``s`` in ``sparsities`` and each of ``patterns`` that tiles the matrix,
      where pruning the target alone to ``s`` raised WER by at most ``max_delta`` (``sparsity_table``, the
      sparsity-sensitivity table of ``scripts/sensitivity.py kind=sparsity``; every sparsity without one);
    * ``{"rank": k, "sparsity": s, "pattern": p}``: each rank of the row rounded to a multiple of ``rank_multiple``
      (so blocks tile the factors ``U`` ``(m, k)`` and ``V`` ``(k, n)``), its factors pruned to each of
      ``factor_sparsities`` in each of ``factor_patterns`` that tiles both, where the rank's WER rise
      (``rank_table``, the rank-sensitivity table) and the sparsity's (``sparsity_table``) add up to at most
      ``max_delta``: no table measures the pair, and the rises of two small changes of one matrix roughly add;
    * ``full``.

    A target no rank pays for (MoChA's ``1 x 256`` energy vector) stays ``full`` only. Duplicate options are
    dropped (:func:`compress.options.option_key`)."""
    by_name = {t.name: t for t in targets}
    rows = []
    for name, rank_row in zip(rank_space.names, rank_space.options, strict=True):
        shape = by_name[name].shape
        ranks = [r for r in rank_row if r != FULL]
        row: list = [{"rank": int(r)} for r in ranks]
        if ranks:
            row += [{"sparsity": float(s), "pattern": p} for s in sparsities for p in patterns
                    if _fits(shape, p) and sparsity_delta(sparsity_table, name, float(s)) <= max_delta]
            for r in ranks:
                k = max(rank_multiple, round(int(r) / rank_multiple) * rank_multiple)
                if not pays(shape, k):
                    continue
                row += [{"rank": k, "sparsity": float(s), "pattern": p} for s in factor_sparsities
                        for p in factor_patterns if _fits((shape[0], k), p) and _fits((k, shape[1]), p)
                        and rank_delta(rank_table, name, k) + sparsity_delta(sparsity_table, name, float(s))
                        <= max_delta]
        row.append(FULL)
        unique: dict[str, object] = {}
        for option in row:
            unique.setdefault(option_key(option), normalize(option))
        rows.append(list(unique.values()))
    return SearchSpace(list(rank_space.names), rows, ragged=True)
