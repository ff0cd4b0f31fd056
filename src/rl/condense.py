"""The "condense" heuristic of the paper's Listing 1: a small proxy set that ranks models like the
whole dev set does.

Every cohort model decodes the dev set; for each utterance, the Pearson correlation between its WER
across the cohort and the cohort's whole-set WERs says how representative it is. Utterances above
``correl_min`` (and of at least ``min_words`` words) form the condensed set (the most correlated
first, at most ``max_size`` of them). Fig. 3 checks the result on models outside the cohort: the
correlation with whole-set WER of condensed and of random subsets of growing size.

:func:`greedy_condensed_set` is an improvement over Listing 1 (``selection: greedy``): it scores
subsets, not single utterances, adding one at a time the utterance that makes the subset's WER
correlate best with the whole-set WER across the cohort. Listing 1 keeps utterances that are each
representative, but they can be alike (the ones good models all get right). Measured on the
2026-12-02 baselines (README "Search"), Listing 1 lost to random subsets on one and won on the
other (0.991 against 0.987), where greedy gave 0.989, so Listing 1 stays the default.
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


def greedy_condensed_set(cohort: Sequence[Counts], min_words: int = 1, max_size: int = 20,
                         candidate_min: float = -1.0) -> list[str]:
    """Forward selection: start empty, add the utterance whose addition maximizes
    ``pearson(WER of the subset per cohort model, whole-set WER per model)``, until ``max_size``.

    Candidates have at least ``min_words`` words and a correlation of their own (Listing 1's
    ``correl[u]``) above ``candidate_min``: without that floor a small cohort lets the greedy step
    pick utterances whose errors are noise that happens to cancel the subset's residuals. Returns
    the utterances in the order chosen (each prefix is the greedy set of its size)."""
    correlations = utterance_correlations(cohort)
    ids = [u for u, (_, words) in cohort[0].items()
           if words >= min_words and not math.isnan(correlations[u]) and correlations[u] > candidate_min]
    if not ids:
        return []
    totals = np.array([corpus_wer(c) for c in cohort])  # (M,)
    errors = np.array([[c[u][0] for u in ids] for c in cohort], dtype=np.float64)  # (M, N)
    words = np.array([cohort[0][u][1] for u in ids], dtype=np.float64)  # (N,) the same references for every model
    centred_totals = totals - totals.mean()
    chosen: list[int] = []
    error_sum, word_sum = np.zeros(len(cohort)), 0.0
    available = np.ones(len(ids), dtype=bool)
    for _ in range(min(max_size, len(ids))):
        wers = (error_sum[:, None] + errors) / np.maximum(word_sum + words, 1.0)[None, :]  # (M, N) subset WER
        centred = wers - wers.mean(axis=0, keepdims=True)
        norms = np.sqrt((centred**2).sum(axis=0)) * np.sqrt((centred_totals**2).sum())
        scores = np.where(norms > 0, (centred * centred_totals[:, None]).sum(axis=0) / np.maximum(norms, 1e-12), -2.0)
        scores[~available] = -np.inf
        j = int(np.argmax(scores))
        chosen.append(j)
        available[j] = False
        error_sum += errors[:, j]
        word_sum += words[j]
    return [ids[j] for j in chosen]


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
