"""asr.latency: alternating timing (order, rotation, warm-up) and the median / spread arithmetic of measured
speed-ups, on fake models whose decoding advances a fake clock (no real speed is asserted)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from asr import latency
from asr.latency import alternate, measure_against, measured_speedups, ratio_summary, real_time_factor, rotation

SHIFT_MS = 10.0
UTTERANCES = [(torch.zeros(1, n, 4), torch.tensor([n])) for n in (100, 200, 300)]  # 6 s of audio
AUDIO = 6.0


class FakeClock:
    """A clock of :mod:`asr.latency` (thread CPU, process CPU or wall time): advanced only by the fake models'
    decoding."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeModel(nn.Module):
    """``decode`` costs ``cost`` seconds of thread CPU time per utterance times ``load(repeat, name)``, and
    ``wall(name)`` and ``process(name)`` times that of wall and process CPU time; the repeat is counted from
    the calls (after one warm-up call per model) and every call is logged."""

    def __init__(self, name, cost, world):
        super().__init__()
        self.name, self.cost, self.world = name, cost, world

    def decode(self, features, lengths, beam_size=0):
        world = self.world
        assert beam_size == 0  # greedy
        timed = len(world.log) - world.models
        repeat = timed // (len(UTTERANCES) * world.models) if timed >= 0 else -1
        world.log.append((self.name, int(lengths[0])))
        seconds = self.cost * world.load(repeat, self.name)
        world.clock.now += seconds
        world.wall_clock.now += seconds * world.wall(self.name)
        world.process_clock.now += seconds * world.process(self.name)
        return [[1]]


@pytest.fixture
def world(monkeypatch):
    clock, wall_clock, process_clock = FakeClock(), FakeClock(), FakeClock()
    monkeypatch.setattr(latency, "time", SimpleNamespace(thread_time=clock, process_time=process_clock,
                                                         perf_counter=wall_clock))
    state = SimpleNamespace(clock=clock, wall_clock=wall_clock, process_clock=process_clock, log=[], models=0,
                            load=lambda repeat, name: 1.0, wall=lambda name: 1.0, process=lambda name: 1.0)

    def make(costs):
        state.models = len(costs)
        return {name: FakeModel(name, cost, state) for name, cost in costs.items()}

    state.make = make
    return state


def test_rotation_starts_one_later_each_repeat():
    assert [rotation("abc", r) for r in range(4)] == [list("abc"), list("bca"), list("cab"), list("abc")]
    assert rotation([], 3) == []


def test_alternate_times_every_run_once_per_repeat_in_rotating_order():
    calls = []

    def run(name):
        def call():
            calls.append(name)
            return f"{name}{sum(c == name for c in calls)}"

        return call

    results = alternate({n: run(n) for n in "abc"}, repeats=3, warmup=2)
    assert calls == [*"abc", *"bca", *"abc", *"bca", *"cab"]  # two warm-up rounds, then three repeats
    assert results == {"a": ["a3", "a4", "a5"], "b": ["b3", "b4", "b5"], "c": ["c3", "c4", "c5"]}
    with pytest.raises(ValueError, match="repeats=0"):
        alternate({"a": run("a")}, repeats=0)


def test_ratio_summary_is_the_median_and_range_of_per_repeat_ratios():
    summary = ratio_summary([4.0, 8.0, 6.0, 2.0], [2.0, 2.0, 3.0, 2.0])
    assert summary["ratios"] == [2.0, 4.0, 2.0, 1.0]
    assert summary["median"] == 2.0 and summary["spread"] == (1.0, 4.0)
    with pytest.raises(ValueError, match="one reference timing per timing"):
        ratio_summary([1.0], [1.0, 2.0])


def test_models_alternate_in_rotating_order_after_one_warm_up_utterance_each(world):
    models = world.make({"dense": 0.05, "small": 0.02, "int8": 0.03})
    threads = torch.get_num_threads()
    measured_speedups(models, "dense", UTTERANCES, SHIFT_MS, threads=1, repeats=4)
    assert torch.get_num_threads() == threads  # restored
    assert world.log[:3] == [("dense", 100), ("small", 100), ("int8", 100)]  # warm-up: the first utterance
    passes = world.log[3:]
    assert len(passes) == 4 * 3 * len(UTTERANCES)
    order = [passes[i][0] for i in range(0, len(passes), len(UTTERANCES))]
    assert order == ["dense", "small", "int8", "small", "int8", "dense", "int8", "dense", "small",
                     "dense", "small", "int8"]
    assert all([n for _, n in passes[i:i + 3]] == [100, 200, 300] for i in range(0, len(passes), 3))


def test_a_load_common_to_a_repeat_cancels_in_the_speedup(world):
    loads = [1.0, 2.0, 1.5, 4.0, 1.0]  # the load of the other processes drifts from repeat to repeat
    world.load = lambda repeat, name: loads[repeat] if repeat >= 0 else 10.0
    timed = measured_speedups(world.make({"dense": 0.05, "small": 0.02}), "dense", UTTERANCES, SHIFT_MS, 1, 5)
    assert timed["small"]["speedup"] == pytest.approx(2.5)
    assert timed["small"]["speedup_spread"] == pytest.approx((2.5, 2.5))  # every repeat says 2.5
    assert timed["dense"]["speedup"] == 1.0 and timed["dense"]["speedup_spread"] == (1.0, 1.0)
    # the real-time factors do move with the load: median 1.5x the load-free pass, spread 1x to 4x
    assert timed["dense"]["rtf"] == pytest.approx(3 * 0.05 * 1.5 / AUDIO)
    assert timed["dense"]["rtf_spread"] == pytest.approx((3 * 0.05 / AUDIO, 3 * 0.05 * 4.0 / AUDIO))
    assert timed["small"]["rtf"] == pytest.approx(3 * 0.02 * 1.5 / AUDIO)


def test_a_spike_on_one_pass_moves_the_spread_not_the_median(world):
    loads = [1.0, 2.0, 1.5, 4.0, 1.0]  # a drift common to both, and a spike on one pass of "small"
    world.load = lambda repeat, name: loads[repeat] * (3.0 if (repeat, name) == (0, "small") else 1.0)
    timed = measured_speedups(world.make({"dense": 0.05, "small": 0.02}), "dense", UTTERANCES, SHIFT_MS, 1, 5)
    assert timed["small"]["speedup"] == pytest.approx(2.5)  # the ratio of the median passes would say 1.875
    assert timed["small"]["speedup_spread"] == pytest.approx((2.5 / 3, 2.5))
    with pytest.raises(ValueError, match="reference 'base' is not one of the timed models"):
        measured_speedups(world.make({"dense": 0.05}), "base", UTTERANCES, SHIFT_MS, 1, 2)


def test_one_thread_times_thread_cpu_more_threads_wall_time(world, caplog):
    world.wall = lambda name: 2.0 if name == "small" else 1.0  # "small" lost half its wall time to other processes
    costs = {"dense": 0.05, "small": 0.02}
    assert measured_speedups(world.make(costs), "dense", UTTERANCES, SHIFT_MS, 1, 3)["small"]["speedup"] == (
        pytest.approx(2.5))
    assert measured_speedups(world.make(costs), "dense", UTTERANCES, SHIFT_MS, 2, 3)["small"]["speedup"] == (
        pytest.approx(1.25))
    assert not caplog.records
    world.process = lambda name: 2.0  # torch computed on a second thread too: thread CPU time would undercount
    assert measured_speedups(world.make(costs), "dense", UTTERANCES, SHIFT_MS, 1, 3)["small"]["speedup"] == (
        pytest.approx(2.5))
    assert "other threads ran meanwhile" in caplog.text
    caplog.clear()
    assert measured_speedups(world.make(costs), "dense", UTTERANCES, SHIFT_MS, 2, 3)["small"]["speedup"] == (
        pytest.approx(1.25))
    assert not caplog.records  # on wall time the process's CPU time is not compared


def test_real_time_factor_is_the_median_pass(world):
    passes = iter([1.0, 5.0, 2.0])
    model, current = world.make({"m": 0.1})["m"], [1.0]

    def load(repeat, name):
        if repeat < 0:
            return 1.0
        if world.log[-1][1] == 100:  # the first utterance of a pass draws the pass's load
            current[0] = next(passes)
        return current[0]

    world.load = load
    assert real_time_factor(model, UTTERANCES, SHIFT_MS, repeats=3) == pytest.approx(3 * 0.1 * 2.0 / AUDIO)
    with pytest.raises(ValueError, match="at least one utterance"):
        real_time_factor(model, [], SHIFT_MS)


def test_measure_against_gives_the_summary_entries(world):
    world.load = lambda repeat, name: 2.0 if (repeat, name) == (0, "model") else 1.0
    models = world.make({"reference": 0.04, "model": 0.01})
    batch = {"features": torch.zeros(3, 300, 4), "feature_lengths": torch.tensor([100, 200, 300])}
    datamodule = SimpleNamespace(eval_dataloader=lambda split: [batch] if split == "test" else [])
    entries = measure_against(models["model"], models["reference"], datamodule, "test", SHIFT_MS, utterances=3,
                              threads=1, repeats=3)
    assert entries["speedup/measured"] == pytest.approx(4.0)
    assert (entries["speedup/measured_min"], entries["speedup/measured_max"]) == pytest.approx((2.0, 4.0))
    assert entries["rtf/reference"] == pytest.approx(3 * 0.04 / AUDIO)
    assert entries["rtf/model"] == pytest.approx(3 * 0.01 / AUDIO)
