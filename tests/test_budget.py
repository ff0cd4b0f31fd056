"""Compression at a fixed parameter budget (scripts/budget.py): budget arithmetic, students, jobs, honest rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from asr_helpers import corpus_copy_for_runs, shared_dir, tiny_model_config, trained_run

from asr.model.asr_model import AsrModel
from compress.cost import compressed_params
from compress.prune import csp_recover, kept, magnitude_mask
from compress.scheme import Scheme
from compress.targets import discover_targets
from compress.techniques.prune import kept_entries
from shrinkml.budget import goal_for
from shrinkml.budget_jobs import BudgetTargets, Job, budget_jobs, run_jobs
from shrinkml.budget_plan import (
    BudgetError,
    baseline_size,
    budget_label,
    check_student,
    decoded_params,
    explicit_student,
    fit_student,
    parse_budget,
    stored_matrices,
    student_sizes,
)
from shrinkml.budget_report import decoded_size, pareto_front, verdict
from shrinkml.results import RunResult, SelectionError, check_selection, read_config

ROOT = Path(__file__).resolve().parents[1]
WIDTHS = ["encoder.hidden_size", "decoder.embedding_size", "decoder.hidden_size", "decoder.attention_size",
          "decoder.pre_output_size"]


def model_with_ctc(**changes) -> tuple[AsrModel, dict]:
    config = tiny_model_config()
    config["encoder"]["hidden_size"] = 32
    config["decoder"].update(hidden_size=32, attention_size=32, pre_output_size=32, embedding_size=16)
    config["ctc_weight"] = 0.3
    config.update(changes)
    torch.manual_seed(0)
    return AsrModel(30, 20, **config), config


def size_of(model):
    return baseline_size(model, discover_targets(model, ["*"], ["ctc_head"]))


def count(config) -> int:
    return decoded_params(AsrModel(30, 20, **config))


# -- budget arithmetic -------------------------------------------------------------------------------------------

def test_budgets_parse_as_fractions_and_bad_ones_name_the_key():
    assert parse_budget("1/3.7") == pytest.approx(1 / 3.7) and parse_budget(0.2) == 0.2 and parse_budget("1") == 1
    assert budget_label(1 / 3.7) == "x3.7" and budget_label(0.2) == "x5"
    for bad in ("0", "1.5", "abc", "1/0", -0.1):
        with pytest.raises(BudgetError, match="budgets"):
            parse_budget(bad)


def test_decoded_parameters_leave_the_ctc_head_out():
    model, _ = model_with_ctc()
    head = sum(p.numel() for p in model.ctc_head.parameters())
    assert head > 0 and decoded_params(model) == sum(p.numel() for p in model.parameters()) - head


def test_each_method_meets_the_budget_it_is_given():
    model, _ = model_with_ctc()
    size = size_of(model)
    assert size.fixed == size.total - sum(m * n for m, n in size.shapes.values()) > 0
    for fraction in (0.5, 1 / 3.7, 0.2):
        allowed = fraction * size.total
        # sparsity: every target at s keeps at most (1 - s) of its weights, by every method's own rounding
        sparsity = size.sparsity(fraction)
        for method in ("magnitude", "csp"):
            assert size.fixed + sum(kept_entries(shape, sparsity, method) for shape in size.shapes.values()) <= allowed
        assert size.fixed + sum(int((1 - sparsity + 2e-4) * m * n) for m, n in size.shapes.values()) > allowed * 0.99 \
            or any(size.fixed + sum(kept_entries(shape, sparsity - 1e-4, method) for shape in size.shapes.values())
                   > allowed for method in ("magnitude", "csp"))  # and no more than it needs
        # SVD: a_t by parameters over the targets, a little above 1 / b (the fixed part is not compressed)
        a_t = size.svd_speedup(fraction)
        assert a_t > 1 / fraction and size.fixed + size.targets / a_t <= allowed


def test_svd_plus_sparsity_prunes_the_scheme_to_the_rest_of_the_budget():
    model, _ = model_with_ctc()
    size = size_of(model)
    ranks = {name: max(1, min(m, n) // 4) for name, (m, n) in size.shapes.items()}
    scheme = Scheme(ranks=ranks, shapes={k: list(v) for k, v in size.shapes.items()})
    stored = sum(compressed_params(shape, ranks[name]) for name, shape in size.shapes.items())
    fraction = 0.2
    sparsity = size.scheme_sparsity(fraction, scheme)
    assert 0 < sparsity < size.sparsity(fraction)  # the factors hold fewer parameters than the dense targets
    assert size.fixed + (1 - sparsity) * stored <= fraction * size.total + 1


def baseline_model() -> AsrModel:
    """The embedded baseline's architecture as ``make baseline`` builds it (``+experiment=baseline``, the synthetic
    corpus's vocabulary and features), untrained: counting parameters needs no training."""
    from asr_helpers import compose_train
    from omegaconf import OmegaConf

    cfg = compose_train(["+experiment=baseline"])
    torch.manual_seed(0)
    return AsrModel(cfg.data.tokenizer.vocab_size, cfg.data.features.n_mels,
                    **OmegaConf.to_container(cfg.model, resolve=True))


@pytest.mark.parametrize("budget", ["1/3.7", "1/4", "1/5", "1/6", "1/8"])
def test_every_pruning_method_keeps_the_baseline_within_the_budget(budget):
    """CSP keeps the same count in every row (rounded per row): before its sparsity was raised until that count
    fits, the baseline's CSP rows were 37, 897 and 1,199 parameters over the budgets 1/4, 1/6 and 1/8."""
    size = size_of(baseline_model())
    fraction = parse_budget(budget)
    allowed, sparsity = int(fraction * size.total), size.sparsity(fraction)
    csp = size.fixed + sum(m * kept(n, sparsity) for m, n in size.shapes.values())   # kept(n, s) in each of m rows
    magnitude = size.fixed + sum(kept(m * n, sparsity) for m, n in size.shapes.values())  # once per matrix
    assert csp <= allowed and magnitude <= allowed
    assert size.fixed + sum(m * kept(n, sparsity - 0.0015) for m, n in size.shapes.values()) > allowed  # no lower


def test_the_pruned_factors_of_a_scheme_fit_the_budget_by_every_method():
    size = size_of(baseline_model())
    ranks = {name: max(1, min(m, n) // 3) + 1 for name, (m, n) in size.shapes.items()}
    scheme = Scheme(ranks=ranks, shapes={k: list(v) for k, v in size.shapes.items()})
    for fraction in (1 / 6, 1 / 8):
        sparsity = size.scheme_sparsity(fraction, scheme)
        for method in ("magnitude", "csp"):
            stored = sum(kept_entries(shape, sparsity, method) for shape in stored_matrices(size.shapes, scheme))
            assert size.fixed + stored <= int(fraction * size.total), (fraction, method)


@pytest.mark.parametrize("block", [(1, 1), (2, 4)])
@pytest.mark.parametrize("sparsity", [0.3, 0.7672, 0.8951])
def test_the_counted_entries_are_those_the_pruners_keep(block, sparsity):
    weight = torch.randn(16, 40, generator=torch.Generator().manual_seed(0))
    x = torch.randn(200, 40, generator=torch.Generator().manual_seed(1))
    _, csp_mask = csp_recover(weight, x.t() @ x / 200, sparsity, block, "omp", iterations=2)
    assert int(csp_mask.sum()) == kept_entries((16, 40), sparsity, "csp", block)
    assert int(magnitude_mask(weight, sparsity, block).sum()) == kept_entries((16, 40), sparsity, "magnitude", block)


def test_a_budget_no_method_can_reach_is_refused_with_the_smallest_reachable():
    model, _ = model_with_ctc()
    size = size_of(model)
    with pytest.raises(BudgetError, match=f"smallest reachable budget is above {size.smallest_budget:.4f}"):
        size.check(size.smallest_budget * 0.9)
    size.check(size.smallest_budget * 1.1)


# -- the student -------------------------------------------------------------------------------------------------

def test_the_student_is_the_widest_common_scaling_that_fits():
    _, config = model_with_ctc()
    budget = count(config) // 3
    student = fit_student(count, config, WIDTHS, budget, multiple=4)
    assert count(student) <= budget
    assert student["encoder"]["num_layers"] == config["encoder"]["num_layers"]  # depth kept
    assert all(student["decoder"][k] % 4 == 0 for k in ("hidden_size", "attention_size", "embedding_size"))
    wider = json.loads(json.dumps(student))
    for key in WIDTHS:  # one multiple more everywhere no longer fits
        group, name = key.split(".")
        wider[group][name] += 4
    assert count(wider) > budget


def test_a_student_that_does_not_fit_is_refused_naming_the_sizes():
    _, config = model_with_ctc()
    with pytest.raises(BudgetError, match=r"student.model \{'encoder.hidden_size': 32.*over the budget"):
        check_student(count, config, WIDTHS, count(config) - 1)
    with pytest.raises(BudgetError, match="no student fits 10 parameters"):
        fit_student(count, config, WIDTHS, 10)
    with pytest.raises(BudgetError, match="student.widths: 'encoder.width'"):
        fit_student(count, config, ["encoder.width"], 10**6)


def test_an_explicit_student_keeps_the_baseline_s_other_keys_and_its_own_reach_the_job(tmp_path):
    _, config = model_with_ctc()
    student, given = explicit_student(config, {"encoder": {"hidden_size": 16, "pool": [2, 1]}})
    assert student["encoder"]["hidden_size"] == 16 and student["encoder"]["pool"] == [2, 1]
    assert student["decoder"] == config["decoder"] and config["encoder"]["hidden_size"] == 32  # a copy
    assert given == {"encoder.hidden_size": 16, "encoder.pool": [2, 1]}
    assert count(student) < count(config)
    with pytest.raises(BudgetError, match="student.model: 'encoder.width' is not a key"):
        explicit_student(config, {"encoder": {"width": 16}})
    target = BudgetTargets("x3.7", 1 / 3.7, 1000, 3.944, 0.7465, 1.986, {**student_sizes(student, WIDTHS), **given})
    plain = next(j for j in budget_jobs(target, ["student"], tmp_path, SETTINGS, None) if j.name == "x3.7/student")
    assert {"model.encoder.hidden_size=16", "model.encoder.pool=[2, 1]", "model.decoder.hidden_size=32"} <= set(
        plain.arguments())


# -- jobs --------------------------------------------------------------------------------------------------------

TARGET = BudgetTargets("x3.7", 1 / 3.7, 1000, 3.944, 0.7465, 1.986, {"encoder.hidden_size": 120})
SETTINGS = {"baseline": "base.ckpt", "group": "budget", "search_overrides": ["search=aggressive"],
            "student_epochs": 33, "distill": {"weight": 1.0, "temperature": 2.0}, "quantize": True,
            "extra": {"train": ["data.root=/corpus"], "magnitude": ["compress.pattern=block"]}}
METHODS = ("svd_automl", "svd_guided", "magnitude", "csp", "student_kd", "student", "svd_kd", "svd_sparse", "joint")


def test_every_method_becomes_the_project_command_with_the_budget_s_setting(tmp_path):
    jobs = {job.name: job for job in budget_jobs(TARGET, METHODS, tmp_path, SETTINGS, lambda scheme: 0.61)}
    args = {name: job.arguments() if name.split("/")[-1] not in ("svd_sparse", "int8") else None
            for name, job in jobs.items()}
    assert "search.target_speedup=3.944" in args["x3.7/search"] and jobs["x3.7/search"].script == "search.py"
    assert "speedups=[3.944]" in args["x3.7/manual"] and "speedups=[1.986]" in args["x3.7/manual_combo"]
    assert jobs["x3.7/svd_guided"].needs == ("x3.7/manual",) and jobs["x3.7/svd_sparse"].needs == ("x3.7/manual_combo",)
    automl = args["x3.7/svd_automl"]
    assert "+experiment=retrain" in automl and f"compress.scheme={tmp_path / 'search' / 'best_scheme.json'}" in automl
    assert jobs["x3.7/svd_automl"].needs == ("x3.7/search",)
    assert f"compress.scheme={tmp_path / 'manual' / 'schemes' / 'guided-3.944x.json'}" in args["x3.7/svd_guided"]
    magnitude = args["x3.7/magnitude"]
    assert "compress.sparsity=0.7465" in magnitude and "compress.method=magnitude" in magnitude
    assert magnitude.index("data.root=/corpus") < magnitude.index("+experiment=prune")  # the budget's own win
    assert "compress.pattern=block" in magnitude and "compress.pattern=block" not in args["x3.7/csp"]
    kd, plain = args["x3.7/student_kd"], args["x3.7/student"]
    assert "model.encoder.hidden_size=120" in plain and "trainer.max_epochs=33" in plain
    assert "module.distill.teacher=base.ckpt" in kd and not any("distill" in a for a in plain)
    assert "+experiment=retrain_kd" in args["x3.7/svd_kd"]
    assert "prune.sparsity=0.61" in jobs["x3.7/svd_sparse"].arguments()
    joint = args["x3.7/joint_search"]
    assert "search.space.kind=joint" in joint and "search.target_speedup=3.944" in joint
    assert f"output_dir={tmp_path / 'joint_search'}" in joint and jobs["x3.7/joint"].needs == ("x3.7/joint_search",)
    assert f"compress.scheme={tmp_path / 'joint_search' / 'best_scheme.json'}" in args["x3.7/joint"]
    trained = [n for n, j in jobs.items() if j.script == "train.py"]
    assert len(trained) == 9 and all(f"{n}/int8" in jobs for n in trained)
    assert all(f"hydra.run.dir={tmp_path / n.split('/')[1]}" in args[n] for n in trained if args[n])
    (tmp_path / "svd_automl" / "checkpoints").mkdir(parents=True)
    (tmp_path / "svd_automl" / "checkpoints" / "last.ckpt").write_text("")
    assert jobs["x3.7/svd_automl"].arguments()[-1] == f"ckpt_path={tmp_path / 'svd_automl/checkpoints/last.ckpt'}"


def test_one_table_names_every_method_its_label_sparsity_and_shared_job():
    from hydra import compose, initialize_config_dir

    from shrinkml.budget_jobs import METHODS as TABLE
    from shrinkml.budget_report import LABELS, SPARSE_METHODS

    assert tuple(TABLE) == METHODS and SPARSE_METHODS == ("magnitude", "csp", "svd_sparse", "joint")
    assert set(LABELS) == {"dense_control", *METHODS} and LABELS["csp"] == "CSP sparsity"
    assert {name for name, method in TABLE.items() if method.needs == "search"} == {"svd_automl", "svd_kd"}
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        assert set(compose("budget").methods) <= set(TABLE)
    only = {job.name for job in budget_jobs(TARGET, ["svd_kd"], Path("out"), {**SETTINGS, "quantize": False}, None)}
    assert only == {"x3.7/search", "x3.7/svd_kd"}  # a method brings the shared job it needs, nothing else


def test_jobs_run_once_resume_and_a_failure_skips_only_what_needs_it(tmp_path):
    launched = []

    def launch(argv, log_path):
        job = argv[1]
        launched.append(job)
        if job == "fails.py":
            return 1, "search: search.target_speedup=9 is out of reach"
        (tmp_path / job).write_text("done")
        return 0, ""

    jobs = [Job("a", "a.py", [], tmp_path / "a.py"), Job("f", "fails.py", [], tmp_path / "fails.py"),
            Job("needs_f", "g.py", [], tmp_path / "g.py", ("f",)),
            Job("needs_a", "h.py", [], tmp_path / "h.py", ("a",))]
    state = tmp_path / "state.json"
    records = run_jobs(jobs, state, launch, python="py")
    assert launched == ["a.py", "fails.py", "h.py"]
    assert records["f"]["status"] == "failed" and "out of reach" in records["f"]["message"]
    assert records["needs_f"] == {"seconds": 0.0, "status": "skipped", "message": "needs f"}
    assert json.loads(state.read_text())["jobs"]["needs_a"]["status"] == "done"
    launched.clear()
    run_jobs(jobs, state, launch, python="py")
    assert launched == ["fails.py"]  # finished jobs are not run again; the failed one is retried


def test_an_interrupted_attempt_is_counted_until_its_log_stopped(tmp_path):
    state = tmp_path / "state.json"
    log_file = tmp_path / "logs" / "x3.7_a.log"
    log_file.parent.mkdir()
    log_file.write_text("epoch 3\n")
    started = time.time() - 1000
    os.utime(log_file, (started + 600, started + 600))  # the killed run wrote its last line 600 s in
    state.write_text(json.dumps({"jobs": {"x3.7/a": {"seconds": 50.0, "status": "running", "started": started}}}))

    def launch(argv, log_path):
        assert json.loads(state.read_text())["jobs"]["x3.7/a"]["status"] == "running"  # visible while it runs
        (tmp_path / "a.done").write_text("")
        return 0, ""

    record = run_jobs([Job("x3.7/a", "a.py", [], tmp_path / "a.done")], state, launch, python="py")["x3.7/a"]
    assert 650.0 <= record["seconds"] < 660.0
    assert record["status"] == "done" and record["interrupted"] == 1 and "started" not in record


# -- honest rows -------------------------------------------------------------------------------------------------

def write_run_config(run_dir: Path, monitor: str) -> None:
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"callbacks": {"model_checkpoint":
                                                                                  {"monitor": monitor}}}))


def saved_run(run_dir: Path) -> RunResult:
    return RunResult(run_dir.name, config=read_config(run_dir), source=str(run_dir))


def test_a_row_chosen_on_test_is_not_reported(tmp_path):
    write_run_config(tmp_path / "dev", "wer/dev")
    assert check_selection(saved_run(tmp_path / "dev"), ["dev"])["callbacks"]["model_checkpoint"]["monitor"] == \
        "wer/dev"
    write_run_config(tmp_path / "test", "wer/test")
    with pytest.raises(SelectionError, match="chose its checkpoint on 'wer/test'"):
        check_selection(saved_run(tmp_path / "test"), ["dev"])
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"summary": {"selected_on": "test"}}))
    with pytest.raises(SelectionError, match="chose its scheme on 'test'"):
        check_selection(saved_run(tmp_path / "dev"), ["dev"], report)
    with pytest.raises(SelectionError, match="is missing"):
        check_selection(saved_run(tmp_path / "none"), ["dev"])


def test_decoded_size_and_pareto_front():
    inspected = {"totals": {"params": 1000, "nonzeros": 900, "bytes_sparse": 3000, "bytes_int8": 1200},
                 "targets": [{"target": "model.ctc_head", "shape": [10, 8], "params": 80, "nonzeros": 80,
                              "bytes_sparse": 320, "bytes_int8": 120}]}
    assert decoded_size(inspected) == {"params": 910, "nonzeros": 810, "bytes_fp32": 2640, "bytes_int8": 1040}
    assert pareto_front([(3, 10.0), (1, 12.0), (2, 11.0), (4, 10.5), (5, 9.0)]) == [(1, 12.0), (2, 11.0), (3, 10.0),
                                                                                     (5, 9.0)]


def test_the_verdict_chooses_on_dev_and_states_the_goal_with_and_without_sparse_kernels():
    def row(key, dev, test, vs, speed, dense_kernels=None, fits=True):
        return {"key": key, "method": key, "wer_dev": dev, "wer_test": test, "vs_control": vs, "speedup": speed,
                "speedup_dense_kernels": dense_kernels, "fits": fits}

    rows = [row("dense_control", 10.0, 10.0, 0.0, 1.0, fits=None),
            row("svd_automl", 10.4, 10.9, 9.0, 2.3),                     # best on dev, worse on test
            row("student", 10.6, 10.1, 1.0, 1.6),                        # best on test: never chosen
            row("magnitude", 10.45, 11.0, 10.0, 2.6, dense_kernels=1.0),  # fastest only with the sparse kernels
            row("csp", 9.0, 9.0, -10.0, 9.0, fits=False)]                # over the budget: out
    lines = verdict({"label": "x3.7", "goal_percent": 5.0, "rows": rows})
    assert lines[0].startswith("x3.7: best on dev: svd_automl (dev 10.40, test 10.90, 9.0%")
    assert "goal, the best method within +5% of the dense control's test WER: not met (svd_automl, +9.0%)" in lines[1]
    assert "with the sparse kernels: magnitude 2.60x" in lines[2]
    assert "without them: svd_automl 2.30x" in lines[3]
    assert ": met (svd_automl, +9.0%)" in verdict({"label": "x3.7", "goal_percent": 10.0, "rows": rows})[1]
    assert len(verdict({"label": "x3.7", "goal_percent": None, "rows": rows})) == 1
    assert goal_for({"1/3.7": 2, "1/5": 5}, 1 / 5) == 5.0 and goal_for({"1/3.7": 2}, 0.5) is None
    with pytest.raises(BudgetError, match="goals: key 'half'"):
        goal_for({"half": 2}, 0.5)


def test_a_goal_for_another_budget_is_added_on_the_command_line_as_the_config_says():
    """conf/budget.yaml documents '+goals={1/9:10}': the new budget's goal is added, the defaults stay."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        goals = compose("budget", overrides=["+goals={1/9:10}"]).goals
    assert goal_for(goals, 1 / 9) == 10.0 and goal_for(goals, 1 / 5) == 5.0


# -- the command -------------------------------------------------------------------------------------------------

def run_budget_script(*overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "budget.py"), *overrides], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)


def quoted(overrides: list[str]) -> str:
    """A Hydra list of override strings (each holds ``=``, so each is quoted)."""
    return "[" + ",".join(f"'{o}'" for o in overrides) + "]"


def test_budget_py_runs_the_methods_tabulates_them_and_resumes(tiny_corpus, tmp_path_factory, tmp_path):
    base = shared_dir(tmp_path_factory)
    run_dir, _ = trained_run(tiny_corpus, base)
    baseline = run_dir / "checkpoints" / "last.ckpt"
    corpus = corpus_copy_for_runs(tiny_corpus, base)
    data = [f"data.root={corpus}", f"data.cache_dir={base / 'features'}", "data.tokenizer.vocab_size=40",
            f"data.tokenizer.dir={base / 'tokenizer'}", "data.feature_jobs=1", "data.progress=false"]
    quiet = ["callbacks.progress_bar=null", "trainer.enable_progress_bar=false", "decoding.beam_size=2",
             "data.batch_size=8", "data.eval_batch_size=8"]
    train = [*data, *quiet, "trainer.max_epochs=2", "measure_speedup.reference=null", "module.ctc_pretrain_steps=0"]
    out = tmp_path / "budget"
    overrides = [f"baseline={baseline}", "budgets=[1/2]", "methods=[magnitude,student]", f"output_dir={out}",
                 f"dense_control={tmp_path / 'dense'}", "student.epochs=2", "student.multiple=2", "wandb=false",
                 "latency.utterances=2", "latency.repeats=1", "decoding.beam_size=2", *data,
                 f"job_overrides.train={quoted(train)}", f"job_overrides.quantize={quoted(data)}",
                 f"+job_overrides.magnitude={quoted(['compress.frequency=1', 'compress.updates=2'])}"]
    result = run_budget_script(*overrides)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((out / "budget.json").read_text())["budgets"][0]
    rows = {row["key"]: row for row in report["rows"]}
    assert set(rows) == {"dense_control", "magnitude", "student"}, report["not_reported"]
    assert rows["magnitude"]["fits"] and rows["student"]["fits"] and rows["magnitude"]["params"] <= report["params"]
    assert rows["dense_control"]["params"] > 2 * rows["magnitude"]["params"] * 0.95
    for row in rows.values():
        assert row["wer_dev"] is not None and row["wer_test"] is not None and row["speedup"] > 0
        assert row["wer_test_int8"] is not None and row["mb_int8"] < row["mb_fp32"]
    assert rows["magnitude"]["speedup_dense_kernels"] > 0 and rows["student"].get("speedup_dense_kernels") is None
    assert "| magnitude sparsity |" in (out / "budget.md").read_text()
    assert (out / "budget_params.png").is_file() and (out / "budget_latency.png").is_file()
    state = json.loads((out / "state.json").read_text())
    assert all(record["status"] == "done" for record in state["jobs"].values()), state
    logs = {p.name: p.stat().st_mtime_ns for p in (out / "logs").iterdir()}
    again = run_budget_script(*overrides)
    assert again.returncode == 0, again.stderr[-4000:]
    assert {p.name: p.stat().st_mtime_ns for p in (out / "logs").iterdir()} == logs  # nothing ran again
    # the pruning report over the same runs: the magnitude run against the dense control
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    report = subprocess.run([sys.executable, str(ROOT / "scripts" / "prune_report.py"), f"runs_dir={out / 'x2'}",
                             "runs=magnitude", f"dense_control={tmp_path / 'dense'}", f"baseline={baseline}",
                             f"output_dir={tmp_path / 'prune_report'}", "latency.utterances=2", "latency.repeats=1",
                             "decoding.beam_size=2", *data], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert report.returncode == 0, report.stderr[-4000:]
    pruned = json.loads((tmp_path / "prune_report" / "prune.json").read_text())
    methods = [r["method"] for r in pruned["rows"]]
    assert methods == ["dense control", "magnitude"], pruned
    magnitude = pruned["rows"][1]
    assert abs(magnitude["sparsity"] - magnitude["target"]) < 0.01 and magnitude["speedup_dense_kernels"] > 0
    assert pruned["goals"][1] == "at 80%: not measured yet"
    assert (tmp_path / "prune_report" / "prune_wer_sparsity.png").is_file()


def test_budget_py_refuses_an_unreachable_budget_in_one_line(tiny_corpus, tmp_path_factory, tmp_path):
    base = shared_dir(tmp_path_factory)
    run_dir, _ = trained_run(tiny_corpus, base)
    result = run_budget_script(f"baseline={run_dir / 'checkpoints' / 'last.ckpt'}", "budgets=[0.001]",
                               f"output_dir={tmp_path}")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "budget: budgets: 0.001 of the baseline" in result.stderr and "smallest reachable budget" in result.stderr


CONFIG_OF = {"train.py": "train", "search.py": "search", "scripts/manual_baselines.py": "manual",
             "scripts/quantize.py": "quantize"}


def test_every_job_s_overrides_compose_with_its_script_s_config(tmp_path):
    """What scripts/budget.py passes each command is a valid override of that command's config, with the
    budget's setting in force (checked on the composed config, as the command would see it)."""
    from hydra import compose, initialize_config_dir

    jobs = budget_jobs(TARGET, METHODS, tmp_path, {**SETTINGS, "extra": {}}, lambda scheme: 0.61)
    for job in jobs:
        if job.script == "train.py":
            job.run_dir.mkdir(parents=True, exist_ok=True)
            (job.run_dir / "summary.json").write_text(json.dumps({"best_checkpoint": "best.ckpt"}))
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        for job in jobs:
            overrides = job.arguments()
            cfg = compose(CONFIG_OF[job.script], overrides=overrides, return_hydra_config=True)
            assert cfg.logger.wandb.group == "budget", job.name
            if job.script == "train.py":  # never the baseline's own directory (+experiment=baseline names it)
                assert cfg.hydra.run.dir == str(tmp_path / job.name.split("/")[1]), job.name
            if job.name.endswith("/magnitude"):
                assert cfg.compress.sparsity == 0.7465 and cfg.compress.method == "magnitude"
                assert cfg.hydra.run.dir == str(tmp_path / "magnitude") and cfg.trainer.max_epochs == 13
            if job.name.endswith("/student_kd"):
                assert cfg.model.encoder.hidden_size == 120 and cfg.trainer.max_epochs == 33
                assert cfg.module.distill.weight == 1.0 and cfg.module.distill.temperature == 2.0
            if job.name.endswith("/svd_sparse"):
                assert cfg.prune.sparsity == 0.61
                assert cfg.compress.scheme.endswith("manual_combo/schemes/guided-1.986x.json")
            if job.name.endswith("/search"):
                assert cfg.search.target_speedup == 3.944 and cfg.output_dir == str(tmp_path / "search")
            if job.name.endswith("/int8"):
                assert cfg.ckpt == "best.ckpt" and cfg.output_dir.endswith("int8")
