"""Listing 1 (condense) and Fig. 3's curve: representative utterances are found, random ones are not;
scripts/condense.py end to end on the tiny checkpoint."""

from __future__ import annotations

import json
import math
import random

import pytest
from asr_helpers import VOCAB, corpus_copy_for_runs, shared_dir, trained_run
from test_compress_scripts import run_script

from rl.condense import condensed_set, corpus_wer, pearson, subset_curve, utterance_correlations


def synthetic_cohort(models: int, seed: int) -> list[dict]:
    """Models of growing quality; utterances "good*" track the model's quality, "noise*" are random."""
    rng = random.Random(seed)
    cohort = []
    for m in range(models):
        quality = m / (models - 1)
        counts = {f"good{u}": (round(10 * (1 - quality) + rng.random()), 10) for u in range(20)}
        counts.update({f"noise{u}": (rng.randint(0, 10), 10) for u in range(20)})
        cohort.append(counts)
    return cohort


def test_corpus_wer_and_pearson():
    counts = {"a": (1, 4), "b": (3, 6)}
    assert corpus_wer(counts) == pytest.approx(40.0) and corpus_wer(counts, ["a"]) == pytest.approx(25.0)
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))


def test_condense_keeps_the_representative_utterances():
    cohort = synthetic_cohort(8, seed=0)
    correlations = utterance_correlations(cohort)
    chosen = condensed_set(correlations, cohort[0], correl_min=0.9, min_words=5, max_size=10)
    assert len(chosen) == 10 and all(u.startswith("good") for u in chosen)
    assert all(correlations[a] >= correlations[b] for a, b in zip(chosen, chosen[1:], strict=False))
    assert condensed_set(correlations, cohort[0], correl_min=0.9, min_words=11) == []  # all too short
    with pytest.raises(ValueError, match="at least 3 models"):
        utterance_correlations(cohort[:2])


def test_condensed_subsets_beat_random_ones_on_held_out_models():
    cohort, held_out = synthetic_cohort(8, seed=0), synthetic_cohort(6, seed=1)
    ranking = condensed_set(utterance_correlations(cohort), cohort[0], correl_min=-1.0)
    curve = subset_curve(held_out, ranking, [2, 5, 10], draws=30)
    assert all(c > r for c, r in zip(curve["condensed"], curve["random"], strict=True))
    assert curve["condensed"][-1] > 0.95


def test_condense_script_end_to_end(tiny_corpus, tmp_path_factory):
    base = shared_dir(tmp_path_factory)
    run_dir, _ = trained_run(tiny_corpus, base)
    corpus = corpus_copy_for_runs(tiny_corpus, base)
    out = base / "condense"
    result = run_script("condense", f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}", f"data.root={corpus}",
                        f"data.cache_dir={base / 'features'}", f"data.tokenizer.vocab_size={VOCAB}",
                        f"data.tokenizer.dir={base / 'tokenizer'}", "data.feature_jobs=1", "data.progress=false",
                        "logger=csv", "cohort.checkpoints=[]", "cohort.speedups=[1.2,1.6,2.0]",
                        "held_out.random_schemes=3", "correl_min=-1.0", "min_words=1", "max_fraction=0.5",
                        "curve_sizes=[2,4]", f"output_dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "condense.json").read_text())
    lines = (out / "condensed.txt").read_text().split("\n")
    assert 1 <= summary["condensed_utterances"] == len([x for x in lines if x]) <= summary["dev_utterances"] // 2
    assert len(summary["cohort_wers"]) == 4 and len(summary["held_out_wers"]) == 3
    assert (out / "condense.png").stat().st_size > 1000


def test_condense_cohort_takes_random_schemes_and_leaves_out_duplicates(tiny_corpus, tmp_path_factory):
    base = shared_dir(tmp_path_factory)
    run_dir, _ = trained_run(tiny_corpus, base)
    corpus = corpus_copy_for_runs(tiny_corpus, base)
    out = base / "condense_random_cohort"
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    result = run_script("condense", f"ckpt={ckpt}", f"data.root={corpus}",
                        f"data.cache_dir={base / 'features'}", f"data.tokenizer.vocab_size={VOCAB}",
                        f"data.tokenizer.dir={base / 'tokenizer'}", "data.feature_jobs=1", "data.progress=false",
                        "logger=csv", f"cohort.checkpoints=[{ckpt}]", "cohort.speedups=[1.2]",
                        "cohort.random_schemes=4", "held_out.random_schemes=3", "correl_min=-1.0", "min_words=1",
                        "max_fraction=0.5", "curve_sizes=[2,4]", f"output_dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"cohort {ckpt}: decodes exactly like a member already in the cohort; left out" in result.stdout
    assert result.stdout.count("cohort random ") >= 4  # each random member decoded (and kept unless a duplicate)
    summary = json.loads((out / "condense.json").read_text())
    assert 3 <= len(summary["cohort_wers"]) <= 6  # the baseline, naive 1.2x, 4 random; never the checkpoint twice
