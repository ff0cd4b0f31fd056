#!/usr/bin/env python
"""How well does the measured-latency cost model (by=latency) predict real decoding time? (prints numbers)

    python benchmarks/latency_model.py                                  # 24 random schemes of search=aggressive
    python benchmarks/latency_model.py --schemes 30 --repeats 7 --json runs/latency_model.json
    python benchmarks/latency_model.py --scheme runs/search/aggressive_latency/best_scheme.json
    python benchmarks/latency_model.py latency.rebuild=true             # Hydra overrides of conf/search.yaml
    python benchmarks/latency_model.py --joint                          # 24 random joint schemes
    python benchmarks/latency_model.py --joint --options options.json   # ... of these options ({target: [option]})
    python benchmarks/latency_model.py --joint --table-only             # build (or reuse) the table, then stop

The latency table of this machine, thread count and checkpoint is built (or reused) as ``search.py by=latency``
builds it (``conf/latency``, ``src/shrinkml/latency_table.py``). Random schemes are drawn from the search space
of ``search.py search=aggressive`` (``shrinkml.search.build_space``): one compression level per scheme, each
target's option index around it, kept so their estimated speed-ups by parameters spread evenly over
``--min-speedup`` .. ``--max-speedup``. With ``--scheme`` the given scheme files are measured instead.

``--joint`` draws joint schemes instead (:func:`random_joint_schemes`): per target one option of every technique
(``full``, ranks, sparsities unstructured and in 4x1 blocks, ranks with their factors pruned; any form of
``compress.options``), from ``--options`` (a JSON file ``{target: [option, ...]}``), else from the search space
when ``search.space.kind=joint``, else the plausible joint list :func:`joint_options` builds from the configured
SVD space's ranks. The table is built with those options (``extra_options``), and the schemes are kept so their
estimated speed-ups by that table spread evenly over ``--min-speedup`` .. ``--max-speedup``. Such schemes, not
retrained, emit far fewer or far more tokens than the dense model (2026-12-05: 9 instead of 25, or the length
limit's 53), which changes the decoder's work the table counts at the dense model's tokens; so with ``--joint``
every model decodes each utterance in as many decoder steps as the dense model (``--steps dense``,
``shrinkml.latency_table.decode_steps``; ``--steps natural`` decodes to the end token as before).

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
import json
import logging
import math
import random
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from asr.latency import alternate, ratio_summary, single_utterances  # noqa: E402
from common.atomic import write_json_atomic  # noqa: E402
from compress.cost import FULL, estimate_speedup, pays  # noqa: E402
from compress.options import normalize, option_key  # noqa: E402
from compress.scheme import Scheme, apply_scheme  # noqa: E402
from compress.svd import SvdCache  # noqa: E402
from compress.targets import discover_targets  # noqa: E402
from shrinkml.latency_table import LatencySettings, decode_steps, dense_steps, ensure_table  # noqa: E402
from shrinkml.search import build_space  # noqa: E402
from shrinkml.stage import data_module, eval_batches, load_recognizer  # noqa: E402

GOAL_PEARSON, GOAL_ERROR = 0.95, 0.10


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}
CLOCK_NAMES = {"wall": "the wall clock (asr.latency's measure)", "cpu": "the decoding thread's CPU time"}


def audio_seconds(utterances, frame_shift_ms: float) -> float:
    return sum(float(lengths.sum()) for _, lengths in utterances) * frame_shift_ms / 1000.0


@torch.no_grad()
def timed_passes(models: dict, utterances, threads: int, repeats: int, steps: list[int] | None = None
                 ) -> dict[str, dict[str, list[float]]]:
    """``{clock: {model: [seconds of each pass]}}``: as ``asr.latency.measured_speedups`` times them (one warm-up
    utterance per model, then ``repeats`` passes of every model over ``utterances``, alternating in rotating
    order, on ``threads`` threads), every pass read on both clocks. ``steps``: every model decodes utterance ``i``
    in exactly ``steps[i]`` decoder steps (``shrinkml.latency_table.decode_steps``) instead of until its end token."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for model in models.values():
            model.eval()
            model.decode(*utterances[0], 0)

        def run(model):
            def one_pass() -> dict[str, float]:
                start = {clock: read() for clock, read in CLOCKS.items()}
                for i, (features, lengths) in enumerate(utterances):
                    if steps is None:
                        model.decode(features, lengths, 0)
                    else:
                        decode_steps(model, features, lengths, steps[i])
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


JOINT_SPARSITIES = (0.5, 0.7, 0.8, 0.9)  # sparse options, unstructured and in 4x1 blocks where the rows allow
JOINT_FACTOR_SPARSITIES = (0.5, 0.75)  # a rank's factors pruned in 4x1 blocks
JOINT_RANKS = 7  # ranks per target taken from the SVD space


def joint_options(space, targets) -> dict[str, list]:
    """A plausible joint option list per target, built from the SVD ``space``'s ranks (its last
    :data:`JOINT_RANKS`): ``full``, those ranks, :data:`JOINT_SPARSITIES` unstructured and in 4x1 blocks (rows a
    multiple of 4), and every rank (rounded to a multiple of 4 that pays) with its factors pruned to
    :data:`JOINT_FACTOR_SPARSITIES` in 4x1 blocks. For a 1024 x 512 LSTM: 30 options."""
    shapes = {t.name: t.shape for t in targets}
    out = {}
    for name, row in zip(space.names, space.options, strict=True):
        m, n = shapes[name]
        ranks = sorted({int(r) for r in row if r != FULL})[-JOINT_RANKS:]
        patterns = ["unstructured", *(["4x1"] if m % 4 == 0 else [])]
        options: list = [FULL, *ranks]
        options += [{"sparsity": s, "pattern": p} for p in patterns for s in JOINT_SPARSITIES]
        if m % 4 == 0:
            blocked = sorted({max(4, 4 * round(r / 4)) for r in ranks} & {r for r in range(4, m, 4) if pays((m, n), r)})
            options += [{"rank": r, "sparsity": s, "pattern": "4x1"} for r in blocked for s in JOINT_FACTOR_SPARSITIES]
        out[name] = options
    return out


def random_joint_schemes(options: Mapping[str, Sequence], estimate: Callable[[dict], float], count: int,
                         low: float, high: float, seed: int) -> list[dict]:
    """``count`` schemes ``{target: option}`` of ``options`` (``{target: [option, ...]}``) whose estimates spread
    evenly over ``[low, high]``. Each target's options are ordered by the estimate of that option alone; a
    candidate takes a random compression level and, per target, the option near that level (so every technique
    of a target competes at similar cost), and one candidate is kept per equal-width bin of the estimate."""
    rng = random.Random(seed)
    ordered = {name: sorted(row, key=lambda option, name=name: estimate({name: option}))
               for name, row in options.items()}
    bins: list[list[dict]] = [[] for _ in range(count)]
    for _ in range(200 * count):
        level = rng.random()
        scheme = {}
        for name, row in ordered.items():
            j = round(level * (len(row) - 1) + rng.gauss(0.0, 0.2 * len(row)))
            scheme[name] = row[min(len(row) - 1, max(0, j))]
        value = estimate(scheme)
        if low <= value <= high:
            bins[min(count - 1, int((value - low) / (high - low) * count))].append(scheme)
    picked = [rng.choice(b) for b in bins if b]
    if len(picked) < count:
        logging.warning("only %d of %d speed-up bins could be filled from the joint options", len(picked), count)
    return picked


def joint_option_lists(args, cfg, space, targets) -> dict[str, list]:
    """The joint options of ``--joint``: ``--options``, else the joint search space, else :func:`joint_options`."""
    if args.options:
        loaded = json.loads(args.options.read_text())
        unknown = sorted(set(loaded) - {t.name for t in targets})
        if unknown:
            raise SystemExit(f"--options {args.options} names targets {unknown} that the model does not have")
        return {name: [normalize(o) for o in row] for name, row in loaded.items()}
    if cfg.search.space.kind == "joint":
        return dict(zip(space.names, space.options, strict=True))
    return joint_options(space, targets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of conf/search.yaml (e.g. latency.threads=2)")
    parser.add_argument("--schemes", type=int, default=24, help="random schemes of the search space")
    parser.add_argument("--min-speedup", type=float, default=1.2, help="lowest estimated speed-up (parameters; "
                        "--joint: latency)")
    parser.add_argument("--max-speedup", type=float, help="highest estimated speed-up (default 4.0 by parameters, "
                        "--joint: 3.0 by latency)")
    parser.add_argument("--joint", action="store_true", help="random joint schemes (ranks, sparsities, both)")
    parser.add_argument("--options", type=Path, help="--joint: a JSON file {target: [option, ...]}")
    parser.add_argument("--table-only", action="store_true", help="build (or reuse) the table, print it, stop")
    parser.add_argument("--steps", choices=("natural", "dense"), help="natural: every model decodes until its end "
                        "token (asr.latency); dense: as many decoder steps as the dense model (the work the table "
                        "counts; a compressed model that is not retrained may emit far fewer or more tokens). "
                        "Default: dense with --joint, else natural")
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
    options = joint_option_lists(args, cfg, space, targets) if args.joint else None
    started = time.perf_counter()
    table, path = ensure_table(model, targets, batches, frame_shift_ms, cfg.ckpt, settings, cache,
                               None if cfg.search.space.kind == "joint" else dict(zip(space.names, space.options,
                                                                                      strict=True)),
                               options)
    print(f"latency table {path} ({table.meta.get('created')}, built in {table.meta.get('build_seconds')} s, "
          f"{time.perf_counter() - started:.0f} s here): dense {table.dense_seconds:.5f} s/s of which fixed "
          f"{table.fixed:.5f}; key {table.key}")
    if args.table_only:
        for name, entry in table.targets.items():
            print(f"  {name:<36} {entry.shape[0]:>5}x{entry.shape[1]:<5} dense {entry.dense:.3g} s/s, "
                  f"{len(entry.points)} ranks, {len(entry.options)} other options")
        return

    if args.scheme:
        schemes = {p.stem: Scheme.load(p).settings for p in args.scheme}
    elif args.joint:
        picked = random_joint_schemes(options, table.speedup, args.schemes, args.min_speedup,
                                      args.max_speedup or 3.0, args.seed)
        schemes = {f"j{i:02d}": settings for i, settings in enumerate(picked)}
    else:
        picked = random_schemes(space, targets, args.schemes, args.min_speedup, args.max_speedup or 4.0, args.seed)
        schemes = {f"s{i:02d}": ranks for i, ranks in enumerate(picked)}
    built = {name: Scheme.build(targets, settings, "random") for name, settings in schemes.items()}
    models = {"dense": model}
    for name, scheme in built.items():
        models[name] = apply_scheme(model, scheme, targets, cache).eval()
    utterances = single_utterances(batches, settings.utterances)
    mode = args.steps or ("dense" if args.joint else "natural")
    steps = dense_steps(model, utterances) if mode == "dense" else None
    print(f"measuring {len(schemes)} schemes and the dense model on {len(utterances)} utterances, "
          f"{settings.threads} thread(s), {args.repeats} passes each, alternating, decoder steps: {mode} ...",
          flush=True)
    started = time.perf_counter()
    passes = timed_passes(models, utterances, settings.threads, args.repeats, steps)
    audio = audio_seconds(utterances, frame_shift_ms)
    timed = {clock: measured(runs, "dense", audio) for clock, runs in passes.items()}
    print(f"measured in {time.perf_counter() - started:.0f} s; dense: {timed['wall']['dense']['rtf']:.5f} s/s by the "
          f"wall clock, {timed['cpu']['dense']['rtf']:.5f} by CPU time; the table: {table.dense_seconds:.5f} "
          f"({table.meta.get('clock', 'wall')} clock)")

    rows = []
    for name, chosen in schemes.items():
        row = {"scheme": name, "settings": {target: option_key(option) for target, option in chosen.items()},
               "speedup/params": built[name].estimates["speedup/params"],
               "predicted_latency": table.latency(chosen), "predicted_speedup": table.speedup(chosen)}
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
                                      "repeats": args.repeats, "utterances": len(utterances), "steps": mode,
                                      "measured_dense": {clock: timed[clock]["dense"] for clock in CLOCKS},
                                      "rows": rows, "summary": summary})
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
