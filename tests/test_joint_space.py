"""The joint search space (a rank, a sparsity or both per target): its options, the separable option costs that
mask and repair proposals, and the searchers over ragged rows (Optuna TPE with repair, the RL controller, random)."""

from __future__ import annotations

import json
import random

import pytest
import torch
from asr_helpers import search_stage
from loop_helpers import random_searcher, rl_searcher, run_loop, toy_problem
from torch import nn

from compress.cost import FULL
from compress.options import option_key
from compress.scheme import Scheme, split_settings
from compress.svd import SvdCache
from compress.targets import discover_targets
from rl.searchers.greedy import GreedySearcher
from rl.searchers.optuna_tpe import OptunaTpeSearcher
from rl.space import SearchSpace, SearchSpaceError, joint_space, uniform_space

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 48), nn.Linear(48, 32), nn.Linear(32, 1))


def space_of(sparsity_table=None, max_delta=float("inf")) -> tuple[list, SearchSpace]:
    targets = discover_targets(model())
    ranks = uniform_space(targets, options=4, min_fraction=0.2)
    return targets, joint_space(targets, ranks, [0.5, 0.8], ["unstructured", "4x1"], [0.5], ["4x1"], 4,
                                sparsity_table, max_delta)


def params_estimate(targets):
    def estimate(settings: dict) -> float:
        ranks, options = split_settings(settings)
        return Scheme(ranks, options=options).estimate(targets, "params")

    return estimate


def test_joint_rows_hold_every_technique():
    targets, space = space_of()
    assert space.ragged and space.names == [t.name for t in targets]
    first = [option_key(o) for o in space.options[0]]
    assert "s0.5" in first and "s0.8@4x1" in first and first[-1] == FULL
    assert any(o.startswith("r") and "+s0.5@4x1" in o for o in first)
    for option in space.options[0]:  # ranks of pruned factors are multiples of 4: blocks tile U and V
        if isinstance(option, dict) and "sparsity" in option and "rank" in option:
            assert option["rank"] % 4 == 0
    assert len(set(first)) == len(first)
    assert space.options[2] == [FULL]  # 1 x 32: no rank pays, left dense
    assert space.shape == (3, max(space.widths)) and space.widths[2] == 1
    Scheme.build(targets, space.ranks([len(row) - 2 if len(row) > 1 else 0 for row in space.options]), "t")


def test_sparsity_table_bounds_the_sparsities():
    table = {"rows": [{"target": "0", "sparsity": 0.5, "delta": 1.0}, {"target": "0", "sparsity": 0.8, "delta": 9.0}]}
    _, space = space_of(table, max_delta=2.0)
    keys = [option_key(o) for o in space.options[0]]
    assert "s0.5" in keys and "s0.8" not in keys and "s0.8@4x1" not in keys
    assert "s0.8" in [option_key(o) for o in space.options[1]]  # no rows of its own: every sparsity


def test_option_costs_are_exact_and_mask_and_repair():
    targets, space = space_of()
    estimate = params_estimate(targets)
    costs = space.costs(estimate)
    rng = random.Random(0)
    for _ in range(20):
        choices = [rng.randrange(w) for w in space.widths]
        assert costs.speedup(choices) == pytest.approx(estimate(space.ranks(choices)))
    best = space.check_reach(estimate, 1.5)
    assert best == pytest.approx(estimate(space.most_compressed(estimate)))
    with pytest.raises(SearchSpaceError, match="out of reach"):
        space.check_reach(estimate, best * 1.01)
    a_t = 2.0
    mask = space.completable(0, [], estimate, a_t)
    assert len(mask) == space.shape[1] and not any(mask[space.widths[0]:])
    dense = [len(row) - 1 for row in space.options]  # every target full
    repaired = costs.repair(dense, a_t)
    assert repaired is not None and costs.speedup(repaired) >= a_t
    assert costs.repair(dense, best * 1.01) is None


def ragged_problem(tmp_path, a_t: float = 2.0):
    targets, space = space_of()
    estimate = params_estimate(targets)

    def wer(settings: dict) -> float:
        assert estimate(settings) >= a_t, "an infeasible scheme was decoded"
        return 10.0 + sum(0.0 if s == FULL else 1.0 + 2.0 * float(s.get("sparsity", 0)) for s in settings.values())

    return toy_problem(space, estimate, a_t, 10.0, tmp_path), wer


def test_tpe_with_repair_decodes_every_step_and_resumes(tmp_path):
    problem, wer = ragged_problem(tmp_path)
    settings = dict(storage=None, n_startup_trials=3, n_ei_candidates=8, multivariate=True, feasible_draws=100)
    searcher = OptunaTpeSearcher(problem, **settings, repair=True)
    run_loop(searcher, problem, wer, steps=6)
    points = [json.loads(line) for line in (tmp_path / "explored-rank0.jsonl").open()]
    assert points and all(problem.estimate(p["ranks"]) >= problem.target_speedup for p in points)
    trials = searcher.study.get_trials()
    assert len(trials) <= 2 * 6  # a sampled trial and at most one repair per step: flat cost
    assert any(t.user_attrs.get("repaired") for t in trials) or all(
        t.user_attrs["speedup"] >= problem.target_speedup for t in trials)
    again = OptunaTpeSearcher(problem, **settings, repair=True)
    run_loop(again, problem, wer, steps=8)
    assert len(again.study.get_trials()) <= 2 * 8
    assert OptunaTpeSearcher(problem, **settings).signature()["repair"] is True  # null: on in a joint space


def test_rl_and_random_stay_inside_ragged_rows(tmp_path):
    problem, wer = ragged_problem(tmp_path / "rl")
    searcher = rl_searcher(problem, feasibility="mask")
    run_loop(searcher, problem, wer, steps=5)
    points = [json.loads(line) for line in (tmp_path / "rl" / "explored-rank0.jsonl").open()]
    assert len(points) == 5  # the mask: every sample meets a_t and is decoded (or revisited)
    paper, _ = ragged_problem(tmp_path / "paper")
    penalty = rl_searcher(paper)
    for step in range(10):
        proposal = penalty.ask(step)
        assert all(j < w for j, w in zip(proposal.choices, paper.space.widths, strict=True))
        penalty._sample = None
    uniform, _ = ragged_problem(tmp_path / "random")
    rand = random_searcher(uniform, feasible=True)
    for step in range(10):
        proposal = rand.ask(step)
        assert all(j < w for j, w in zip(proposal.choices, uniform.space.widths, strict=True))
        assert proposal.speedup >= uniform.target_speedup


def test_greedy_refuses_the_joint_space(tmp_path):
    problem, _ = ragged_problem(tmp_path)
    with pytest.raises(ValueError, match="rank spaces"):
        GreedySearcher(problem, None, "auto", True)


def test_joint_scheme_applies(tmp_path):
    targets, space = space_of()
    net = model()
    choices = [0] * len(space.widths)
    scheme = Scheme.build(targets, space.ranks(choices), "joint")
    from compress.scheme import apply_scheme

    compressed = apply_scheme(net, scheme, targets, SvdCache())
    assert compressed(torch.randn(2, 64)).shape == (2, 1)


def test_joint_search_stage_on_the_tiny_corpus(tiny_corpus, tmp_path_factory):
    """search.py with search.space.kind=joint: explored schemes mix techniques, the result is chosen on dev and
    loads as a format-2 scheme with its sparsities."""
    search, out = search_stage(tiny_corpus, tmp_path_factory, "search_joint", "search=optuna_tpe",
                               "search.space.kind=joint", "search.space.rank_space=uniform",
                               "search.searcher.n_startup_trials=2",
                               "search.target_speedup=2.0")
    report = search("search.steps=4")
    points = [json.loads(line) for line in (out / "explored-rank0.jsonl").open()]
    assert points and all(p["speedup"] >= 2.0 for p in points)
    assert any(isinstance(v, dict) and "sparsity" in v for p in points for v in p["ranks"].values())
    chosen = Scheme.load(out / "best_scheme.json")
    assert report["summary"]["selected_on"] == "dev" and chosen.estimates["speedup/params"] >= 2.0
    assert chosen.provenance == "optuna-joint"  # its rows in make compare: "optuna-joint retrained"


def test_repair_by_rise_prefers_the_options_the_tables_call_harmless(tmp_path):
    targets, space = space_of()
    costs = space.costs(params_estimate(targets))
    dense = [len(row) - 1 for row in space.options]
    rises = [[0.0 if isinstance(o, dict) and "sparsity" not in o else 50.0 for o in row] for row in space.options]
    rises[-1] = [0.0] * len(space.options[-1])
    for row, rise in zip(space.options, rises, strict=True):
        rise[row.index(FULL)] = 0.0
    choices = costs.repair(dense, 1.5, rises=rises)
    assert choices is not None and costs.speedup(choices) >= 1.5
    chosen = space.ranks(choices)
    assert all(o == FULL or "sparsity" not in o for o in chosen.values())  # ranks alone cost no rise here
    problem, wer = ragged_problem(tmp_path)
    problem.option_rises = rises
    settings = dict(storage=None, n_startup_trials=3, n_ei_candidates=8, multivariate=True, feasible_draws=100)
    searcher = OptunaTpeSearcher(problem, **settings)
    for step in range(4):  # every step meets a_t: the sample, or its repair by least rise
        proposal = searcher.ask(step)
        assert proposal.speedup >= problem.target_speedup and proposal.point.get("repaired", True)
        searcher._repaired = None
        searcher._pending = None


def test_pareto_keeps_only_options_no_other_beats_on_cost_and_rise():
    from rl.space import pareto_options

    targets, space = space_of()
    costs = space.costs(params_estimate(targets))
    rises = [[float(j % 3) for j in range(len(row))] for row in space.options]
    front = pareto_options(space, costs, rises)
    assert front.names == space.names and all(FULL in row for row in front.options)
    for row, kept, delta, rise in zip(space.options, front.options, costs.delta, rises, strict=True):
        assert 1 <= len(kept) <= len(row)
        index = {option_key(o): j for j, o in enumerate(row)}
        for option in kept:
            j = index[option_key(option)]
            if option != FULL:  # nothing in the row is cheaper and no worse, or no worse and less risky
                assert not any(delta[k] <= delta[j] and rise[k] <= rise[j]
                               and (delta[k], rise[k]) != (delta[j], rise[j]) for k in range(len(row)))
    assert sum(front.widths) < sum(space.widths)
