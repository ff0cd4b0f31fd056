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
   ``monotonic`` (the default, as AIMET's ``use_monotonic_fit``) a target's curve is first made
   non-decreasing in compression (its running maximum from dense down), so a target stops at the first
   option that costs more than ``s`` and a lucky low ``delta`` below it is never taken; without it, each
   option is judged by its own ``delta``.
3. **Binary search on the score.** Either way the scheme only grows more compressed as ``s`` grows, so the
   estimated speed-up is non-decreasing in ``s`` and changes only at the curves' values: a bisection over
   those values finds the smallest score whose scheme meets ``a_t`` (AIMET bisects a continuous score until
   its cost ratio is within a tolerance of the target; over a finite space the smallest such score is exact).
4. **Result.** The scheme of that score is decoded once on the proxy and written into the explored set,
   where the stage's report takes it like any other searcher's; ``candidates > 1`` also decodes the next
   distinct schemes of higher scores (all of them meet ``a_t``), so the report can choose on dev among them.

State: the decoded curve points (``greedy_curves.json``, written atomically after every decode, AIMET's
pickled eval dictionary) and the explored set. Running the search again decodes nothing it has decoded:
a killed search resumes at the next curve point. A point depends only on the checkpoint and the proxy set,
so it is keyed by target and rank (another space reuses what it shares); the file records the baseline's
proxy WER, and one made on another proxy set or checkpoint is refused (:class:`CurvesMismatchError`).

The module knows nothing of speech: ``estimate(ranks) -> a`` and ``evaluate(ranks) -> w`` are callables.
"""

from __future__ import annotations

import bisect
import json
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from common.atomic import write_json_atomic
from compress.cost import FULL
from rl.explored import ExploredSet
from rl.rewards import wer_reward
from rl.space import SearchSpace, SearchSpaceError

log = logging.getLogger(__name__)

CURVES_FILE = "greedy_curves.json"
FORMAT = "shrinkml-greedy-curves/1"
POLICY = "greedy"
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


class GreedySearch:
    """AIMET's greedy selection over ``space`` against ``a_t`` (see the module docstring).

    Args:
        space, estimate, evaluate, baseline_wer, target_speedup, reward, explored: as :class:`SearchModule`'s
            (``reward`` only scores the result in the logged metrics).
        curves_path: the decoded curve points (``greedy_curves.json`` in the output directory).
        table: the sensitivity table (``compress.sensitivity``), or None.
        source: ``auto`` (table points where the table has the option's rank) or ``decode`` (decode them all).
        monotonic: make every curve non-decreasing in compression before selecting.
        candidates: schemes decoded for the report: the greedy choice and the next distinct ones above it.
        on_decode: called after every decode with ``(metrics, decodes so far)`` (logging, the wall clock).
    """

    def __init__(self, space: SearchSpace, estimate: Callable[[dict], float], evaluate: Callable[[dict], float],
                 baseline_wer: float, target_speedup: float, reward: str, explored: ExploredSet,
                 curves_path: str | Path, table: Mapping | None = None, source: str = "auto",
                 monotonic: bool = True, candidates: int = 1,
                 on_decode: Callable[[dict, int], None] | None = None):
        if source not in SOURCES:
            raise ValueError(f"search.curves must be one of {SOURCES}, got {source!r}")
        if candidates < 1:
            raise ValueError(f"search.steps (the greedy search's decoded candidates) must be >= 1, got {candidates}")
        if target_speedup < 1.0:
            raise ValueError(f"search.target_speedup={target_speedup} is below 1; choose a_t >= 1")
        self.space, self.estimate, self.evaluate = space, estimate, evaluate
        self.baseline_wer, self.target_speedup = baseline_wer, target_speedup
        self.reward_fn = wer_reward(reward)
        self.explored, self.curves_path = explored, Path(curves_path)
        self.table = table_deltas(table) if source == "auto" else {}
        self.monotonic, self.candidates, self.on_decode = monotonic, candidates, on_decode
        self.points = read_points(self.curves_path, baseline_wer)
        self.counts = {"samples": 0, "accepted": 0, "evaluated": 0}  # what the stage's report reads
        self.step_seconds: list[float] = []  # every decode of this process
        self.evaluated_step_seconds: list[float] = []
        self.curves: dict[str, list[dict]] = {}  # target -> [{rank, wer, delta, source}], most compressed first
        self.result: dict | None = None

    # -- 1. the evaluation curves ------------------------------------------------------------------
    def single(self, name: str, rank: int | str) -> dict[str, int | str]:
        """The scheme with only ``name`` compressed, at ``rank``."""
        return {other: (rank if other == name else FULL) for other in self.space.names}

    def _decode(self, ranks: dict, metrics: dict) -> float:
        started = time.perf_counter()
        wer = float(self.evaluate(ranks))
        seconds = time.perf_counter() - started
        self.step_seconds.append(seconds)
        self.evaluated_step_seconds.append(seconds)
        self.counts["evaluated"] += 1
        if self.on_decode is not None:
            self.on_decode({**metrics, "search/wer": wer, "search/step_seconds": seconds}, self.decodes)
        return wer

    def _save(self) -> None:
        write_json_atomic(self.curves_path, {"format": FORMAT, "baseline_wer": self.baseline_wer,
                                             "points": self.points, "curves": self.curves})

    def build_curves(self) -> dict[str, list[dict]]:
        """Every target's curve, decoding the points neither the table nor an earlier run has."""
        total = sum(len(distinct_options(row)) - (FULL in row) for row in self.space.options)
        done = 0
        for name, row in zip(self.space.names, self.space.options, strict=True):
            curve = []
            for rank in reversed(distinct_options(row)):  # from dense down, as AIMET's candidates
                if rank == FULL:
                    curve.append({"rank": rank, "wer": self.baseline_wer, "delta": 0.0, "source": "dense"})
                    continue
                done += 1
                stored = self.points.get(name, {}).get(str(rank))
                if rank in self.table.get(name, {}):
                    delta, wer, source = self.table[name][rank], None, "table"
                elif stored is not None:
                    wer, source = stored, "decoded"
                else:
                    ranks = self.single(name, rank)
                    log.info("greedy curves: %d/%d: %s at rank %s", done, total, name, rank)
                    wer = self._decode(ranks, {"search/speedup": float(self.estimate(ranks)),
                                               "search/explored": float(len(self.explored))})
                    source = "decoded"
                    self.points.setdefault(name, {})[str(rank)] = wer
                    self._save()  # a kill from here on loses nothing
                if wer is not None:
                    delta = wer - self.baseline_wer
                curve.append({"rank": rank, "wer": wer, "delta": delta, "source": source})
            self.curves[name] = curve[::-1]
        return self.curves

    # -- 2, 3. selection and the binary search on the score ----------------------------------------
    def selection_curves(self) -> dict[str, list[tuple[int | str, float]]]:
        """``target -> [(rank, delta)]`` most compressed first, each made monotonic when asked."""
        out = {}
        for name, curve in self.curves.items():
            deltas = [p["delta"] for p in curve]
            out[name] = list(zip([p["rank"] for p in curve], envelope(deltas) if self.monotonic else deltas,
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
                meets[k] = self.estimate(select(curves, scores[k])) >= self.target_speedup
            return meets[k]

        k = bisect.bisect_left(range(len(scores)), True, key=feasible)
        if k == len(scores):
            self.search_failed()
        return scores[k], select(curves, scores[k])

    def search_failed(self) -> None:
        raise SearchSpaceError(f"search.target_speedup={self.target_speedup} is out of reach of the greedy "
                               "selection: every target at its most compressed option falls short; lower a_t or "
                               "widen search.space")

    # -- 4. the result -----------------------------------------------------------------------------
    def run(self) -> dict:
        """Build the curves, select, decode the candidates; returns :meth:`study_summary`."""
        if self.estimate(self.space.most_compressed()) < self.target_speedup:  # the largest score's scheme
            self.search_failed()
        self.build_curves()
        score, _ = self.search()
        curves, scores = self.selection_curves(), self.scores()
        schemes: list[tuple[float, dict]] = []
        for s in scores[scores.index(score):]:
            scheme = select(curves, s)
            if all(scheme != seen for _, seen in schemes):
                schemes.append((s, scheme))
            if len(schemes) == self.candidates:
                break
        self._save()
        for step, (s, ranks) in enumerate(schemes):
            speedup = float(self.estimate(ranks))
            self.counts["samples"] += 1
            self.counts["accepted"] += speedup >= self.target_speedup
            point = self.explored.get(ranks)
            if point is None:
                wer = self._decode(ranks, {"search/speedup": speedup, "search/explored": float(len(self.explored))})
                choices = [row.index(ranks[name]) for name, row in zip(self.space.names, self.space.options,
                                                                       strict=True)]
                point = {"step": step, "rank": 0, "ranks": ranks, "choices": choices, "speedup": speedup, "wer": wer,
                         "policy": POLICY, "score": s, "time": time.time()}
                self.explored.add(point)
            if step == 0:
                self.result = {"score": s, "ranks": ranks, "speedup": speedup, "wer": float(point["wer"]),
                               "reward": self.reward_fn(float(point["wer"]), self.baseline_wer)}
                log.info("greedy selection: score %.3f (WER increase, points) -> estimated %.2fx, proxy WER %.2f",
                         s, speedup, point["wer"])
        return self.study_summary()

    @property
    def decodes(self) -> int:
        """Decodes this search has cost over all its runs: the decoded curve points its space uses and the
        candidates in the explored set."""
        used = sum(1 for name, row in zip(self.space.names, self.space.options, strict=True)
                   for rank in distinct_options(row)
                   if rank != FULL and rank not in self.table.get(name, {}) and str(rank) in self.points.get(name, {}))
        return used + sum(1 for p in self.explored if p.get("policy") == POLICY)

    def study_summary(self) -> dict:
        """The search report's counts (the stage reads this method of every searcher that has one)."""
        curve_points = [p for curve in self.curves.values() for p in curve if p["source"] != "dense"]
        return {"decodes": self.decodes, "decodes_this_run": self.counts["evaluated"],
                "curve_points": len(curve_points),
                "curve_points_from_table": sum(p["source"] == "table" for p in curve_points),
                "greedy_score": None if self.result is None else self.result["score"]}
