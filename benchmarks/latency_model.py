#!/usr/bin/env python
"""How well does the measured-latency cost model (by=latency) predict real decoding time? (prints numbers)

    python benchmarks/latency_model.py                                  # 24 random schemes of search=aggressive
    python benchmarks/latency_model.py --schemes 30 --repeats 7 --json runs/latency_model.json
    python benchmarks/latency_model.py --scheme runs/search/aggressive_latency/best_scheme.json
    python benchmarks/latency_model.py latency.rebuild=true             # Hydra overrides of conf/search.yaml

The latency table of this machine, thread count and checkpoint is built (or reused) as ``search.py by=latency``
builds it (``conf/latency``, ``src/shrinkml/latency_table.py``). Random schemes are drawn from the search space
of ``search.py search=aggressive`` (``shrinkml.search.build_space``): one compression level per scheme, each
target's option index around it, kept so their estimated speed-ups by parameters spread evenly over
``--min-speedup`` .. ``--max-speedup``. With ``--scheme`` the given scheme files are measured instead.

Every scheme's model and the dense model decode the first ``latency.utterances`` dev utterances one at a time
(batch 1, greedy, ``latency.threads`` threads), timed as ``asr.latency.measured_speedups`` times them (a warm-up
utterance per model, then ``--repeats`` passes of every model alternating in rotating order; real-time factor =
median pass, speed-up = median of the per-repeat dense / scheme ratios), each pass read on two clocks: the wall
clock (asr.latency's measure) and the decoding thread's CPU time (which leaves out the time other processes hold
the core: the table's default clock). Per scheme and clock it prints the predicted latency (the table's
``fixed + sum of the chosen ranks' times``, seconds per audio second) against the measured real-time factor,
and the predicted speed-up against the measured one; then the Pearson correlation and the median absolute
relative error of both, and whether the goals (Pearson >= 0.95, median error <= 10%) are met. On a busy machine
the wall-clock latency carries the load of the moment, which the table (CPU time, minutes earlier) does not.
Asserts nothing.
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import statistics
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from asr.latency import alternate, ratio_summary, single_utterances  # noqa: E402
from common.atomic import write_json_atomic  # noqa: E402
from compress.cost import estimate_speedup  # noqa: E402
from compress.scheme import Scheme, apply_scheme  # noqa: E402
from compress.svd import SvdCache  # noqa: E402
from compress.targets import discover_targets  # noqa: E402
from shrinkml.latency_table import LatencySettings, ensure_table  # noqa: E402
from shrinkml.search import build_space  # noqa: E402
from shrinkml.stage import data_module, eval_batches, load_recognizer  # noqa: E402

GOAL_PEARSON, GOAL_ERROR = 0.95, 0.10


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}
CLOCK_NAMES = {"wall": "the wall clock (asr.latency's measure)", "cpu": "the decoding thread's CPU time"}


def audio_seconds(utterances, frame_shift_ms: float) -> float:
    return sum(float(lengths.sum()) for _, lengths in utterances) * frame_shift_ms / 1000.0


@torch.no_grad()
def timed_passes(models: dict, utterances, threads: int, repeats: int) -> dict[str, dict[str, list[float]]]:
    """``{clock: {model: [seconds of each pass]}}``: as ``asr.latency.measured_speedups`` times them (one warm-up
    utterance per model, then ``repeats`` passes of every model over ``utterances``, alternating in rotating
    order, on ``threads`` threads), every pass read on both clocks."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for model in models.values():
            model.eval()
            model.decode(*utterances[0], 0)

        def run(model):
            def one_pass() -> dict[str, float]:
                start = {clock: read() for clock, read in CLOCKS.items()}
                for features, lengths in utterances:
                    model.decode(features, lengths, 0)
                return {clock: read() - start[clock] for clock, read in CLOCKS.items()}

            return one_pass

        passes = alternate({name: run(model) for name, model in models.items()}, repeats)
    finally:
        torch.set_num_threads(previous)
    return {clock: {name: [p[clock] for p in runs] for name, runs in passes.items()} for clock in CLOCKS}


def measured(passes: dict[str, list[float]], reference: str, audio: float) -> dict[str, dict]:
    """Per model: ``rtf`` (median pass seconds per audio second), ``speedup`` and ``speedup_spread`` (median, lowest
    and highest of the per-repeat ``reference / model`` ratios), as ``asr.latency.measured_speedups`` reports them."""
    out = {}
    for name, seconds in passes.items():
        ratio = ratio_summary(passes[reference], seconds)
        out[name] = {"rtf": statistics.median(seconds) / audio, "speedup": ratio["median"],
                     "speedup_spread": ratio["spread"]}
    return out


def pearson(xs: list[float], ys: list[float]) -> float:
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    sxx, syy = sum((x - mx) ** 2 for x in xs), sum((y - my) ** 2 for y in ys)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else float("nan")


def random_schemes(space, targets, count: int, low: float, high: float, seed: int) -> list[dict]:
    """``count`` rank dicts of ``space`` whose parameter estimates spread evenly over ``[low, high]``: candidates
    at random compression levels, one kept per equal-width bin of the estimate (a random one of the bin)."""
    rng = random.Random(seed)
    width = space.shape[1]
    bins: list[list[dict]] = [[] for _ in range(count)]
    for _ in range(400 * count):
        level = rng.random() * (width - 1)
        choices = [min(width - 1, max(0, round(level + rng.gauss(0.0, 1.5)))) for _ in space.names]
        ranks = space.ranks(choices)
        estimate = estimate_speedup(targets, ranks, "params")
        if low <= estimate <= high:
            bins[min(count - 1, int((estimate - low) / (high - low) * count))].append(ranks)
    picked = [rng.choice(b) for b in bins if b]
    if len(picked) < count:
        logging.warning("only %d of %d speed-up bins could be filled from the search space", len(picked), count)
    return picked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of conf/search.yaml (e.g. latency.threads=2)")
    parser.add_argument("--schemes", type=int, default=24, help="random schemes of the search space")
    parser.add_argument("--min-speedup", type=float, default=1.2, help="lowest estimated speed-up (parameters)")
    parser.add_argument("--max-speedup", type=float, default=4.0, help="highest estimated speed-up (parameters)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5, help="timed passes of every model (median)")
    parser.add_argument("--scheme", type=Path, nargs="+", help="measure these scheme files instead of random ones")
    parser.add_argument("--json", type=Path, help="also write every number to this JSON file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("search", overrides=["search=aggressive", *args.overrides])
    settings = LatencySettings.from_config(cfg.latency)
    module = load_recognizer(cfg.ckpt, cfg.decoding)
    model = module.model.eval()
    frame_shift_ms = module.assets.features.frame_shift_ms
    datamodule = data_module(cfg.data)
    batches = eval_batches(datamodule, cfg.split)
    targets = discover_targets(model, cfg.targets.include, cfg.targets.exclude)
    cache = SvdCache()
    space = build_space(cfg, targets, cache, model)
    started = time.perf_counter()
    table, path = ensure_table(model, targets, batches, frame_shift_ms, cfg.ckpt, settings, cache,
                               dict(zip(space.names, space.options, strict=True)))
    print(f"latency table {path} ({table.meta.get('created')}, {time.perf_counter() - started:.0f} s here): "
          f"dense {table.dense_seconds:.5f} s/s of which fixed {table.fixed:.5f}; key {table.key}")

    if args.scheme:
        schemes = {p.stem: Scheme.load(p).ranks for p in args.scheme}
    else:
        picked = random_schemes(space, targets, args.schemes, args.min_speedup, args.max_speedup, args.seed)
        schemes = {f"s{i:02d}": ranks for i, ranks in enumerate(picked)}
    models = {"dense": model}
    for name, ranks in schemes.items():
        models[name] = apply_scheme(model, Scheme.build(targets, ranks, "random"), targets, cache).eval()
    utterances = single_utterances(batches, settings.utterances)
    print(f"measuring {len(schemes)} schemes and the dense model on {len(utterances)} utterances, "
          f"{settings.threads} thread(s), {args.repeats} passes each, alternating ...", flush=True)
    started = time.perf_counter()
    timed = {clock: measured(passes, "dense", audio_seconds(utterances, frame_shift_ms))
             for clock, passes in timed_passes(models, utterances, settings.threads, args.repeats).items()}
    print(f"measured in {time.perf_counter() - started:.0f} s; dense: {timed['wall']['dense']['rtf']:.5f} s/s by the "
          f"wall clock, {timed['cpu']['dense']['rtf']:.5f} by CPU time; the table: {table.dense_seconds:.5f} "
          f"({table.meta.get('clock', 'wall')} clock)")

    rows = []
    for name, ranks in schemes.items():
        row = {"scheme": name, "ranks": ranks, "speedup/params": estimate_speedup(targets, ranks, "params"),
               "predicted_latency": table.latency(ranks), "predicted_speedup": table.speedup(ranks)}
        for clock in CLOCKS:
            got = timed[clock][name]
            row[clock] = {"rtf": got["rtf"], "latency_error": row["predicted_latency"] / got["rtf"] - 1.0,
                          "speedup": got["speedup"], "speedup_spread": got["speedup_spread"],
                          "speedup_error": row["predicted_speedup"] / got["speedup"] - 1.0}
        rows.append(row)
    summary = {}
    for clock in CLOCKS:
        header = (f"{'scheme':<22} {'est.params':>10} {'pred.lat':>9} {'meas.rtf':>9} {'err':>7} | "
                  f"{'pred.x':>7} {'meas.x':>7} {'spread':>13} {'err':>7}")
        print(f"\nmeasured by {CLOCK_NAMES[clock]}\n" + header + "\n" + "-" * len(header))
        for row in rows:
            got = row[clock]
            low, high = got["speedup_spread"]
            print(f"{row['scheme']:<22} {row['speedup/params']:9.2f}x {row['predicted_latency']:9.5f} "
                  f"{got['rtf']:9.5f} {got['latency_error']:+7.1%} | {row['predicted_speedup']:6.2f}x "
                  f"{got['speedup']:6.2f}x {low:5.2f}..{high:5.2f}x {got['speedup_error']:+7.1%}")
        if len(rows) < 2:
            continue
        summary[clock] = {
            "pearson_latency": pearson([r["predicted_latency"] for r in rows], [r[clock]["rtf"] for r in rows]),
            "median_abs_error_latency": statistics.median(abs(r[clock]["latency_error"]) for r in rows),
            "pearson_speedup": pearson([r["predicted_speedup"] for r in rows], [r[clock]["speedup"] for r in rows]),
            "median_abs_error_speedup": statistics.median(abs(r[clock]["speedup_error"]) for r in rows)}
    print()
    for clock, numbers in summary.items():
        for kind in ("latency", "speedup"):
            r, err = numbers[f"pearson_{kind}"], numbers[f"median_abs_error_{kind}"]
            met = r >= GOAL_PEARSON and err <= GOAL_ERROR
            print(f"{clock:<4} {kind:<7}: Pearson {r:.3f} (goal >= {GOAL_PEARSON}), median |relative "
                  f"error| {err:.1%} (goal <= {GOAL_ERROR:.0%}): goals {'met' if met else 'NOT met'}")
    if not summary:
        print(f"{len(rows)} scheme(s): no correlation")
    if args.json:
        write_json_atomic(args.json, {"table": str(path), "key": table.key, "table_meta": table.meta,
                                      "table_dense_seconds": table.dense_seconds, "threads": settings.threads,
                                      "repeats": args.repeats, "utterances": len(utterances),
                                      "measured_dense": {clock: timed[clock]["dense"] for clock in CLOCKS},
                                      "rows": rows, "summary": summary})
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
