#!/usr/bin/env python
"""RL search against random search over several seeds, same budget (does RL beat random search?).

    python benchmarks/search_seeds.py --seeds 0 1 2                       # aggressive, its configured steps
    python benchmarks/search_seeds.py --seeds 0 1 2 --variant penalty=search.feasibility=penalty \\
        --variant random=search=random                                   # any search.py overrides per variant

Each variant is a list of ``search.py`` overrides (``name=override,override,...``); every variant runs
once per seed through the real entry point, into ``runs/bench_search/<name>-s<seed>/`` (a finished run
is read back, not rerun, so an interrupted benchmark continues). Per run it prints the schemes decoded,
the best proxy WER among the explored schemes meeting ``a_t``, the result scheme's whole-dev WER (what
it was chosen on), test WER and speed-up and the wall time; per variant the mean and the best over seeds.
Prints numbers, asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VARIANTS = ["rl=search=aggressive", "random=search=random"]


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, overrides = text.partition("=")
    if not name or not overrides:
        raise SystemExit(f"--variant {text!r}: expected name=override[,override...]")
    return name, overrides.split(",")


def explored_points(out: Path) -> list[dict]:
    points = []
    for path in sorted(out.glob("explored-rank*.jsonl")):
        points += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return points


def run_one(name: str, overrides: list[str], seed: int, steps: int | None, out_root: Path) -> dict:
    out = out_root / f"{name}-s{seed}"
    report = out / "report.json"
    started = time.time()
    if not report.is_file():
        command = [sys.executable, str(ROOT / "search.py"), *overrides, f"seed={seed}", f"output_dir={out}",
                   "logger=csv", "on_stale=restart", "trainer.enable_progress_bar=false"]
        if steps is not None:
            command.append(f"search.steps={steps}")
        print("running:", " ".join(command), flush=True)
        subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    summary = json.loads(report.read_text())["summary"]
    points = explored_points(out)
    meeting = [p for p in points if p["speedup"] >= summary["target_speedup"]]
    dev_key = f"wer/{summary['selected_on']}" if "selected_on" in summary else None
    test_key = next((k for k in summary if k.startswith("wer/") and k != dev_key), None)
    return {"variant": name, "seed": seed, "decoded": len(points),
            "best_proxy_wer": min((p["wer"] for p in meeting), default=None),
            "dev_wer": summary.get(dev_key), "test_wer": summary.get(test_key),
            "speedup": summary.get("speedup/params"),
            "found_at_step": summary.get("found_at_step"), "minutes": summary["search_wall_seconds"] / 60,
            "ran_minutes": (time.time() - started) / 60}


def fmt(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="search.steps (default: the search config's)")
    parser.add_argument("--variant", action="append", default=None, help="name=override[,override...]")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_search")
    args = parser.parse_args()
    variants = [parse_variant(v) for v in (args.variant or DEFAULT_VARIANTS)]
    results = [run_one(name, overrides, seed, args.steps, args.out) for name, overrides in variants
               for seed in args.seeds]
    print("\n| variant | seed | decoded | best proxy WER | dev WER | test WER | speed-up | found at step | minutes |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['variant']} | {r['seed']} | {r['decoded']} | {fmt(r['best_proxy_wer'])} | {fmt(r['dev_wer'])} | "
              f"{fmt(r['test_wer'])} | {fmt(r['speedup'])} | {r['found_at_step']} | {fmt(r['minutes'], 1)} |")
    print("\n| variant | mean best proxy WER | mean test WER | best test WER | mean decoded |")
    print("|---|---|---|---|---|")
    for name, _ in variants:
        rows = [r for r in results if r["variant"] == name]
        proxy = [r["best_proxy_wer"] for r in rows if r["best_proxy_wer"] is not None]
        test = [r["test_wer"] for r in rows if r["test_wer"] is not None]
        print(f"| {name} | {fmt(statistics.mean(proxy) if proxy else None)} | "
              f"{fmt(statistics.mean(test) if test else None)} | {fmt(min(test) if test else None)} | "
              f"{statistics.mean(r['decoded'] for r in rows):.0f} |")


if __name__ == "__main__":
    main()
