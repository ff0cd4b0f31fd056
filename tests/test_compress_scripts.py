"""scripts/sensitivity.py and scripts/manual_baselines.py end to end on a tiny trained checkpoint
(real Hydra entry points, run as subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from asr_helpers import VOCAB, corpus_copy_for_runs, shared_dir, trained_run

from compress.cost import FULL
from compress.scheme import Scheme

ROOT = Path(__file__).resolve().parents[1]


def run_script(name: str, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / f"{name}.py"), *overrides], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def setup(tiny_corpus, tmp_path_factory):
    base = shared_dir(tmp_path_factory)
    run_dir, _ = trained_run(tiny_corpus, base)
    corpus = corpus_copy_for_runs(tiny_corpus, base)
    data = [f"data.root={corpus}", f"data.cache_dir={base / 'features'}", f"data.tokenizer.vocab_size={VOCAB}",
            f"data.tokenizer.dir={base / 'tokenizer'}", "data.feature_jobs=1", "data.progress=false", "logger=csv"]
    return run_dir / "checkpoints" / "last.ckpt", data, base


@pytest.fixture(scope="module")
def sensitivity(setup):
    ckpt, data, base = setup
    out = base / "sensitivity"
    result = run_script("sensitivity", f"ckpt={ckpt}", *data, "energies=[0.9,0.5]", f"output_dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    return out, json.loads((out / "sensitivity.json").read_text())


def test_sensitivity_table_covers_every_target_and_energy(sensitivity):
    out, table = sensitivity
    assert (out / "sensitivity.png").stat().st_size > 1000
    names = {r["target"] for r in table["rows"]}
    assert "ctc_head" not in names and any(n.startswith("encoder.layers") for n in names)
    assert len(table["rows"]) == 2 * len(names) and table["energies"] == [0.9, 0.5]
    for row in table["rows"]:
        assert row["delta"] == pytest.approx(row["wer"] - table["baseline_wer"])
    by_target = {}
    for row in table["rows"]:
        by_target.setdefault(row["target"], {})[row["energy"]] = row["rank"]
    assert all(ranks[0.5] <= ranks[0.9] for ranks in by_target.values())  # rank falls as energy falls


def test_manual_baselines_write_schemes_that_meet_their_speedups(sensitivity, setup):
    ckpt, data, base = setup
    table_path, table = sensitivity[0] / "sensitivity.json", sensitivity[1]
    out = base / "manual"
    # a target is "sensitive" when its 0.5-energy WER rises by more than the median rise: some are, some are not
    deltas = sorted(r["delta"] for r in table["rows"] if r["energy"] == 0.5)
    threshold = deltas[len(deltas) // 2]
    result = run_script("manual_baselines", f"ckpt={ckpt}", *data, "speedups=[1.2,2.0]", f"output_dir={out}",
                        f"guided.table={table_path}", "guided.energy=0.5", f"guided.max_delta={threshold}")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "manual.json").read_text())
    assert [(r["method"], r["target_speedup"]) for r in summary["rows"]] == [
        ("dense", 1.0), ("naive", 1.2), ("guided", 1.2), ("naive", 2.0), ("guided", 2.0)]
    sensitive = summary["sensitive_targets"]
    for method in ("naive", "guided"):
        for a_t in (1.2, 2.0):
            scheme = Scheme.load(out / "schemes" / f"{method}-{a_t}x.json")
            assert scheme.provenance == method and scheme.estimates["speedup/params"] >= a_t
            assert scheme.estimates["speedup/macs"] > 1.0 and "wer/dev" in scheme.metrics
            if method == "guided":
                assert all(scheme.ranks[name] == FULL for name in sensitive)


def test_manual_baselines_refuse_an_impossible_speedup_and_a_missing_table(setup, tmp_path):
    ckpt, data, _ = setup
    result = run_script("manual_baselines", f"ckpt={ckpt}", *data, "speedups=[0.5]", "methods=[naive]",
                        f"output_dir={tmp_path}")
    assert result.returncode == 2 and "below 1" in result.stderr
    result = run_script("manual_baselines", f"ckpt={ckpt}", *data, f"guided.table={tmp_path / 'none.json'}",
                        f"output_dir={tmp_path}")
    assert result.returncode == 2 and "none.json not found; run scripts/sensitivity.py first" in result.stderr
