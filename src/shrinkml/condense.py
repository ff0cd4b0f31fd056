"""The condense stage behind ``scripts/condense.py``: a condensed proxy set for the search (paper
Listing 1 and Fig. 3).

Decodes the dev split with a cohort of models (the baseline, other checkpoints, naive SVD schemes of
the baseline), keeps the utterances whose WER correlates with the whole-set WER above
``correl_min`` (:mod:`rl.condense`), and checks the set on held-out models (random SVD schemes, not
in the cohort) against random subsets of the same sizes. Writes ``condensed.txt`` (the proxy list
read by ``search.py proxy=condensed``), ``condense.json`` and ``condense.png``; logs them to W&B.
"""

from __future__ import annotations

import random
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from asr.evaluate import evaluate
from asr.train import instantiate_group
from common.atomic import write_json_atomic, write_text_atomic
from compress.cost import estimate_speedup
from compress.manual import uniform_energy_scheme
from compress.scheme import Scheme, apply_scheme
from compress.svd import SvdCache
from rl.condense import condensed_set, corpus_wer, plot_curve, subset_curve, utterance_correlations
from shrinkml.stage import eval_batches, load_recognizer, profiled_targets


class EmptyCondensedSetError(RuntimeError):
    """No utterance passed Listing 1's threshold: there is no proxy set to write."""


def random_schemes(targets, count: int, low: float, high: float, by: str, seed: int) -> list[Scheme]:
    """``count`` schemes of random per-target ranks with estimated speed-ups in ``[low, high]``."""
    rng = random.Random(seed)
    schemes = []
    for _ in range(10000):
        if len(schemes) == count:
            break
        ranks = {t.name: max(1, int(t.max_rank * rng.uniform(0.02, 0.6))) for t in targets}
        if low <= estimate_speedup(targets, ranks, by) <= high:
            schemes.append(Scheme.build(targets, ranks, "random"))
    return schemes


def run_condense(cfg: DictConfig) -> dict:
    """Build the cohort, choose the condensed set, check it on held-out models, write and log the
    result; returns the summary (``condense.json`` without its curve and correlations).

    Raises ``FileNotFoundError``/``ValueError``/``DataError`` for bad input and
    :class:`EmptyCondensedSetError` when no utterance passes ``correl_min``."""
    baseline = load_recognizer(cfg.ckpt, cfg.decoding)
    others = [load_recognizer(path, cfg.decoding) for path in cfg.cohort.checkpoints]
    batches = eval_batches(cfg.data, cfg.split)
    tokenizer, model = baseline.assets.tokenizer, baseline.model
    targets = profiled_targets(baseline, batches[:2], cfg.targets.include, cfg.targets.exclude)
    weights = {t.name: t.weight(model) for t in targets}
    cache = SvdCache()

    def counts(candidate, label: str) -> dict:
        result = evaluate(candidate, batches, tokenizer)
        print(f"{label}: WER {result.wer:.2f}")
        return result.utterances

    cohort = [counts(model, "cohort baseline")]

    def join(member: dict, label: str) -> None:
        if any(member == other for other in cohort):  # e.g. last.ckpt is the best epoch: the same model again
            print(f"cohort {label}: decodes exactly like a member already in the cohort; left out")
        else:
            cohort.append(member)

    for m, path in zip(others, cfg.cohort.checkpoints, strict=True):
        join(counts(m.model, f"cohort {path}"), str(path))
    for a in cfg.cohort.speedups:
        scheme = uniform_energy_scheme(targets, weights, cache, float(a), cfg.by)
        join(counts(apply_scheme(model, scheme, targets, cache), f"cohort naive {a}x"), f"naive {a}x")
    # random SVD schemes of the baseline (another random stream than the held-out ones)
    for s in random_schemes(targets, cfg.cohort.random_schemes, cfg.held_out.min_speedup, cfg.held_out.max_speedup,
                            cfg.by, cfg.seed + 1):
        label = f"random {s.estimates['speedup/params']:.2f}x"
        join(counts(apply_scheme(model, s, targets, cache), f"cohort {label}"), label)
    held_out = [counts(apply_scheme(model, s, targets, cache), f"held-out random {s.estimates['speedup/params']:.2f}x")
                for s in random_schemes(targets, cfg.held_out.random_schemes, cfg.held_out.min_speedup,
                                        cfg.held_out.max_speedup, cfg.by, cfg.seed)]
    correlations = utterance_correlations(cohort)
    dev_size = len(correlations)
    max_size = max(1, int(dev_size * cfg.max_fraction))
    sizes = [n for n in cfg.curve_sizes if n <= dev_size]
    chosen = condensed_set(correlations, cohort[0], cfg.correl_min, cfg.min_words, max_size)
    ranking = condensed_set(correlations, cohort[0], -1.0, cfg.min_words)  # the most correlated first
    if not chosen:
        raise EmptyCondensedSetError(f"no utterance correlates above correl_min={cfg.correl_min} (or none has "
                                     f"min_words={cfg.min_words}); lower them or add cohort members")
    curve = subset_curve(held_out, ranking, sizes, cfg.random_draws, cfg.seed)
    # the condensed set is the head of the ranking, so one point of the curve scores it and its random peers
    same_size = subset_curve(held_out, ranking, [len(chosen)], cfg.random_draws, cfg.seed)
    chosen_corr, random_curve = same_size["condensed"][0], same_size["random"][0]
    out = Path(cfg.output_dir)
    write_text_atomic(out / "condensed.txt", "".join(f"{u} {correlations[u]:.4f}\n" for u in chosen))
    summary = {"dev_utterances": dev_size, "condensed_utterances": len(chosen), "correl_min": cfg.correl_min,
               "held_out_correlation": chosen_corr, "random_same_size_correlation": random_curve,
               "cohort_wers": [corpus_wer(c) for c in cohort], "held_out_wers": [corpus_wer(c) for c in held_out]}
    write_json_atomic(out / "condense.json", {**summary, "curve": curve, "correlations": correlations})
    plot_curve(curve, out / "condense.png", f"Condensed vs random subsets ({len(held_out)} held-out models)")
    for logger in instantiate_group(cfg.get("logger")):
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        if hasattr(logger, "log_image"):
            logger.log_image("condense/figure", [str(out / "condense.png")])
            logger.experiment.summary.update({k: v for k, v in summary.items() if not isinstance(v, list)})
        logger.finalize("success")
    return summary
