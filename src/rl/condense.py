"""The "condense" heuristic of the paper's Listing 1: a small proxy set that ranks models like the
whole dev set does.

Every cohort model decodes the dev set; for each utterance, the Pearson correlation between its WER
across the cohort and the cohort's whole-set WERs says how representative it is. Utterances above
``correl_min`` (and of at least ``min_words`` words) form the condensed set (the most correlated
first, at most ``max_size`` of them). Fig. 3 checks the result on models outside the cohort: the
correlation with whole-set WER of condensed and of random subsets of growing size.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence

import numpy as np

from compress.figures import pyplot, save_figure

Counts = Mapping[str, tuple[int, int]]  # utterance id -> (word errors, reference words)


def corpus_wer(counts: Counts, utt_ids: Sequence[str] | None = None) -> float:
    """WER (percent) of the utterances ``utt_ids`` (all when None)."""
    ids = counts.keys() if utt_ids is None else utt_ids
    errors = sum(counts[u][0] for u in ids)
    words = sum(counts[u][1] for u in ids)
    return 100.0 * errors / max(words, 1)


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation; NaN when either side is constant."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.std() == 0 or y.std() == 0:
        return math.nan
    return float(np.corrcoef(x, y)[0, 1])


def utterance_correlations(cohort: Sequence[Counts]) -> dict[str, float]:
    """Listing 1, lines 2-8: ``correl[u] = correlation(WER of u per cohort model, whole-set WER per model)``."""
    if len(cohort) < 3:
        raise ValueError(f"condense needs a cohort of at least 3 models to correlate, got {len(cohort)}")
    totals = [corpus_wer(c) for c in cohort]
    ids = list(cohort[0])
    return {u: pearson([100.0 * c[u][0] / max(c[u][1], 1) for c in cohort], totals) for u in ids}


def condensed_set(correlations: Mapping[str, float], counts: Counts, correl_min: float, min_words: int = 1,
                  max_size: int | None = None) -> list[str]:
    """Listing 1, lines 10-13: utterances with ``correl > correl_min`` and at least ``min_words`` words,
    the most correlated first, at most ``max_size``."""
    kept = [u for u, r in correlations.items() if not math.isnan(r) and r > correl_min and counts[u][1] >= min_words]
    kept.sort(key=lambda u: -correlations[u])
    return kept[:max_size] if max_size else kept


def subset_curve(held_out: Sequence[Counts], ranking: Sequence[str], sizes: Sequence[int], draws: int = 20,
                 seed: int = 0) -> dict[str, list]:
    """Fig. 3: across ``held_out`` models, the Pearson correlation between whole-set WER and the WER of
    (a) the first ``n`` utterances of ``ranking`` and (b) random subsets of ``n`` utterances (mean over
    ``draws``), for each size ``n``."""
    totals = [corpus_wer(c) for c in held_out]
    ids = list(held_out[0])
    rng = random.Random(seed)
    condensed, randoms = [], []
    for n in sizes:
        chosen = list(ranking[:n])
        condensed.append(pearson([corpus_wer(c, chosen) for c in held_out], totals) if len(chosen) == n else None)
        values = [pearson([corpus_wer(c, subset) for c in held_out], totals)
                  for subset in (rng.sample(ids, n) for _ in range(draws))]
        values = [v for v in values if not math.isnan(v)]
        randoms.append(sum(values) / len(values) if values else None)
    return {"sizes": list(sizes), "condensed": condensed, "random": randoms}


def plot_curve(curve: dict, path, title: str = "") -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, style in (("condensed", "b-o"), ("random", "r--s")):
        points = [(n, v) for n, v in zip(curve["sizes"], curve[key], strict=True) if v is not None]
        if points:
            ax.plot(*zip(*points, strict=True), style, label=key, markersize=4)
    ax.set_xscale("log")
    ax.set_xlabel("subset size (utterances)")
    ax.set_ylabel("Pearson correlation with full dev WER")
    ax.set_title(title or "Condensed vs random proxy sets (held-out models)")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)
