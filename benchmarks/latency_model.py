#!/usr/bin/env python
"""How well does the measured-latency cost model (by=latency) predict real decoding time? (prints numbers)

    python benchmarks/latency_model.py                                  # 24 random schemes of search=aggressive
    python benchmarks/latency_model.py --schemes 30 --repeats 7 --json runs/latency_model.json
    python benchmarks/latency_model.py --scheme runs/search/aggressive_latency/best_scheme.json
    python benchmarks/latency_model.py latency.statistic=min            # Hydra overrides of conf/search.yaml

The latency table of this machine, thread count and checkpoint is built (or reused) as ``search.py by=latency``
builds it (``conf/latency``, ``src/shrinkml/latency_table.py``). Random schemes are drawn from the search space
of ``search.py search=aggressive`` (``shrinkml.search.build_space``): one compression level per scheme, each
target's option index around it, kept so their estimated speed-ups by parameters spread evenly over
``--min-speedup`` .. ``--max-speedup``. With ``--scheme`` the given scheme files are measured instead.

Every scheme's model and the dense model decode the first ``latency.utterances`` dev utterances one at a time
(batch 1, greedy, ``latency.threads`` threads), timed alternating in rotating order by
``asr.latency.measured_speedups`` (median over ``--repeats``). Per scheme it prints the predicted latency (the
table's ``fixed + sum of the chosen ranks' times``, seconds per audio second) against the measured real-time
factor, and the predicted speed-up against the measured one (the median of per-repeat dense / scheme time
ratios); then the Pearson correlation and the median absolute relative error of both, and whether the goals
(Pearson >= 0.95, median error <= 10%) are met. The absolute latency carries the machine's load at the time
(the table and the measurement run minutes apart); the speed-up is a ratio of passes timed side by side.
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

from asr.latency import measured_speedups, single_utterances  # noqa: E402
from common.atomic import write_json_atomic  # noqa: E402
from compress.cost import FULL, estimate_speedup  # noqa: E402
from compress.scheme import Scheme, apply_scheme  # noqa: E402
from compress.svd import SvdCache  # noqa: E402
from compress.targets import discover_targets  # noqa: E402
from shrinkml.latency_table import LatencySettings, ensure_table  # noqa: E402
from shrinkml.search import build_space  # noqa: E402
from shrinkml.stage import data_module, eval_batches, load_recognizer  # noqa: E402

GOAL_PEARSON, GOAL_ERROR = 0.95, 0.10


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
    timed = measured_speedups(models, "dense", utterances, frame_shift_ms, settings.threads, args.repeats)
    print(f"measured in {time.perf_counter() - started:.0f} s; dense RTF {timed['dense']['rtf']:.5f} measured, "
          f"{table.dense_seconds:.5f} in the table")

    rows = []
    header = (f"{'scheme':<22} {'est.params':>10} {'pred.lat':>9} {'meas.rtf':>9} {'err':>7} | "
              f"{'pred.x':>7} {'meas.x':>7} {'spread':>13} {'err':>7}")
    print("\n" + header + "\n" + "-" * len(header))
    for name, ranks in schemes.items():
        predicted, measured = table.latency(ranks), timed[name]["rtf"]
        row = {"scheme": name, "ranks": ranks, "speedup/params": estimate_speedup(targets, ranks, "params"),
               "predicted_latency": predicted, "measured_rtf": measured,
               "latency_error": predicted / measured - 1.0, "predicted_speedup": table.speedup(ranks),
               "measured_speedup": timed[name]["speedup"], "measured_speedup_spread": timed[name]["speedup_spread"]}
        row["speedup_error"] = row["predicted_speedup"] / row["measured_speedup"] - 1.0
        rows.append(row)
        low, high = row["measured_speedup_spread"]
        print(f"{name:<22} {row['speedup/params']:9.2f}x {predicted:9.5f} {measured:9.5f} "
              f"{row['latency_error']:+7.1%} | "
              f"{row['predicted_speedup']:6.2f}x {row['measured_speedup']:6.2f}x {low:5.2f}..{high:5.2f}x "
              f"{row['speedup_error']:+7.1%}")
    summary = {}
    if len(rows) >= 2:
        summary = {
            "pearson_latency": pearson([r["predicted_latency"] for r in rows], [r["measured_rtf"] for r in rows]),
            "median_abs_error_latency": statistics.median(abs(r["latency_error"]) for r in rows),
            "pearson_speedup": pearson([r["predicted_speedup"] for r in rows], [r["measured_speedup"] for r in rows]),
            "median_abs_error_speedup": statistics.median(abs(r["speedup_error"]) for r in rows)}
        print()
        for kind in ("latency", "speedup"):
            r, err = summary[f"pearson_{kind}"], summary[f"median_abs_error_{kind}"]
            met = r >= GOAL_PEARSON and err <= GOAL_ERROR
            print(f"{kind:<8}: Pearson {r:.3f} (goal >= {GOAL_PEARSON}), median |relative error| {err:.1%} "
                  f"(goal <= {GOAL_ERROR:.0%}): goals {'met' if met else 'NOT met'}")
    else:
        print(f"\n{len(rows)} scheme(s): no correlation")
    dense_ranks = {t.name: FULL for t in targets}
    if args.json:
        write_json_atomic(args.json, {"table": str(path), "key": table.key, "table_meta": table.meta,
                                      "table_dense_seconds": table.latency(dense_ranks),
                                      "measured_dense_rtf": timed["dense"]["rtf"], "threads": settings.threads,
                                      "repeats": args.repeats, "utterances": len(utterances),
                                      "rows": rows, "summary": summary, "torch_threads_now": torch.get_num_threads()})
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
