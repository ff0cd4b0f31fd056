#!/usr/bin/env python
"""Every searcher at equal numbers of decodes, over several seeds and both targets (which searcher should users run?).

    python benchmarks/search_seeds.py          # a_t 3.7 and 1.2, seeds 0 1 2, budgets 100 200 300
    python benchmarks/search_seeds.py --targets 3.7 --seeds 0 --budgets 50 100 --jobs 2
    python benchmarks/search_seeds.py --searcher rl_penalty=search=aggressive,search.searcher.feasibility=penalty
    python benchmarks/search_seeds.py --finished-only   # the table so far, while a benchmark still runs

Searchers (each a ``search.py`` run through the real entry point, over the same search space, proxy set, reward
and cost model): ``rl`` (the controller with the feasibility mask, ``search=aggressive``), ``random_feasible``,
``optuna_tpe`` and ``greedy`` (AIMET's selection: deterministic, run once per target, at the budget its curves
cost). Targets: ``3.7`` is the aggressive search as configured; ``1.2`` the same searchers with a_t = 1.2,
the conservative reward (Eq. 4) and the conservative space (``max_delta`` 2), so only the target differs.

Each seeded run decodes up to the largest budget (``search.max_decodes``) into
``runs/bench_search/a<target>/<searcher>-s<seed>/``. Every searcher here is anytime (what it decodes first does
not depend on its total budget), so the search at budget N is the run's first N decoded schemes: its result is
chosen as ``search.py`` chooses it (the top-5 by proxy WER meeting a_t, then the lowest WER on the whole dev
split) and only then decoded on test. A finished run is read back, not rerun, and decoded WERs are cached per
target (``wers.jsonl``), so an interrupted benchmark continues where it stopped.

Prints per run and budget the chosen scheme's dev and test WER, then one table: per target, budget and searcher
the mean and standard deviation over seeds of dev WER (what was chosen on) and test WER, decodes, and wall
minutes; ``--json`` writes every number. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from common.atomic import write_json_atomic  # noqa: E402

SEARCHERS = {"rl": ["search=aggressive"], "random_feasible": ["search=random_feasible"],
             "optuna_tpe": ["search=optuna_tpe"], "greedy": ["search=greedy"]}
DETERMINISTIC = {"greedy"}  # one run per target, whatever the seeds
TARGETS = {"3.7": [], "1.2": ["search.target_speedup=1.2", "search.reward=conservative", "search.space.max_delta=2.0"]}
TOP_K = 5


def parse_searcher(text: str) -> tuple[str, list[str]]:
    name, _, overrides = text.partition("=")
    if not name or not overrides:
        raise SystemExit(f"--searcher {text!r}: expected name=override[,override...]")
    return name, overrides.split(",")


def run_dir(out_root: Path, target: str, name: str, seed: int) -> Path:
    return out_root / f"a{target}" / (name if name in DETERMINISTIC else f"{name}-s{seed}")


def run_search(name: str, overrides: list[str], target: str, seed: int, max_budget: int, out: Path) -> None:
    """One search through ``search.py`` (skipped when its report exists: it finished before)."""
    if (out / "report.json").is_file():
        return
    steps = [] if name in DETERMINISTIC else [f"search.steps={4 * max_budget}", f"search.max_decodes={max_budget}"]
    command = [sys.executable, str(ROOT / "search.py"), *overrides, *TARGETS[target], *steps, f"seed={seed}",
               f"output_dir={out}", f"search.name=bench_{name}", "logger=csv", "on_stale=restart",
               "report.curve_speedups=[]"]
    print("running:", " ".join(command[1:]), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "bench.log", "a") as log:
        subprocess.run(command, check=True, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                       env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})


def explored_points(out: Path) -> list[dict]:
    """The run's decoded schemes in the order they were decoded."""
    points = []
    for path in sorted(out.glob("explored-rank*.jsonl")):
        points += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sorted(points, key=lambda p: p["time"])


class Decoder:
    """Whole-split WERs of schemes of the baseline, decoded once each and cached in ``cache`` (jsonl)."""

    def __init__(self, ckpt: str, cache: Path, overrides: list[str]):
        from hydra import compose, initialize_config_dir

        from compress.svd import SvdCache
        from compress.targets import discover_targets
        from shrinkml.stage import data_module, load_recognizer

        with initialize_config_dir(str(ROOT / "conf"), version_base=None):
            cfg = compose("search", overrides=[f"ckpt={ckpt}", *overrides])
        self.cfg = cfg
        self.module = load_recognizer(cfg.ckpt, cfg.decoding)
        self.datamodule = data_module(cfg.data)
        self.targets = discover_targets(self.module.model, cfg.targets.include, cfg.targets.exclude)
        self.svd = SvdCache()
        self.batches: dict[str, list] = {}
        self.path = cache
        self.known = {}
        if cache.is_file():
            for line in cache.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    self.known[(row["split"], row["scheme"])] = row["wer"]

    def wer(self, ranks: dict, split: str) -> float:
        from asr.evaluate import evaluate
        from compress.scheme import Scheme, apply_scheme
        from shrinkml.stage import eval_batches

        key = (split, json.dumps(ranks, sort_keys=True))
        if key not in self.known:
            if split not in self.batches:
                self.batches[split] = eval_batches(self.datamodule, split)
            model = apply_scheme(self.module.model, Scheme.build(self.targets, ranks, "bench"), self.targets, self.svd)
            self.known[key] = evaluate(model, self.batches[split], self.module.assets.tokenizer).wer
            with open(self.path, "a") as cache:
                cache.write(json.dumps({"split": split, "scheme": key[1], "wer": self.known[key]}) + "\n")
        return self.known[key]


def choose(points: list[dict], a_t: float, decoder: Decoder, dev: str, proxy_is_dev: bool) -> dict | None:
    """``search.py``'s choice among ``points``: the top-k by proxy WER meeting ``a_t``, then the lowest dev WER."""
    meeting = sorted((p for p in points if p["speedup"] >= a_t), key=lambda p: (p["wer"], -p["speedup"]))[:TOP_K]
    if not meeting:
        return None
    scored = [(p["wer"] if proxy_is_dev else decoder.wer(p["ranks"], dev), p) for p in meeting]
    dev_wer, point = min(scored, key=lambda s: s[0])
    return {"dev_wer": dev_wer, "point": point}


def budget_rows(name: str, target: str, seed: int, out: Path, budgets: list[int], decoder: Decoder) -> list[dict]:
    report = json.loads((out / "report.json").read_text())["summary"]
    points = explored_points(out)
    a_t, cfg = float(report["target_speedup"]), decoder.cfg
    dev, test = cfg.split, cfg.test_splits[0]
    proxy_is_dev = cfg.proxy == "full"
    wall = float(report["search_wall_seconds"])
    if name in DETERMINISTIC:  # greedy: one result at the budget its curves cost
        decodes = int(report.get("decodes", len(points)))
        budgets = [decodes]
        cuts = {decodes: points}
    else:
        cuts = {n: points[:n] for n in budgets}
    rows = []
    for budget, cut in cuts.items():
        chosen = choose(cut, a_t, decoder, dev, proxy_is_dev)
        used = budget if name in DETERMINISTIC else len(cut)
        minutes = wall / 60 if name in DETERMINISTIC or not points else wall / 60 * len(cut) / len(points)
        row = {"target": target, "searcher": name, "seed": seed, "budget": budget, "decodes": used,
               "minutes": minutes, "dev_wer": None, "test_wer": None, "speedup": None}
        if chosen:
            row.update(dev_wer=chosen["dev_wer"], test_wer=decoder.wer(chosen["point"]["ranks"], test),
                       speedup=chosen["point"]["speedup"])
        rows.append(row)
    return rows


def spread(values: list[float | None], digits: int = 2) -> str:
    """Mean ± standard deviation of the values given (None: not measured, left out); ``-`` for none."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def fmt(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budgets", type=int, nargs="+", default=[100, 200, 300])
    parser.add_argument("--searchers", nargs="+", default=list(SEARCHERS), help="names among the built-in ones")
    parser.add_argument("--searcher", action="append", default=[], help="an extra one: name=override[,override...]")
    parser.add_argument("--ckpt", default=str(ROOT / "runs" / "baseline" / "checkpoints" / "best.ckpt"))
    parser.add_argument("--jobs", type=int, default=1, help="searches at once (each on one thread)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_search")
    parser.add_argument("--json", type=Path, default=None, help="write every row here")
    parser.add_argument("--finished-only", action="store_true",
                        help="run no search: the table of the runs that finished (while a benchmark still runs)")
    args = parser.parse_args()
    unknown = sorted(set(args.searchers) - set(SEARCHERS))
    if unknown:
        raise SystemExit(f"--searchers: unknown {unknown}; built-in: {sorted(SEARCHERS)} (or --searcher name=...)")
    searchers = {name: SEARCHERS[name] for name in args.searchers} | dict(map(parse_searcher, args.searcher))
    budgets = sorted(set(args.budgets))
    # seed by seed, every searcher at each, so that a benchmark stopped early still compares them all
    runs = [(name, target, seed) for target in args.targets for seed in args.seeds for name in searchers
            if name not in DETERMINISTIC or seed == args.seeds[0]]
    started = time.time()
    if args.finished_only:
        runs = [run for run in runs if (run_dir(args.out, run[1], run[0], run[2]) / "report.json").is_file()]
        args.jobs = 0
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [pool.submit(run_search, name, [*searchers[name], f"ckpt={args.ckpt}"], target, seed, budgets[-1],
                               run_dir(args.out, target, name, seed)) for name, target, seed in runs
                   if not args.finished_only]
        for future in futures:
            future.result()
    print(f"searches done in {(time.time() - started) / 60:.1f} min; choosing at each budget", flush=True)
    rows = []
    for target in args.targets:
        decoder = Decoder(args.ckpt, args.out / f"a{target}" / "wers.jsonl", TARGETS[target])
        for name, target_, seed in runs:
            if target_ == target:
                rows += budget_rows(name, target, seed, run_dir(args.out, target, name, seed), budgets, decoder)
    print("\n| a_t | searcher | seed | budget | decodes | dev WER | test WER | speed-up | minutes |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['target']} | {r['searcher']} | {r['seed']} | {r['budget']} | {r['decodes']} | "
              f"{fmt(r['dev_wer'])} | {fmt(r['test_wer'])} | {fmt(r['speedup'])} | {r['minutes']:.1f} |")
    print("\nMean ± standard deviation over seeds; the result of each run chosen on dev, test only reported.\n")
    print("| a_t | budget (decodes) | searcher | seeds | dev WER | test WER | decodes | minutes |")
    print("|---|---|---|---|---|---|---|---|")
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["target"], r["budget"], r["searcher"]), []).append(r)
    for (target, budget, name), group in sorted(groups.items(), key=lambda g: (g[0][0], g[0][1], g[0][2])):
        dev = [r["dev_wer"] for r in group if r["dev_wer"] is not None]
        test = [r["test_wer"] for r in group if r["test_wer"] is not None]
        decodes, minutes = (statistics.mean(r[k] for r in group) for k in ("decodes", "minutes"))
        print(f"| {target} | {budget} | {name} | {len(group)} | {spread(dev)} | {spread(test)} | {decodes:.0f} | "
              f"{minutes:.1f} |")
    if args.json:
        write_json_atomic(args.json, {"rows": rows, "command": " ".join(sys.argv)})


if __name__ == "__main__":
    main()
