"""``search=greedy``: AIMET's greedy compression-ratio selection over the search space as a peer of the RL search.
A toy space (no speech) with a known per-target sensitivity checks the binary search on the score, the running-maximum
curves, the table's free curve points and resuming after a kill; the tiny corpus checks the whole stage."""

from __future__ import annotations

import json

import pytest
from asr_helpers import search_stage
from loop_helpers import run_loop, toy_problem

from compress.cost import FULL
from rl.explored import ExploredSet
from rl.loop import STATE_FILES, StaleSearchError, guard_state
from rl.searchers.greedy import CURVES_FILE, CurvesMismatchError, GreedySearcher, select
from rl.space import SearchSpace

SPACE = SearchSpace(["a", "b", "c"], [[1, 2, 4, FULL]] * 3)
BASELINE = 20.0
# the WER increase (points) of each target alone at each rank: a tolerant, b moderate, c sensitive
DELTA = {"a": {1: 0.5, 2: 0.2, 4: 0.1}, "b": {1: 3.0, 2: 1.0, 4: 0.3}, "c": {1: 10.0, 2: 6.0, 4: 2.0}}


def cost(rank) -> int:
    return 256 if rank == FULL else 32 * rank  # a 16 x 16 matrix: k (m + n) parameters at rank k


def estimate(ranks: dict) -> float:
    return 3 * 256 / sum(cost(ranks.get(name, FULL)) for name in SPACE.names)


class Killed(RuntimeError):
    pass


class Decoder:
    """The toy proxy WER: the baseline plus each compressed target's increase; counts decodes, ``kill_at``:
    raise on that decode."""

    def __init__(self, delta: dict | None = None, kill_at: int | None = None):
        self.delta, self.kill_at = delta or DELTA, kill_at
        self.decoded: list[dict] = []

    def __call__(self, ranks: dict) -> float:
        if self.kill_at is not None and len(self.decoded) + 1 == self.kill_at:
            raise Killed
        self.decoded.append(dict(ranks))
        return BASELINE + sum(self.delta[name][rank] for name, rank in ranks.items() if rank != FULL)


def greedy(out, decoder: Decoder, a_t: float, baseline: float = BASELINE, table=None, source: str = "auto",
           running_max: bool = True, candidates: int = 1) -> GreedySearcher:
    """The greedy searcher on the search loop: ``candidates`` search steps (``search.steps``)."""
    search = GreedySearcher(toy_problem(SPACE, estimate, a_t, baseline, out), table, source, running_max)
    run_loop(search, search.problem, decoder, candidates)
    return search


def explored(out) -> list[dict]:
    return list(ExploredSet(out / "explored-rank0.jsonl"))


def test_the_binary_search_picks_the_scheme_of_the_smallest_score_that_meets_a_t(tmp_path):
    # scores (WER increase) at which the scheme changes, and its estimate there:
    # 0.1 a=4 1.20x | 0.2 a=2 1.33x | 0.3 b=4 1.71x | 0.5 a=1 1.85x | 1.0 b=2 2.18x | 2.0 c=4 3.43x | 3.0 b=1 4.0x
    decoder = Decoder()
    search = greedy(tmp_path, decoder, 2.0)
    assert search.result["ranks"] == {"a": 1, "b": 2, "c": FULL}
    assert search.result["score"] == pytest.approx(1.0) and search.result["speedup"] == pytest.approx(768 / 352)
    assert search.result["wer"] == pytest.approx(BASELINE + 0.5 + 1.0)
    # 9 single-target curve points (the dense option is the baseline itself) and one decode of the result
    assert len(decoder.decoded) == 10 and decoder.decoded[-1] == search.result["ranks"]
    assert all(sum(r != FULL for r in ranks.values()) == 1 for ranks in decoder.decoded[:-1])
    points = explored(tmp_path)
    assert [p["ranks"] for p in points] == [search.result["ranks"]] and points[0]["policy"] == "greedy"
    assert search.summary() == {"decodes": 10, "decodes_this_run": 10, "curve_points": 9,
                                      "curve_points_from_table": 0, "greedy_score": search.result["score"]}


@pytest.mark.parametrize("a_t", [1.0, 1.1, 1.5, 1.8, 2.0, 2.5, 3.5, 4.0])
def test_the_chosen_score_is_the_smallest_one_that_meets_a_t(tmp_path, a_t):
    search = greedy(tmp_path, Decoder(), a_t)
    curves, scores = search.selection_curves(), search.scores()
    meeting = [s for s in scores if estimate(select(curves, s)) >= a_t]
    assert search.result["score"] == min(meeting)  # brute force over every score
    assert search.result["speedup"] >= a_t
    below = [s for s in scores if s < search.result["score"]]
    assert all(estimate(select(curves, s)) < a_t for s in below)


def test_a_t_beyond_the_space_is_refused_before_any_decode(tmp_path):
    decoder = Decoder()
    assert greedy(tmp_path / "edge", decoder, 8.0).result["ranks"] == {"a": 1, "b": 1, "c": 1}  # 768 / 96
    decoder = Decoder()
    with pytest.raises(ValueError, match="out of reach"):
        greedy(tmp_path / "beyond", decoder, 8.5)
    assert not decoder.decoded


def test_running_max_curves_stop_at_the_first_option_past_the_score(tmp_path):
    noisy = {**DELTA, "c": {1: 1.5, 2: 6.0, 4: 2.0}}  # c alone at rank 1 got lucky on the proxy
    kept = greedy(tmp_path / "running_max", Decoder(noisy), 3.4)
    raw = greedy(tmp_path / "raw", Decoder(noisy), 3.4, running_max=False)
    # the running maximum from dense down: c's curve 2.0, 6.0, 1.5 (rank 4, 2, 1) is selected as 2.0, 6.0, 6.0
    assert [d for _, d in kept.selection_curves()["c"]] == [6.0, 6.0, 2.0, 0.0]
    assert [d for _, d in raw.selection_curves()["c"]] == [1.5, 6.0, 2.0, 0.0]
    assert kept.result["ranks"]["c"] == 4 and kept.result["score"] == pytest.approx(2.0)
    assert raw.result["ranks"]["c"] == 1 and raw.result["score"] == pytest.approx(1.5)  # the dip is taken


def table_of(delta: dict, ranks=(1, 2, 4)) -> dict:
    return {"baseline_wer": 30.0, "rows": [{"target": name, "rank": rank, "energy": 0.5, "wer": 30.0 + d[rank],
                                             "delta": d[rank]} for name, d in delta.items() for rank in ranks]}


def test_curve_points_from_the_sensitivity_table_cost_no_decode(tmp_path):
    decoder = Decoder()
    search = greedy(tmp_path / "all", decoder, 2.0, table=table_of(DELTA))
    assert decoder.decoded == [{"a": 1, "b": 2, "c": FULL}]  # only the result
    assert search.summary()["curve_points_from_table"] == 9 and search.summary()["decodes"] == 1
    partial = Decoder()
    search = greedy(tmp_path / "partial", partial, 2.0, table=table_of(DELTA, ranks=(1,)))
    assert len(partial.decoded) == 6 + 1 and search.summary()["decodes"] == 7
    assert all(ranks[name] != 1 for ranks in partial.decoded[:-1] for name in ranks)  # rank 1 came from the table
    assert search.result["ranks"] == {"a": 1, "b": 2, "c": FULL}
    everything = Decoder()
    greedy(tmp_path / "decode", everything, 2.0, table=table_of(DELTA), source="decode")
    assert len(everything.decoded) == 10


def test_a_killed_search_resumes_without_decoding_again(tmp_path):
    whole = Decoder()
    greedy(tmp_path / "whole", whole, 2.0)
    killed = Decoder(kill_at=5)
    with pytest.raises(Killed):
        greedy(tmp_path / "killed", killed, 2.0)
    assert len(killed.decoded) == 4
    resumed = Decoder()
    search = greedy(tmp_path / "killed", resumed, 2.0)
    assert not [r for r in resumed.decoded if r in killed.decoded]  # nothing decoded twice
    assert killed.decoded + resumed.decoded == whole.decoded
    assert search.summary()["decodes"] == 10 and search.summary()["decodes_this_run"] == 6
    again = Decoder()
    assert greedy(tmp_path / "killed", again, 2.0).result == search.result and not again.decoded


def test_more_candidates_are_the_next_distinct_schemes_above_the_score(tmp_path):
    decoder = Decoder()
    greedy(tmp_path, decoder, 2.0, candidates=3)
    points = explored(tmp_path)
    assert [p["ranks"] for p in points] == [{"a": 1, "b": 2, "c": FULL}, {"a": 1, "b": 2, "c": 4},
                                           {"a": 1, "b": 1, "c": 4}]
    assert [p["step"] for p in points] == [0, 1, 2] and all(p["speedup"] >= 2.0 for p in points)


def guard_curves(out, baseline: float, on_stale: str) -> None:
    """The search loop's one stale-state guard with the greedy searcher's part, as run_search calls it."""
    search = GreedySearcher(toy_problem(SPACE, estimate, 2.0, baseline, out), None, "auto", True)
    guard_state(out, {"baseline_proxy_wer": baseline, "settings": search.signature()}, on_stale,
                (*STATE_FILES, *search.state_files()), search.stale_reason(out))


def test_curves_of_another_proxy_set_are_refused_or_set_aside(tmp_path):
    guard_curves(tmp_path, BASELINE, "error")
    greedy(tmp_path, Decoder(), 2.0)
    (tmp_path / "checkpoints" / "last.ckpt").unlink()  # the curves alone
    with pytest.raises(CurvesMismatchError, match="baseline proxy WER of 20.0000"):
        greedy(tmp_path, Decoder(), 2.0, baseline=21.0)
    guard_curves(tmp_path, BASELINE, "error")  # the same proxy set: resumed as it is
    with pytest.raises(StaleSearchError, match="on_stale=restart"):
        guard_curves(tmp_path, 21.0, "error")
    guard_curves(tmp_path, 21.0, "restart")
    assert not (tmp_path / CURVES_FILE).exists()
    assert len(list(tmp_path.glob(f"stale-*/{CURVES_FILE}"))) == 1
    (tmp_path / CURVES_FILE).write_text("{}")
    with pytest.raises(StaleSearchError, match="not a greedy search's curves file"):
        guard_curves(tmp_path, 21.0, "error")


# -- the stage on the tiny corpus ---------------------------------------------------------------------------
def test_greedy_search_reports_chooses_on_dev_and_resumes(tiny_corpus, tmp_path_factory):
    search, out = search_stage(tiny_corpus, tmp_path_factory, "search_greedy", "search=greedy", options=3)
    first = search("search.steps=2")
    curves = json.loads((out / CURVES_FILE).read_text())
    report = search("search.steps=2")
    summary = first["summary"]
    decoded = sum(len(ranks) for ranks in curves["points"].values())
    assert decoded == summary["curve_points"] > 0  # no table: every point but dense is decoded
    points = [json.loads(line) for line in (out / "explored-rank0.jsonl").open()]
    assert 1 <= len(points) <= 2 and all(p["policy"] == "greedy" and p["speedup"] >= 1.5 for p in points)
    assert summary["decodes"] == summary["decodes_this_run"] == decoded + len(points)
    # run again: nothing decoded, the same result
    assert report["summary"]["decodes_this_run"] == 0 and report["summary"]["decodes"] == summary["decodes"]
    assert json.loads((out / CURVES_FILE).read_text())["points"] == curves["points"]
    assert report["summary"]["greedy_score"] == summary["greedy_score"] and report["summary"]["steps"] == 2
    rows = [r for r in report["rows"] if r["model"].startswith("greedy #")]
    assert rows and [r["selected"] for r in rows].count("on dev") == 1
    chosen = json.loads((out / "best_scheme.json").read_text())
    assert chosen["provenance"] == "greedy" and chosen["meta"]["selected_on"] == "dev"
    assert chosen["metrics"]["wer/dev"] == min(r["wer/dev"] for r in rows)
    assert (out / "explored.png").is_file() and "| baseline |" in (out / "report.md").read_text()
