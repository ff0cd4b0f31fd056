#!/usr/bin/env python
"""Two workers on one search against one, at equal numbers of decodes (does sharing a study cost quality?).

    python benchmarks/search_workers.py                 # seeds 0 1 2, 100 decodes, runs/baseline's best.ckpt
    python benchmarks/search_workers.py --seeds 0 --budget 50 --override search.target_speedup=3.0
    python benchmarks/search_workers.py --finished-only  # the table so far, while a benchmark still runs

For each seed, the default searcher (Optuna TPE, ``search=optuna_tpe``) runs through the real entry point
``search.py`` twice: once as one worker, once as two concurrent workers sharing one output directory (one explored
set, claims, one Optuna study; docs/search.md "Several workers, one search"). Both stop at ``search.max_decodes``
(the shared explored set; ``search.steps`` per worker is 3x that, so the budget in decodes is what stops them; a
worker still decoding when the other reaches it adds its scheme, so two workers may end one decode over).
Every process runs on one thread (``OMP_NUM_THREADS=1``): the two-worker run uses two cores, the one-worker run one.
Runs go to ``runs/bench_workers/w<workers>-s<seed>/``; a run that finished (``bench.json``) is read back, not rerun,
and an interrupted one resumes where it stopped.

Reads each run's ``report.json`` (the selected scheme's WER on the whole dev split and the test splits, the search's
wall time) and its ``explored-rank*.jsonl`` (decodes, the best proxy WER among the explored schemes meeting a_t,
and the schemes decoded twice across the workers, which must be none), then prints one table: per worker count,
the mean and standard deviation over seeds of each. ``--json`` writes every number. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from search_seeds import explored_points, spread  # noqa: E402

from common.atomic import write_json_atomic  # noqa: E402
from rl.explored import scheme_key  # noqa: E402

WORKER_COUNTS = (1, 2)
STEPS_PER_DECODE = 3  # search.steps per worker = 3 x the budget: max_decodes, not steps, ends every search
FINISHED = "bench.json"  # written once every worker of a run exited cleanly
TAIL = 3000  # characters of a failed worker's stderr shown


def run_dir(out_root: Path, workers: int, seed: int) -> Path:
    return out_root / f"w{workers}-s{seed}"


def worker_command(workers: int, worker: int, seed: int, budget: int, ckpt: str, overrides: list[str],
                   out: Path) -> list[str]:
    """``search.py`` for worker ``worker`` of ``workers``: the user's ``overrides`` first, then what the benchmark
    fixes (searcher, checkpoint, budget, seed, output directory)."""
    return [sys.executable, str(ROOT / "search.py"), *overrides, "search=optuna_tpe", f"ckpt={ckpt}",
            f"search.steps={STEPS_PER_DECODE * budget}", f"search.max_decodes={budget}",
            f"search.workers={workers}", f"search.worker={worker}", f"seed={seed}", f"output_dir={out}",
            f"search.name=bench_workers_w{workers}", "logger=csv", "on_stale=restart", "report.curve_speedups=[]"]


def run_search(workers: int, seed: int, budget: int, ckpt: str, overrides: list[str], out: Path) -> None:
    """One search of ``workers`` concurrent ``search.py`` processes (skipped when it finished before). A worker that
    exits nonzero stops the others and the benchmark, with the tail of its stderr."""
    marker = out / FINISHED
    if marker.is_file() and json.loads(marker.read_text()).get("budget") == budget:
        return
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = time.time()
    processes = []
    for worker in range(workers):
        command = worker_command(workers, worker, seed, budget, ckpt, overrides, out)
        print("running:", " ".join(command[1:]), flush=True)
        with open(out / f"bench-worker{worker}.log", "a") as log, open(out / f"bench-worker{worker}.err", "w") as err:
            processes.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=err))
    failed = wait_all(processes)
    if failed:
        for worker in failed:
            tail = (out / f"bench-worker{worker}.err").read_text(errors="replace")[-TAIL:]
            print(f"\nworker {worker} of {out} exited with {processes[worker].returncode}; its stderr ends:\n{tail}",
                  file=sys.stderr)
        raise SystemExit(f"search failed: worker(s) {failed} of {out} (logs: {out}/bench-worker<k>.log and .err)")
    write_json_atomic(marker, {"workers": workers, "seed": seed, "budget": budget,
                               "run_seconds": round(time.time() - started, 1)})


def wait_all(processes: list[subprocess.Popen]) -> list[int]:
    """Wait for every process; once one exits nonzero, stop the rest. Returns the indices of those that failed by
    themselves (not the ones stopped here)."""
    while True:
        codes = [p.poll() for p in processes]  # every one polled: its returncode is set by poll
        if None not in codes or any(code not in (None, 0) for code in codes):
            break
        time.sleep(0.5)
    failed = [k for k, p in enumerate(processes) if p.returncode not in (None, 0)]
    for process in processes:
        if process.poll() is None:
            process.terminate()
            process.wait()
    return failed


def read_run(workers: int, seed: int, out: Path) -> dict:
    """The numbers of one finished run (``report.json`` and the explored-set files)."""
    summary = json.loads((out / "report.json").read_text())["summary"]
    points = explored_points(out)
    a_t = float(summary["target_speedup"])
    meeting = [p["wer"] for p in points if p["speedup"] >= a_t]
    dev = summary.get("selected_on")  # absent when no explored scheme met a_t
    wers = {key.removeprefix("wer/"): value for key, value in summary.items() if key.startswith("wer/")}
    keys = [scheme_key(p["ranks"]) for p in points]
    return {"workers": workers, "seed": seed, "target_speedup": a_t, "dev_split": dev,
            "dev_wer": wers.pop(dev, None) if dev else None, "test_wers": wers,
            "best_proxy_wer": min(meeting) if meeting else None, "decodes": len(points),
            "duplicates": len(keys) - len(set(keys)), "explored_in_report": summary["explored"],
            "decodes_per_worker": {k: sum(p.get("rank") == k for p in points) for k in range(workers)},
            "speedup": summary.get("speedup/params"), "minutes": float(summary["search_wall_seconds"]) / 60}


def benchmark(seeds: list[int], budget: int, ckpt: str, overrides: list[str], out_root: Path,
              finished_only: bool = False) -> list[dict]:
    """Run (or read back) the one- and two-worker searches of every seed; returns one row per run, seed by seed
    (so a benchmark stopped early still compares both worker counts). ``finished_only``: run nothing, read what
    finished."""
    rows = []
    for seed in seeds:
        for workers in WORKER_COUNTS:
            out = run_dir(out_root, workers, seed)
            if not finished_only:
                run_search(workers, seed, budget, ckpt, overrides, out)
            elif not (out / FINISHED).is_file():
                continue
            rows.append(read_run(workers, seed, out))
    return rows


def table(rows: list[dict], budget: int) -> str:
    """The markdown table: per worker count, mean ± std over seeds."""
    dev_splits = sorted({r["dev_split"] for r in rows if r["dev_split"]})
    test_splits = sorted({s for r in rows for s in r["test_wers"]})
    dev_name = f"dev WER ({', '.join(dev_splits)})" if dev_splits else "dev WER"
    header = ["workers", "seeds", dev_name, *[f"test WER ({s})" for s in test_splits], "best proxy WER", "decodes",
              "duplicates", "wall minutes"]
    lines = [f"Optuna TPE at {budget} decodes (search.max_decodes, the shared explored set), mean ± std over seeds. "
             "Every process on one thread: the 2-worker run uses 2 cores, the 1-worker run 1. Dev WER: the selected "
             "scheme on the whole dev split (chosen on it); test: reported only; best proxy WER: the lowest among "
             "explored schemes meeting a_t; duplicates: schemes decoded twice (must be 0).", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for workers in WORKER_COUNTS:
        group = [r for r in rows if r["workers"] == workers]
        if not group:
            continue
        cells = [str(workers), " ".join(str(r["seed"]) for r in group), spread([r["dev_wer"] for r in group]),
                 *[spread([r["test_wers"].get(s) for r in group]) for s in test_splits],
                 spread([r["best_proxy_wer"] for r in group]), spread([r["decodes"] for r in group], 0),
                 str(sum(r["duplicates"] for r in group)), spread([r["minutes"] for r in group], 1)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budget", type=int, default=100, help="decodes per search (search.max_decodes)")
    parser.add_argument("--ckpt", default=str(ROOT / "runs" / "baseline" / "checkpoints" / "best.ckpt"))
    parser.add_argument("--override", action="append", default=[],
                        help="a search.py override for every run (repeatable), e.g. --override search.target_speedup=3")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_workers")
    parser.add_argument("--json", type=Path, default=None, help="write every number here")
    parser.add_argument("--finished-only", action="store_true",
                        help="run no search: the table of the runs that finished (while a benchmark still runs)")
    args = parser.parse_args()
    if not args.finished_only and not Path(args.ckpt).is_file():
        raise SystemExit(f"checkpoint {args.ckpt} not found: train the baseline with 'make baseline' (or pass --ckpt)")
    started = time.time()
    rows = benchmark(args.seeds, args.budget, args.ckpt, args.override, args.out, args.finished_only)
    if not args.finished_only:
        print(f"searches done in {(time.time() - started) / 60:.1f} min\n", flush=True)
    print(table(rows, args.budget))
    if args.json:
        write_json_atomic(args.json, {"rows": rows, "budget": args.budget, "command": " ".join(sys.argv)})


if __name__ == "__main__":
    main()
