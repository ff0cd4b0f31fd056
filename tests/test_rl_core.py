"""The search's parts: rewards (Eq. 4-6), search space, controller + REINFORCE, explored set, and the RL searcher
(Algorithm 1) on the search loop over a toy problem with a known optimum, including resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from loop_helpers import random_searcher, rl_searcher, run_loop, toy_problem
from torch import nn

from compress.cost import FULL, estimate_speedup
from compress.svd import SvdCache
from compress.targets import discover_targets
from rl.controller import Controller, RewardBaseline, reinforce_loss
from rl.explored import ExploredSet, ExploredSetError
from rl.rewards import aggressive_reward, conservative_reward, violation_reward, wer_reward
from rl.space import SearchSpace, SearchSpaceError, sensitivity_space, uniform_space, widened_sensitivity_space

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_rewards_are_the_papers_equations():
    assert conservative_reward(8.34, 8.29) == pytest.approx(-math.exp(0.05))  # Eq. 4
    assert conservative_reward(600.0, 8.0) == -math.exp(50.0)  # capped: no overflow for useless schemes
    assert aggressive_reward(20.0, 5.0) == pytest.approx(-math.exp(2.0))  # Eq. 5
    assert violation_reward(0.5) == pytest.approx(-60.0)  # Eq. 6: -100 * 0.5 - 10
    assert violation_reward(0.0) == -10.0
    assert wer_reward("aggressive") is aggressive_reward
    with pytest.raises(ValueError, match="search.reward"):
        wer_reward("greedy")
    with pytest.raises(ValueError, match="baseline WER"):
        aggressive_reward(3.0, 0.0)


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(40, 60), nn.Linear(60, 30), nn.Linear(30, 10))


def test_uniform_space_rows_and_reachability():
    targets = discover_targets(small_model())
    space = uniform_space(targets, options=5, min_fraction=0.1)
    assert space.shape == (3, 5)
    for target, row in zip(targets, space.options, strict=True):
        ints = [r for r in row if r != FULL]
        assert ints == sorted(ints) and all(1 <= r <= target.max_rank for r in ints)
    best = space.check_reachable(targets, 1.5)
    assert best == pytest.approx(estimate_speedup(targets, space.most_compressed()))
    with pytest.raises(SearchSpaceError, match="out of reach"):
        space.check_reachable(targets, best + 1)
    with pytest.raises(SearchSpaceError, match="below 1"):
        space.check_reachable(targets, 0.9)
    with pytest.raises(SearchSpaceError, match="l x d"):
        SearchSpace(["a", "b"], [[1, 2], [1]])


def one_sensitive_target():
    """The small model's targets, their spectra and a sensitivity table in which target "0" alone rises by 50
    points below energy 0.6 (every other row: 0.5)."""
    model = small_model()
    targets = discover_targets(model)
    cache = SvdCache()
    spectra = {t.name: cache.get(t.name, t.weight(model)) for t in targets}
    rows = [{"target": t.name, "energy": e, "delta": (50.0 if t.name == "0" and e < 0.6 else 0.5)}
            for t in targets for e in (0.3, 0.6, 0.9)]
    return targets, spectra, rows


def test_sensitivity_space_narrows_sensitive_targets():
    targets, spectra, rows = one_sensitive_target()
    space = sensitivity_space(targets, spectra, {"rows": rows}, options=4, max_delta=2.0, min_fraction=0.1)
    sensitive, tolerant = space.options[0], space.options[1]
    assert sensitive[0] == spectra["0"].rank_for_energy(0.6, "0") < 24  # rank at the lowest tolerated energy
    assert tolerant == uniform_space(targets, options=4, min_fraction=0.1).options[1]  # tolerant everywhere
    assert sensitive[-1] == tolerant[-1] == FULL
    with pytest.raises(SearchSpaceError, match="not in the sensitivity table"):
        sensitivity_space(targets, spectra, {"rows": rows[:3]})


def test_a_widened_sensitivity_space_opens_the_sensitive_targets_only_as_far_as_a_t_needs():
    targets, spectra, rows = one_sensitive_target()
    table = {"rows": rows}
    narrow = sensitivity_space(targets, spectra, table, options=4, max_delta=2.0, min_fraction=0.1)
    wide = uniform_space(targets, options=4, min_fraction=0.1)
    narrow_reach, wide_reach = (estimate_speedup(targets, s.most_compressed()) for s in (narrow, wide))
    assert wide_reach > narrow_reach

    def widened(a_t):
        return widened_sensitivity_space(targets, spectra, table, a_t, lambda r: estimate_speedup(targets, r),
                                         options=4, max_delta=2.0, min_fraction=0.1)

    space, delta = widened(narrow_reach)  # reachable as it is: the paper's space, unchanged
    assert delta == 2.0 and space.options == narrow.options
    space, delta = widened((narrow_reach + wide_reach) / 2)  # the sensitive target opens up
    assert delta == 50.0 and space.options == wide.options
    space, delta = widened(wide_reach + 1)  # out of reach: the widest space, refused by check_reachable
    assert space.options == wide.options
    with pytest.raises(SearchSpaceError, match="out of reach.*widen=true"):
        space.check_reachable(targets, wide_reach + 1)


def test_controller_shapes_and_reinforce_gradient():
    controller = Controller(num_targets=4, num_options=3)
    assert controller.cell.input_size == 100 and controller.cell.hidden_size == 100  # the paper's controller
    sample = controller(generator=torch.Generator().manual_seed(0))
    assert sample.choices.shape == (4,) and sample.log_prob.dim() == 0
    assert 0 < float(sample.entropy) <= math.log(3) + 1e-6
    rescored = controller(sample.choices)
    torch.testing.assert_close(rescored.log_prob, sample.log_prob)
    d = controller.distributions(sample.choices)
    assert d.shape == (4, 3)
    torch.testing.assert_close(d.sum(dim=1), torch.ones(4))
    expected = torch.log(d[torch.arange(4), sample.choices]).sum()
    torch.testing.assert_close(sample.log_prob, expected)
    reinforce_loss(sample, advantage=2.0).backward()
    assert all(p.grad is not None for p in controller.parameters())


def test_reward_baseline_is_a_moving_average():
    baseline = RewardBaseline(0.5)
    assert baseline.advantage(-4.0) == 0.0 and baseline.value == -4.0
    assert baseline.advantage(-2.0) == 2.0 and baseline.value == -3.0
    assert RewardBaseline(None).advantage(-7.0) == -7.0  # the paper's plain r
    with pytest.raises(ValueError, match="baseline_decay"):
        RewardBaseline(1.5)
    normalized = RewardBaseline(0.5, normalize=True)
    assert normalized.advantage(-4.0) == 0.0
    # r - b = 2, variance 0.5 * 0 + 0.5 * 2^2 = 2: advantage 2 / sqrt(2)
    assert normalized.advantage(-2.0) == pytest.approx(2.0 / math.sqrt(2.0))
    scale_free = RewardBaseline(0.5, normalize=True)
    scale_free.advantage(-400.0)
    assert scale_free.advantage(-200.0) == pytest.approx(2.0 / math.sqrt(2.0))  # the same at 100x the scale
    converged = RewardBaseline(0.5, normalize=True)
    for _ in range(50):
        converged.advantage(-9.0)
    assert converged.advantage(-8.9) == pytest.approx(0.1 / (0.05 * 9.0), rel=0.01)  # floored, not 0.1 / 1e-8
    with pytest.raises(ValueError, match="normalize_advantage"):
        RewardBaseline(None, normalize=True)


def point(a: int, wer: float, speedup: float = 2.0, step: int = 0) -> dict:
    return {"ranks": {"a": a}, "wer": wer, "speedup": speedup, "step": step}


def test_explored_set_persists_and_skips_a_damaged_line(tmp_path, caplog):
    path = tmp_path / "w.jsonl"
    explored = ExploredSet(path)
    explored.add(point(2, 10.0, 2.0, 0))
    explored.add(point(3, 8.0, 1.5, 1))
    with path.open("a") as f:
        f.write('{"ranks": {"a": 4}, "wer": 7.\n')  # half-written line
    explored_again = ExploredSet(path)
    assert len(explored_again) == 2 and explored_again.get({"a": 3})["wer"] == 8.0
    assert explored_again.damaged == [(path, 3)] and "the last line, 3, was cut off" in caplog.text
    assert [p["wer"] for p in explored_again.best(1.6)] == [10.0]
    assert explored_again.get({"a": 9}) is None
    with pytest.raises(ValueError, match="missing 'speedup'"):
        explored_again.add({"ranks": {"a": 5}, "wer": 7.0, "step": 2})  # never written
    assert len(path.read_text().splitlines()) == 2  # the damaged line truncated away, nothing else


def test_point_appended_after_a_kill_cut_off_the_last_line_is_kept(tmp_path, caplog):
    """A kill leaves the last line without its newline; the next point must not land on that line."""
    path = tmp_path / "w.jsonl"
    explored = ExploredSet(path)
    explored.add(point(2, 10.0))
    with path.open("a") as f:
        f.write(json.dumps(point(3, 8.0))[:20])  # cut off mid-write, no newline
    resumed = ExploredSet(path)
    assert len(resumed) == 1 and resumed.damaged == [(path, 2)] and "cut off" in caplog.text
    resumed.add(point(4, 7.0, step=1))  # the decode after the resume
    again = ExploredSet(path)
    assert [p["ranks"]["a"] for p in again] == [2, 4] and again.damaged == []
    with path.open("a") as f:
        f.write(json.dumps(point(5, 6.0, step=2)))  # complete, but killed before its newline
    kept = ExploredSet(path)
    assert [p["ranks"]["a"] for p in kept] == [2, 4, 5] and "lacked its newline" in caplog.text
    kept.add(point(6, 5.0, step=3))
    assert [p["ranks"]["a"] for p in ExploredSet(path)] == [2, 4, 5, 6]


def test_explored_set_stops_at_open_on_a_bad_line(tmp_path):
    path = tmp_path / "w.jsonl"
    good, no_speedup = json.dumps(point(2, 10.0)), json.dumps({"ranks": {"a": 3}, "wer": 8.0, "step": 1})
    path.write_text(f"{good}\n{no_speedup}\n{json.dumps(point(4, 7.0))}\n")
    with pytest.raises(ExploredSetError, match=r"w.jsonl: line 2 is bad \(missing 'speedup'\)"):
        ExploredSet(path)
    path.write_text(f"{good}\n{no_speedup}\n")  # complete but malformed last line: not a kill, an error
    with pytest.raises(ExploredSetError, match="line 2"):
        ExploredSet(path)
    path.write_text(f'{good}\n{{"ranks": {{"a"\n{good}\n')  # unparseable line in the middle
    with pytest.raises(ExploredSetError, match="line 2"):
        ExploredSet(path)
    path.write_text(f'{good}\n{{"ranks": {{"a": 3}}, "wer": "high", "speedup": 2.0, "step": 1}}\n')
    with pytest.raises(ExploredSetError, match="'wer' is 'high'"):
        ExploredSet(path)
    other = tmp_path / "other.jsonl"  # another rank's file, maybe being written now: read, never changed
    other.write_text(f"{good}\n" + json.dumps(point(3, 8.0))[:15])
    mine = ExploredSet(tmp_path / "mine.jsonl", [other])
    assert len(mine) == 1 and mine.damaged == [(other, 2)] and not other.read_text().endswith("\n")


# -- Algorithm 1 on a toy problem ----------------------------------------------------------------
SPACE = SearchSpace(["x", "y", "z"], [[1, 2, 3, 4]] * 3)


def toy_estimate(ranks: dict) -> float:
    """Speed-up falls as ranks grow: 4 / mean rank."""
    return 4.0 / (sum(ranks.values()) / 3)


class CountingWer:
    """WER is lowest for x = 4 (the "sensitive" target) and high ranks elsewhere; counts calls."""

    def __init__(self):
        self.calls = []

    def __call__(self, ranks: dict) -> float:
        self.calls.append(dict(ranks))
        return 10.0 + 8.0 * (4 - ranks["x"]) + (4 - ranks["y"]) + (4 - ranks["z"])


class Run:
    """What a test reads of a finished search: the loop's counts and step, and the searcher's controller."""

    def __init__(self, loop, searcher):
        self.counts, self.global_step = loop.counts, loop.step
        self.controller = getattr(searcher, "controller", None)


def fit_search(tmp_path, steps, policy="rl", wer=None, resume=False, seed=0, reward="conservative", max_decodes=None,
               **options):
    """``steps`` steps of the RL search (``policy=rl``) or a random one on the real search loop."""
    wer = wer or CountingWer()
    problem = toy_problem(SPACE, toy_estimate, 1.6, 10.0, tmp_path, reward=reward, seed=seed)
    searcher = rl_searcher(problem, **options) if policy == "rl" else random_searcher(problem, policy != "random")
    loop = run_loop(searcher, problem, wer, steps, max_decodes, resume=resume)
    return Run(loop, searcher), ExploredSet(tmp_path / "explored-rank0.jsonl"), wer


def test_rl_search_learns_the_toy_optimum_and_never_reevaluates(tmp_path):
    module, explored, wer = fit_search(tmp_path, steps=150)
    keys = [json.dumps(c, sort_keys=True) for c in wer.calls]
    assert len(keys) == len(set(keys)) == len(explored)  # each scheme evaluated once
    best = explored.best(1.6, 1)[0]
    # meeting a_t = 1.6 needs ranks summing to <= 7, so the optimum is x = 4 with y + z = 3: WER 15
    assert best["ranks"]["x"] == 4 and best["wer"] == 15.0
    probabilities = module.controller.distributions(torch.tensor([3, 0, 0]))
    assert float(probabilities[0, 3]) > 0.5  # the policy learned to keep the sensitive target large


def test_random_policy_samples_uniformly_and_does_not_learn(tmp_path):
    module, explored, _ = fit_search(tmp_path, steps=20, policy="random")
    assert module.counts["samples"] == 20 and len(explored) > 0
    problem = toy_problem(SPACE, toy_estimate, 1.6, 10.0, tmp_path)
    assert random_searcher(problem).state_dict() == {}  # nothing to learn: no parameters, no state


def test_random_feasible_policy_meets_the_target_at_every_step_and_does_not_learn(tmp_path):
    module, explored, wer = fit_search(tmp_path, steps=20, policy="random_feasible")
    plain, _, _ = fit_search(tmp_path / "plain", steps=20, policy="random")
    assert module.counts["accepted"] == module.counts["samples"] == 20  # 4 / mean rank >= 1.6 at every step
    assert plain.counts["accepted"] < 20  # uniform samples miss the target ...
    assert len(wer.calls) > plain.counts["evaluated"]  # ... so the feasible search decodes more with the same steps
    assert len({json.dumps(p["ranks"], sort_keys=True) for p in explored}) == len(explored) > 1
    assert random_searcher(toy_problem(SPACE, toy_estimate, 1.6, 10.0, tmp_path), True).state_dict() == {}


def test_max_decodes_stops_the_search_at_that_many_decoded_schemes(tmp_path):
    module, explored, wer = fit_search(tmp_path, steps=60, policy="random_feasible", max_decodes=7)
    assert len(explored) == len(wer.calls) == 7 and module.global_step < 60
    resumed, explored, wer = fit_search(tmp_path, steps=60, policy="random_feasible", max_decodes=7, resume=True)
    assert wer.calls == [] and len(explored) == 7  # a resumed search with its budget spent decodes nothing
    more, explored, wer = fit_search(tmp_path, steps=60, policy="random_feasible", max_decodes=12, resume=True)
    assert len(explored) == 12 and len(wer.calls) == 5
    with pytest.raises(ValueError, match="max_decodes"):
        fit_search(tmp_path / "bad", steps=5, max_decodes=0)


def test_interrupted_search_resumes_without_losing_or_repeating_points(tmp_path):
    torch.manual_seed(0)  # the controller's initial weights, the same for the uninterrupted run below
    _, first_explored, first_wer = fit_search(tmp_path, steps=10)
    resumed, explored, wer = fit_search(tmp_path, steps=25, resume=True)
    assert resumed.global_step == 25 and resumed.counts["samples"] == 25
    before = {json.dumps(c, sort_keys=True) for c in first_wer.calls}
    assert not before & {json.dumps(c, sort_keys=True) for c in wer.calls}  # nothing scored twice
    assert len(explored) == len(first_wer.calls) + len(wer.calls)
    torch.manual_seed(0)
    uninterrupted, _, _ = fit_search(tmp_path / "straight", steps=25)
    straight = [json.loads(line)["ranks"] for line in (tmp_path / "straight" / "explored-rank0.jsonl").open()]
    assert straight[: len(first_wer.calls)] == first_wer.calls  # same sampling stream step by step


def test_entropy_bonus_raises_the_policy_entropy():
    torch.manual_seed(0)
    controller = Controller(3, 4)
    with torch.no_grad():
        for head in controller.heads:
            head.bias.copy_(torch.tensor([3.0, 0.0, 0.0, 0.0]))  # a peaked policy
    choices = torch.tensor([0, 0, 0])

    def entropy() -> float:
        d = controller.distributions(choices)
        return float(-(d * d.log()).sum(dim=1).mean())

    before = entropy()
    optimizer = torch.optim.SGD(controller.parameters(), lr=0.5)
    for _ in range(5):
        sample = controller(choices)
        loss = reinforce_loss(sample, advantage=0.0) - 1.0 * sample.entropy  # the RL searcher's loss, r = b
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert entropy() > before + 0.1


@pytest.mark.parametrize("shape", [(1024, 512), (500, 256), (4096, 2048)])
@pytest.mark.parametrize("spacing", ["linear", "geometric"])
def test_top_option_is_dense_when_the_break_even_rank_is_no_integer(shape, spacing):
    """1024x512 breaks even at rank 341.3: rounded down it still pays (speed-up 1.001), yet the row's top option
    must be `full` (leave dense), in the uniform and the sensitivity space alike."""
    from compress.targets import Target

    m, n = shape
    assert m * n % (m + n) and pays_at(shape, round(m * n / (m + n)))  # the case: rounding down still pays
    target = Target("w", "linear", (m, n))
    assert uniform_space([target], options=6, min_fraction=0.1, spacing=spacing).options[0][-1] == FULL
    torch.manual_seed(0)
    weight = torch.randn(m // 8, n // 8) if m > 1024 else torch.randn(m, n)
    small = Target("w", "linear", tuple(weight.shape)) if m > 1024 else target
    spectra = {"w": SvdCache().get("w", weight)}
    for delta in (0.5, 50.0):  # tolerant everywhere (uniform range) and tolerant only while dense
        rows = [{"target": "w", "energy": e, "delta": delta} for e in (0.5, 0.9)]
        row = sensitivity_space([small], spectra, {"rows": rows}, options=4, max_delta=2.0, spacing=spacing).options[0]
        assert row[-1] == FULL
    assert estimate_speedup([target], {"w": FULL}) == 1.0


def pays_at(shape, rank) -> bool:
    m, n = shape
    return rank * (m + n) < m * n


def test_geometric_spacing_spreads_options_evenly_in_speedup():
    targets = discover_targets(nn.Sequential(nn.Linear(400, 600)))
    row = uniform_space(targets, options=5, min_fraction=0.1, spacing="geometric").options[0]
    break_even = 400 * 600 / 1000
    speedups = [break_even / r for r in row[:-1]]
    ratios = [a / b for a, b in zip(speedups, speedups[1:], strict=False)]
    assert row[-1] == FULL and max(ratios) / min(ratios) < 1.05  # a constant ratio between options
    assert speedups[0] == pytest.approx(10.0, rel=0.02)
    with pytest.raises(SearchSpaceError, match="spacing"):
        uniform_space(targets, spacing="cubic")


def test_masked_controller_is_a_distribution_over_exactly_the_feasible_schemes():
    torch.manual_seed(0)
    controller = Controller(3, 4)
    module = rl_searcher(toy_problem(SPACE, toy_estimate, 1.6, 10.0, Path("."), reward="conservative"),
                         feasibility="mask")
    total = 0.0
    for x in range(4):
        for y in range(4):
            for z in range(4):
                with torch.no_grad():
                    probability = float(controller(torch.tensor([x, y, z]), allowed=module.allowed_options)
                                        .log_prob.exp())
                feasible = toy_estimate(SPACE.ranks([x, y, z])) >= 1.6
                assert (probability > 0) == feasible, (x, y, z)
                total += probability
    assert total == pytest.approx(1.0, abs=1e-5)  # renormalized over the feasible schemes only
    rows = controller.distributions(torch.tensor([3, 0, 0]), allowed=module.allowed_options)
    # ranks must sum to <= 7.5: after x = 4, y <= 2 (z >= 1), and after x = 4, y = 1, z <= 2
    assert float(rows[1, 2:].sum()) == 0.0 < float(rows[1, :2].min())
    assert float(rows[2, 2:].sum()) == 0.0 < float(rows[2, :2].min())


def test_masked_search_meets_the_target_at_every_step_and_learns_the_toy_optimum(tmp_path):
    module, explored, wer = fit_search(tmp_path, steps=120, feasibility="mask", reward="aggressive",
                                       normalize_advantage=True, entropy_weight=0.3)  # the aggressive config
    assert module.counts["accepted"] == module.counts["samples"] == 120  # no sample is ever below a_t
    assert all(toy_estimate(ranks) >= 1.6 for ranks in wer.calls)
    best = explored.best(1.6, 1)[0]
    assert best["ranks"]["x"] == 4 and best["wer"] == 15.0
    with pytest.raises(ValueError, match="searcher.feasibility"):
        fit_search(tmp_path / "bad", steps=1, feasibility="clip")
