"""benchmarks/measured_speedup.py: every model timed in turn within each repeat, in rotating order, encoder and
decoding in the same turn; medians and spreads of times and of per-repeat speed-ups and ratios (fake timings),
and the script end to end on a tiny random model (its JSON; no speed asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from asr_helpers import load_benchmark

from compress.scheme import Scheme

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("measured_speedup")


def test_models_take_turns_in_rotating_order_with_every_part_in_one_turn(bench, monkeypatch):
    calls = []

    def fake_run_once(model, x, lengths, chunk, steps, cpp_step, clock):
        calls.append(model)
        turn = sum(c == model for c in calls)
        return {"encoder": 0.01 * turn, "attention": 0.001, "decoder": 0.002}  # encoder and decoding in one turn

    monkeypatch.setattr(bench, "run_once", fake_run_once)
    models = {"dense": "dense", "2x": "2x", "3.7x": "3.7x"}
    samples = bench.measure(models, batch=1, frames=8, chunk=4, steps=2, warmup=1, repeats=3, features=3)
    assert calls == ["dense", "2x", "3.7x",  # warm-up
                     "dense", "2x", "3.7x", "2x", "3.7x", "dense", "3.7x", "dense", "2x"]
    assert [r["encoder"] for r in samples["2x"]] == pytest.approx([0.02, 0.03, 0.04])  # warm-up dropped
    assert samples["dense"][0]["whole"] == pytest.approx(0.02 + 0.001 + 0.002)


def test_summary_medians_spreads_and_ratios_per_repeat(bench):
    def parts(encoder, attention, decoder):
        return {"encoder": encoder, "attention": attention, "decoder": decoder,
                "whole": encoder + attention + decoder}

    # the load doubles in repeat 1 and triples in repeat 2 for both models alike; "small" has a spike in repeat 3
    load = [1.0, 2.0, 3.0, 1.0]
    samples = {"dense": [parts(0.04 * f, 0.002 * f, 0.008 * f) for f in load],
               "small": [parts(0.01 * f, 0.001 * f, 0.004 * f) for f in load[:3]] + [parts(0.03, 0.001, 0.004)]}
    summary = bench.summarize(samples, "dense")
    dense, small = summary["dense"], summary["small"]
    assert dense["speedup"] == {c: 1.0 for c in bench.COLUMNS}
    assert dense["seconds"]["encoder"] == pytest.approx(0.06) and dense["seconds_spread"]["encoder"] == (
        pytest.approx(0.04), pytest.approx(0.12))
    # per repeat the encoder ratio is 4, 4, 4 and 0.04 / 0.03: the median stays 4, the spread shows the spike
    assert small["speedup"]["encoder"] == pytest.approx(4.0)
    assert small["speedup_spread"]["encoder"] == pytest.approx((0.04 / 0.03, 4.0))
    assert small["speedup"]["whole"] == pytest.approx(0.05 / 0.015)  # whole: 0.05 / 0.015 in three repeats of four
    scheme = Scheme(ranks={}, provenance="uniform", estimates={"speedup/params": 2.0, "speedup/macs": 4.0})
    (row,) = bench.scheme_rows({"small": scheme}, [], summary)
    assert row["ms"]["encoder"] == pytest.approx(25.0)  # the median of 10, 20, 30 and 30 ms
    assert row["ratio_params"] == pytest.approx(small["speedup"]["whole"] / 2.0)
    low, high = small["speedup_spread"]["whole"]
    assert row["ratio_params_spread"] == pytest.approx([low / 2.0, high / 2.0])
    assert row["ratio_macs_spread"] == pytest.approx([low / 4.0, high / 4.0])
    assert row["measured_spread"]["encoder"] == pytest.approx([0.04 / 0.03, 4.0])


def test_the_script_on_a_tiny_random_model(tmp_path):
    out = tmp_path / "measured.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks/measured_speedup.py"), "--frames", "40",
                           "--chunk", "20", "--batch", "2", "--speedups", "2.0", "--repeats", "3", "--warmup", "1",
                           "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "spread over 3 repeats" in done.stdout and "timed on thread CPU time" in done.stdout
    result = json.loads(out.read_text())
    assert result["clock"] == "thread CPU" and result["repeats"] == 3
    for scenario in result["scenarios"].values():
        (row,) = scenario["rows"]
        low, high = row["ratio_params_spread"]
        assert low <= row["ratio_params"] <= high
        for column in ("encoder", "attention", "decoder", "whole"):
            assert row["measured_spread"][column][0] <= row["measured"][column] <= row["measured_spread"][column][1]
            assert row["ms_spread"][column][0] <= row["ms"][column] <= row["ms_spread"][column][1]
