"""``search=greedy``: the greedy compression-ratio selection of Qualcomm AIMET (``GreedyCompRatioSelectAlgo``),
re-implemented over the RL search's space, proxy and cost model, as a peer searcher.

1. **Evaluation curves.** For every target and every distinct option of its row in the
   :class:`SearchSpace`, the proxy WER of the model with only that target compressed to that option (every
   other target dense), kept as its WER increase ``delta`` over the baseline (points). ``full`` is the
   baseline itself (``delta = 0``, no decode). An option whose rank is a row of the sensitivity table
   (``compress.sensitivity``: the same single-target measurement) takes the table's ``delta`` and costs no
   decode; every other option costs one decode of the proxy set.
2. **Selection at a common score.** For a score ``s`` (a WER increase, points; AIMET's eval score with the
   sign turned), every target takes its most compressed option whose ``delta`` stays within ``s``. With
   ``running_max`` (the default) a target's curve is first replaced by its running maximum from dense down,
   so a target stops at the first option that costs more than ``s`` and a lucky low ``delta`` below it is never
   taken; without it, each option is judged by its own ``delta``. This is not AIMET's ``use_monotonic_fit``
   (which fits a monotonic function to the curve): a running maximum only ever raises a point.
3. **Binary search on the score.** Either way the scheme only grows more compressed as ``s`` grows, so the
   estimated speed-up is non-decreasing in ``s`` and changes only at the curves' values: a bisection over
   those values finds the smallest score whose scheme meets ``a_t`` (AIMET bisects a continuous score until
   its cost ratio is within a tolerance of the target; over a finite space the smallest such score is exact).
4. **Result.** The scheme of that score is search step 0, decoded once on the proxy and written into the
   explored set, where the stage's report takes it like any other searcher's; ``search.steps > 1`` also decodes
   the next distinct schemes of higher scores (all of them meet ``a_t``), so the report can choose on dev among
   them.

As a :class:`rl.searcher.Searcher`: :meth:`GreedySearcher.ask` first proposes the curve points to decode
(probes: no search step, not in the explored set), then the schemes of step 0, 1, ... (None when there are no
more).

State: the decoded curve points (``greedy_curves.json``, written atomically after every decode, AIMET's
pickled eval dictionary) and the explored set. Running the search again decodes nothing it has decoded:
a killed search resumes at the next curve point. A point depends only on the checkpoint and the proxy set,
so it is keyed by target and rank (another space reuses what it shares); the file records the baseline's
proxy WER, and one made on another proxy set or checkpoint is refused (:class:`CurvesMismatchError`).

The module knows nothing of speech: ``estimate(ranks) -> a`` is a callable; the loop decodes.
"""

from __future__ import annotations

import bisect
import json
import logging
from collections.abc import Mapping
from pathlib import Path

from common.atomic import write_json_atomic
from compress.cost import FULL
from compress.sensitivity import load_table
from rl.searcher import Outcome, Proposal, Searcher, SearchProblem
from rl.space import SearchSpaceError

log = logging.getLogger(__name__)

CURVES_FILE = "greedy_curves.json"
FORMAT = "shrinkml-greedy-curves/1"
SOURCES = ("auto", "decode")  # auto: the sensitivity table where it has the option's rank; decode: never the table


class CurvesMismatchError(ValueError):
    """A curves file made on another proxy set or checkpoint (another baseline WER), or not a curves file."""


def compression_order(rank: int | str) -> float:
    """Sort key of an option: smaller is more compressed (``full`` last)."""
    return float("inf") if rank == FULL else float(rank)


def distinct_options(row: list[int | str]) -> list[int | str]:
    """The distinct options of a row, most compressed first."""
    return sorted(set(row), key=compression_order)


def table_deltas(table: Mapping | None) -> dict[str, dict[int, float]]:
    """``target -> rank -> delta`` (WER increase, points) of a sensitivity table (empty without one)."""
    found: dict[str, dict[int, float]] = {}
    for row in (table or {}).get("rows", []):
        found.setdefault(row["target"], {})[int(row["rank"])] = float(row["delta"])
    return found


def read_points(path: str | Path, baseline_wer: float) -> dict[str, dict[str, float]]:
    """The decoded curve points of ``path`` (``target -> str(rank) -> WER``; empty when absent).

    :class:`CurvesMismatchError` when the file is not a curves file or was made against another baseline
    proxy WER (another proxy set, decoding setup or checkpoint)."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {FORMAT!r}")
        stored = float(data["baseline_wer"])
        points = {str(t): {str(r): float(w) for r, w in ranks.items()} for t, ranks in data["points"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise CurvesMismatchError(f"{path} is not a greedy search's curves file ({err}); move it away or delete "
                                  "it to decode the curves afresh") from err
    if abs(stored - baseline_wer) > 1e-6:
        raise CurvesMismatchError(f"{path} was decoded against a baseline proxy WER of {stored:.4f}, this proxy set "
                                  f"gives {baseline_wer:.4f} (another proxy set, decoding setup or checkpoint)")
    return points


def envelope(deltas: list[float]) -> list[float]:
    """``deltas`` of options ordered most compressed first, made non-decreasing in compression: each option's
    value is the largest ``delta`` of it and every less compressed option."""
    out, worst = [0.0] * len(deltas), float("-inf")
    for j in range(len(deltas) - 1, -1, -1):
        worst = max(worst, deltas[j])
        out[j] = worst
    return out


def select(curves: Mapping[str, list[tuple[int | str, float]]], score: float) -> dict[str, int | str]:
    """Each target's most compressed option whose (selection) ``delta`` is within ``score``; a target none of
    whose options is within it stays at its least compressed option (``full``, or the row's largest rank)."""
    scheme = {}
    for name, curve in curves.items():  # most compressed first
        fine = [rank for rank, delta in curve if delta <= score]
        scheme[name] = fine[0] if fine else curve[-1][0]
    return scheme


class GreedySearcher(Searcher):
    """AIMET's greedy selection over ``problem.space`` against ``a_t`` (see the module docstring).

    Args:
        problem: the space, estimate, target, baseline proxy WER and state directory (``greedy_curves.json``).
        table: the sensitivity table (``compress.sensitivity``): a path (used when the file exists), a table, or
            None.
        curves: ``auto`` (table points where the table has the option's rank) or ``decode`` (decode them all).
        running_max: replace every curve by its running maximum from dense down before selecting.
    """

    policy = provenance = "greedy"

    def __init__(self, problem: SearchProblem, table: str | Mapping | None, curves: str, running_max: bool):
        if curves not in SOURCES:
            raise ValueError(f"search.searcher.curves must be one of {SOURCES}, got {curves!r}")
        if problem.space.ragged:
            raise ValueError("search=greedy walks rank curves: it runs on rank spaces (search.space.kind=sensitivity "
                             "or uniform), not on the joint space; use search=optuna_tpe or aggressive there")
        if problem.workers != 1:  # its curve points are probes, which the loop does not claim
            raise ValueError(f"search=greedy runs as one worker (search.workers={problem.workers}); its decodes are "
                             "few and fixed: run it with search.workers=1")
        if isinstance(table, str | Path):
            table = load_table(table) if Path(table).is_file() else None
        self.problem, self.running_max = problem, running_max
        self.table = table_deltas(table) if curves == "auto" else {}
        self.curves_path = Path(problem.state_dir) / CURVES_FILE
        self.points: dict[str, dict[str, float]] | None = None  # read when first needed (after the stale guard)
        self.curves: dict[str, list[dict]] = {}  # target -> [{rank, wer, delta, source}], most compressed first
        self.schemes: list[tuple[float, dict]] | None = None  # the candidates, step by step
        self.result: dict | None = None
        self.candidate_decodes = 0
        self.decodes_this_run = 0
        self._probe: tuple[str, int] | None = None

    # -- 1. the evaluation curves ------------------------------------------------------------------
    def single(self, name: str, rank: int | str) -> dict[str, int | str]:
        """The scheme with only ``name`` compressed, at ``rank``."""
        return {other: (rank if other == name else FULL) for other in self.problem.space.names}

    def _save(self) -> None:
        write_json_atomic(self.curves_path, {"format": FORMAT, "baseline_wer": self.problem.baseline_wer,
                                             "points": self.points, "curves": self.curves})

    def _load(self) -> None:
        if self.points is None:
            self.points = read_points(self.curves_path, self.problem.baseline_wer)

    def missing_point(self) -> tuple[str, int] | None:
        """The next curve point neither the table nor an earlier run has (from dense down, as AIMET's)."""
        for name, row in zip(self.problem.space.names, self.problem.space.options, strict=True):
            for rank in reversed(distinct_options(row)):
                if rank != FULL and rank not in self.table.get(name, {}) and str(rank) not in self.points.get(name, {}):
                    return name, rank
        return None

    def build_curves(self) -> dict[str, list[dict]]:
        """Every target's curve from the table and the decoded points (all of them present)."""
        w_b = self.problem.baseline_wer
        for name, row in zip(self.problem.space.names, self.problem.space.options, strict=True):
            curve = []
            for rank in reversed(distinct_options(row)):
                if rank == FULL:
                    curve.append({"rank": rank, "wer": w_b, "delta": 0.0, "source": "dense"})
                elif rank in self.table.get(name, {}):
                    curve.append({"rank": rank, "wer": None, "delta": self.table[name][rank], "source": "table"})
                else:
                    wer = self.points[name][str(rank)]
                    curve.append({"rank": rank, "wer": wer, "delta": wer - w_b, "source": "decoded"})
            self.curves[name] = curve[::-1]
        return self.curves

    # -- 2, 3. selection and the binary search on the score ----------------------------------------
    def selection_curves(self) -> dict[str, list[tuple[int | str, float]]]:
        """``target -> [(rank, delta)]`` most compressed first, each its running maximum when asked."""
        out = {}
        for name, curve in self.curves.items():
            deltas = [p["delta"] for p in curve]
            out[name] = list(zip([p["rank"] for p in curve], envelope(deltas) if self.running_max else deltas,
                                 strict=True))
        return out

    def scores(self) -> list[float]:
        """The distinct curve values, ascending: the only scores at which the selected scheme changes."""
        return sorted({delta for curve in self.selection_curves().values() for _, delta in curve})

    def search(self) -> tuple[float, dict[str, int | str]]:
        """The smallest score whose scheme meets ``a_t``, and that scheme (bisection over :meth:`scores`)."""
        curves, scores = self.selection_curves(), self.scores()
        meets = [None] * len(scores)

        def feasible(k: int) -> bool:
            if meets[k] is None:
                meets[k] = self.problem.estimate(select(curves, scores[k])) >= self.problem.target_speedup
            return meets[k]

        k = bisect.bisect_left(range(len(scores)), True, key=feasible)
        if k == len(scores):
            self.search_failed()
        return scores[k], select(curves, scores[k])

    def search_failed(self) -> None:
        raise SearchSpaceError(f"search.target_speedup={self.problem.target_speedup} is out of reach of the greedy "
                               "selection: every target at its most compressed option falls short; lower a_t or "
                               "widen search.space")

    def candidates(self) -> list[tuple[float, dict]]:
        """The schemes of steps 0, 1, ...: the greedy choice, then the next distinct ones of higher scores."""
        score, _ = self.search()
        curves, scores = self.selection_curves(), self.scores()
        schemes: list[tuple[float, dict]] = []
        for s in scores[scores.index(score):]:
            scheme = select(curves, s)
            if all(scheme != seen for _, seen in schemes):
                schemes.append((s, scheme))
        return schemes

    # -- 4. the protocol ---------------------------------------------------------------------------
    def ask(self, step: int) -> Proposal | None:
        p = self.problem
        self._load()
        if self.schemes is None:
            if p.estimate(p.space.most_compressed()) < p.target_speedup:  # the largest score's scheme
                self.search_failed()
            if (missing := self.missing_point()) is not None:
                self._probe = missing
                ranks = self.single(*missing)
                log.info("greedy curves: %s at rank %s", *missing)
                return Proposal(ranks, self.choices(ranks), float(p.estimate(ranks)), probe=True)
            self.build_curves()
            self.schemes = self.candidates()
            self._save()
        if step >= len(self.schemes):
            return None
        score, ranks = self.schemes[step]
        return Proposal(ranks, self.choices(ranks), float(p.estimate(ranks)), point={"step": step, "score": score})

    def choices(self, ranks: dict) -> list[int]:
        return [row.index(ranks[name]) for name, row in zip(self.problem.space.names, self.problem.space.options,
                                                             strict=True)]

    def tell(self, outcome: Outcome) -> dict:
        self.decodes_this_run += outcome.decoded
        if outcome.proposal.probe:
            name, rank = self._probe
            self.points.setdefault(name, {})[str(rank)] = outcome.wer
            self._save()  # a kill from here on loses nothing
            return {}
        self.candidate_decodes += outcome.decoded
        if outcome.proposal.point["step"] == 0:
            score = outcome.proposal.point["score"]
            self.result = {"score": score, "ranks": outcome.proposal.ranks, "speedup": outcome.proposal.speedup,
                           "wer": outcome.wer, "reward": outcome.reward}
            log.info("greedy selection: score %.3f (WER increase, points) -> estimated %.2fx, proxy WER %.2f",
                     score, outcome.proposal.speedup, outcome.wer)
        return {}

    def state_dict(self) -> dict:
        return {"result": self.result, "candidate_decodes": self.candidate_decodes}  # the points: their own file

    def load_state_dict(self, state: dict) -> None:
        self.result, self.candidate_decodes = state["result"], state["candidate_decodes"]

    def stale_reason(self, state_dir: Path) -> str | None:
        try:
            read_points(Path(state_dir) / CURVES_FILE, self.problem.baseline_wer)
        except CurvesMismatchError as err:
            return str(err)
        return None

    def state_files(self) -> tuple[str, ...]:
        return (CURVES_FILE,)

    @property
    def decodes(self) -> int:
        """Decodes this search has cost over all its runs: the decoded curve points its space uses and the
        candidates it decoded."""
        self._load()
        used = sum(1 for name, row in zip(self.problem.space.names, self.problem.space.options, strict=True)
                   for rank in distinct_options(row)
                   if rank != FULL and rank not in self.table.get(name, {}) and str(rank) in self.points.get(name, {}))
        return used + self.candidate_decodes

    def summary(self) -> dict:
        curve_points = [p for curve in self.curves.values() for p in curve if p["source"] != "dense"]
        return {"decodes": self.decodes, "decodes_this_run": self.decodes_this_run,
                "curve_points": len(curve_points),
                "curve_points_from_table": sum(p["source"] == "table" for p in curve_points),
                "greedy_score": None if self.result is None else self.result["score"]}
