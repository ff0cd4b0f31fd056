"""The comparison, pruning and budget tables from fake run directories (a summary.json and a resolved config each,
no training): pinned to the tables the reports wrote before they shared one results reader
(tests/data/report_tables/, rewrite with SHRINKML_RECORD_TABLES=1 only for an intended change)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from omegaconf import OmegaConf

from shrinkml import inspect_ckpt
from shrinkml.budget import collect
from shrinkml.budget_jobs import BudgetTargets
from shrinkml.budget_report import markdown_table, verdict
from shrinkml.compare import compare, csv_text, markdown, offline_runs
from shrinkml.prune_report import collect_runs
from shrinkml.prune_report import markdown as prune_markdown
from shrinkml.results import RunResult

GOLDEN = Path(__file__).parent / "data" / "report_tables"
DEV, TEST = "dev", "test"


def training_run(run_dir: Path, summary: dict, config: dict | None = None, nonzeros: int = 1000) -> Path:
    """A finished training run: ``summary.json``, ``.hydra/config.yaml`` (chosen on dev) and a checkpoint file
    whose (fake) inspection counts ``nonzeros`` parameters."""
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / "checkpoints").mkdir()
    checkpoint = run_dir / "checkpoints" / "best.ckpt"
    checkpoint.write_text(json.dumps({"nonzeros": nonzeros}))
    config = {"callbacks": {"model_checkpoint": {"monitor": f"wer/{DEV}"}}, **(config or {})}
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (run_dir / "summary.json").write_text(json.dumps({"best_checkpoint": str(checkpoint), **summary}))
    return run_dir


def fake_inspection(path) -> dict:
    nonzeros = json.loads(Path(path).read_text())["nonzeros"]
    return {"totals": {"params": 2 * nonzeros, "nonzeros": nonzeros, "bytes_sparse": 5 * nonzeros,
                       "bytes_int8": 2 * nonzeros},
            "targets": [{"target": "model.ctc_head", "shape": [10, 8], "params": 80, "nonzeros": 80,
                         "bytes_sparse": 320, "bytes_int8": 120}]}


@pytest.fixture
def fake_checkpoints(monkeypatch):
    monkeypatch.setattr(inspect_ckpt, "inspect_checkpoint", fake_inspection)


def check_golden(name: str, text: str, root: Path) -> None:
    text = text.replace(str(root), "<RUNS>")
    path = GOLDEN / name
    if os.environ.get("SHRINKML_RECORD_TABLES"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode())
    assert text == path.read_bytes().decode(), name


def prune_runs(root: Path) -> tuple[list[Path], Path]:
    control = training_run(root / "retrain_dense", {"wer/dev": 20.0, "wer/test": 18.0}, nonzeros=4000)
    runs = []
    for method, sparsity, dev, test, extra in (("magnitude", 0.8, 23.5, 21.25, {}), ("csp", 0.8, 22.0, 20.5, {}),
                                               ("csp", 0.7, 21.0, 19.0, {}),
                                               ("magnitude", 0.7, 21.5, 19.75, {}),
                                               ("csp", 0.8, 24.0, 22.0, {"pattern": "block", "block": [4, 1]})):
        name = f"prune_{method}_{sparsity}" + ("_b4x1" if extra else "")
        compress = {"method": method, "sparsity": sparsity, "pattern": "unstructured", "allocation": "uniform",
                    **extra}
        runs.append(training_run(root / name, {"wer/dev": dev, "wer/test": test, "prune/method": method,
                                               "sparsity": sparsity - 0.001}, {"compress": compress},
                                 nonzeros=int(4000 * (1 - sparsity)) + 100))
    unfinished = root / "prune_csp_0.9"
    unfinished.mkdir()
    on_test = training_run(root / "prune_magnitude_0.9", {"wer/dev": 1.0, "wer/test": 1.0},
                           {"callbacks": {"model_checkpoint": {"monitor": "wer/test"}}})
    return [*runs, unfinished, on_test], control


def test_the_pruning_table_is_unchanged(tmp_path, fake_checkpoints):
    run_dirs, control = prune_runs(tmp_path)
    rows, not_reported = collect_runs(run_dirs, control, [DEV], TEST)
    for i, row in enumerate(rows):  # as the measurement would give them
        row["speedup"], row["speedup_dense_kernels"] = 1.0 + 0.5 * i, 1.0 + 0.1 * i
    rows.sort(key=lambda r: (r["method"] != "dense control", r["pattern"], r["method"], r["target"]))
    check_golden("prune.md", prune_markdown(rows, not_reported), tmp_path)
    check_golden("prune_rows.json", json.dumps({"rows": rows, "not_reported": not_reported}, indent=1), tmp_path)


BUDGET = BudgetTargets("x2", 0.5, 2100, 2.2, 0.55, 1.5, {"encoder.hidden_size": 64}, 5.0)


def test_the_budget_table_is_unchanged(tmp_path, fake_checkpoints):
    out = tmp_path / "budget" / "x2"
    control = training_run(tmp_path / "dense", {f"wer/{DEV}": 20.0, f"wer/{TEST}": 18.0}, nonzeros=4000)
    training_run(out / "magnitude", {f"wer/{DEV}": 21.0, f"wer/{TEST}": 18.5}, nonzeros=1800)
    training_run(out / "student", {f"wer/{DEV}": 20.5, f"wer/{TEST}": 19.5}, nonzeros=2200)
    training_run(out / "svd_automl", {f"wer/{DEV}": 20.2, f"wer/{TEST}": 18.1}, nonzeros=2000)
    (out / "search").mkdir()
    (out / "search" / "report.json").write_text(json.dumps({"summary": {"selected_on": "dev"}}))
    training_run(out / "svd_kd", {f"wer/{DEV}": 19.0, f"wer/{TEST}": 17.0}, nonzeros=2000)
    (out / "svd_kd" / ".hydra" / "config.yaml").unlink()  # how it was chosen is unknown: not reported
    (out / "magnitude" / "int8").mkdir()
    (out / "magnitude" / "int8" / "report.json").write_text(json.dumps({f"wer/{TEST}": 18.75,
                                                                        "speedup/measured": 2.5}))
    cfg = OmegaConf.create({"data": {"dev_splits": [DEV], "test_splits": [TEST]}, "latency": {"measure": False}})
    records = {"dense_control": {"seconds": 1800.0}, "x2/magnitude": {"seconds": 900.0},
               "x2/svd_automl": {"seconds": 600.0}, "x2/search": {"seconds": 300.0},
               "x2/csp": {"status": "failed", "message": "out of memory"}}
    needs = {"x2/svd_automl": ("x2/search",), "x2/svd_kd": ("x2/search",)}
    methods = ["svd_automl", "magnitude", "csp", "student", "svd_kd"]
    table = collect(cfg, SimpleNamespace(total=4200), BUDGET, methods, out, control, records, needs)
    text = "\n".join([markdown_table(table["rows"]), *verdict(table), json.dumps(table, indent=1)])
    check_golden("budget.md", text, tmp_path)


def wandb_run(root: Path, name: str, stage: str | None, summary: dict, mtime: float, **config) -> Path:
    """A run directory as the comparison reads it: its summary and config (read here instead of the W&B log)."""
    run_dir = root / f"run-{name}"
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"stage": stage, **config} if stage else config))
    log = run_dir / f"run-{name}.wandb"
    log.write_text("")
    os.utime(log, (mtime, mtime))
    return run_dir


def read_fake_run(run_dir: Path) -> RunResult:
    summary = json.loads((run_dir / "summary.json").read_text())
    if summary.get("damaged"):
        raise ValueError("wandb leet inspect exited 1: damaged")
    return RunResult(name=run_dir.name.removeprefix("run-"), state=summary.pop("state", "finished"),
                     config=yaml.safe_load((run_dir / "config.yaml").read_text()) or {}, summary=summary,
                     source=str(run_dir))


def test_the_comparison_tables_are_unchanged(tmp_path):
    base = {"params": 3000, "size_mb": 12.0, "wer/dev": 30.0, "wer/test": 28.0}
    retrain = {"params": 900, "size_mb": 3.5, "wer/dev": 33.0, "wer/test": 31.0, "seed/wer/dev": 45.0,
               "provenance": "automl", "speedup/params": 3.9, "speedup/macs": 4.1, "speedup/measured": 2.2,
               "speedup/measured_min": 2.0, "speedup/measured_max": 2.4}
    wandb_run(tmp_path, "baseline", "baseline", base, 100.0, output_dir="runs/baseline")
    wandb_run(tmp_path, "baseline_killed", "baseline", {"wer/dev": 90.0, "state": "crashed"}, 50.0,
              output_dir="runs/baseline")
    wandb_run(tmp_path, "search_optuna_tpe", "search", {"params": 800, "wer/dev": 40.0, "provenance": "automl",
                                                       "speedup/params": 3.7, "speedup/latency": 2.9}, 110.0)
    wandb_run(tmp_path, "retrain_automl", "retrain", retrain, 120.0)
    wandb_run(tmp_path, "retrain_dense", "retrain", {**base, "wer/test": 27.0, "seed/wer/dev": 30.0}, 130.0)
    wandb_run(tmp_path, "quantize_automl", "quantize", {**retrain, "linear": "weight_only", "size_mb": 1.0,
                                                        "bytes/sparse": 1000000, "params/nonzero": 880}, 140.0)
    wandb_run(tmp_path, "sensitivity", "sensitivity", {"wer/dev": 33.0}, 150.0)
    wandb_run(tmp_path, "other", None, base, 160.0)
    wandb_run(tmp_path, "broken", "baseline", {"damaged": True}, 170.0)
    comparison = compare(offline_runs(tmp_path, reader=read_fake_run))
    comparison.stage_times = {"baseline": {"seconds": 1830.0, "finished": "now"},
                              "retrain dense": {"seconds": 600.0, "finished": "later"}}
    check_golden("comparison.md", markdown(comparison, "test"), tmp_path)
    check_golden("comparison.csv", csv_text(comparison, "test"), tmp_path)
