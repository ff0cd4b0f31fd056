"""scripts/compare_runs.py: rows from stage runs, skipped runs with reasons, the dense control and the
table against it, legible figures, on real offline W&B runs it did not create (including a damaged one)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shrinkml.compare import (
    compare,
    csv_text,
    find_offline_runs,
    markdown,
    offline_runs,
    pareto_figure,
    read_online_runs,
    read_stage_times,
    retraining_figure,
    write_outputs,
)
from shrinkml.results import RunResult

ROOT = Path(__file__).resolve().parents[1]


def run(name, stage, summary, source=None, order=0.0, output_dir=None, state="finished"):
    config = {"stage": stage, "output_dir": output_dir or f"runs/{name}"} if stage else {}
    return RunResult(name=name, state=state, config=config, summary=summary, source=source or name, order=order)


BASELINE = {"params": 3000, "size_mb": 12.0, "wer/dev": 30.0, "wer/test": 28.0}
RETRAIN = {"params": 900, "size_mb": 3.5, "wer/dev": 33.0, "wer/test": 31.0, "seed/wer/dev": 45.0,
           "provenance": "automl", "speedup/params": 3.9, "speedup/macs": 4.1}


def test_rows_skips_and_supersedes():
    result = compare([
        run("baseline", "baseline", BASELINE, order=2.0),
        run("baseline", "baseline", {"wer/dev": 90.0}, source="killed", order=1.0, state="crashed"),
        run("baseline-old", "baseline", {**BASELINE, "wer/test": 50.0}, source="old", order=0.5,
            output_dir="runs/baseline"),
        run("retrain_automl", "retrain", RETRAIN),
        run("sensitivity", "sensitivity", {"wer/dev": 33.0}),
        run("someone-else", None, BASELINE),
        RunResult(name="broken", state="unknown", config={}, summary={}, source="broken"),
    ])
    assert [(r["stage"], r["name"]) for r in result.rows] == [("baseline", "baseline"), ("baseline", "baseline-old"),
                                                              ("retrain", "retrain_automl")]
    reasons = dict(result.skipped)
    assert "state crashed" in reasons["killed"]
    assert "describes no single model" in reasons["sensitivity"]
    assert "no 'stage'" in reasons["someone-else"]
    assert "damaged" in reasons["broken"]
    assert result.rows[0]["speedup/params"] == 1.0 and result.rows[0]["provenance"] == "dense"
    assert result.columns[-1] == "seed/wer/dev"
    table = markdown(result, "test")
    assert "| AutoML retrained | retrain | retrain_automl | automl | 3.90 | 4.10 |" in table and "Skipped runs" in table
    assert "| baseline (baseline) |" in table and "| baseline (baseline-old) |" in table  # same label: the name added
    assert "No dense control run" in table


def test_same_stage_into_the_same_directory_keeps_the_newest():
    result = compare([run("baseline", "baseline", {**BASELINE, "wer/test": 40.0}, source="first", order=1.0),
                      run("baseline", "baseline", BASELINE, source="resumed", order=2.0)])
    assert [r["source"] for r in result.rows] == ["resumed"]
    assert result.skipped == [("first", "superseded by the newer run resumed")]


def test_outputs_are_written(tmp_path):
    (tmp_path / "times.json").write_text('{"baseline": {"seconds": 1830.0, "finished": "now"}, "bad": 3}')
    result = compare([run("baseline", "baseline", BASELINE), run("retrain_automl", "retrain", RETRAIN),
                      run("retrain_guided", "retrain", {**RETRAIN, "provenance": "guided", "seed/wer/dev": 60.0})])
    result.stage_times = read_stage_times(tmp_path / "times.json")
    assert "| baseline | 30.5 | now |" in markdown(result, "test") and "bad" not in markdown(result, "test")
    written = write_outputs(result, tmp_path, "test")
    assert set(written) == {"markdown", "csv", "pareto", "retraining"}
    assert Path(written["markdown"]).read_text().startswith("![pareto](pareto.png)\n![retraining](retraining.png)")
    rows = list(csv.DictReader(Path(written["csv"]).read_text().splitlines()))
    assert [r["name"] for r in rows] == ["baseline", "retrain_automl", "retrain_guided"]
    assert float(rows[2]["seed/wer/dev"]) == 60.0 and rows[0]["speedup/measured"] == "1.0"
    assert Path(written["pareto"]).stat().st_size > 1000


CONTROL = {"params": 3000, "size_mb": 12.0, "wer/dev": 29.0, "wer/test": 27.0, "seed/wer/dev": 30.0,
           "speedup/measured": 0.98}  # train.py +experiment=retrain_dense: no provenance, no estimated speed-up


def pipeline_runs():
    """Every stage of one pipeline: baseline, the search, the dense control and two retrained seeds, and the
    retrained AutoML model in int8 in both Linear modes."""
    return [
        run("baseline", "baseline", BASELINE),
        run("search_aggressive", "search", {"provenance": "automl", "speedup/params": 3.9, "speedup/macs": 4.1,
                                            "speedup/latency": 2.4, "wer/test": 45.0}),
        run("retrain_automl", "retrain", {**RETRAIN, "speedup/latency": 2.6, "speedup/measured": 2.3,
                                          "speedup/measured_min": 2.21, "speedup/measured_max": 2.35}),
        run("retrain_guided", "retrain", {**RETRAIN, "provenance": "guided", "wer/test": 29.0, "seed/wer/dev": 60.0}),
        run("retrain_dense", "retrain", CONTROL),
        run("quantize_automl", "quantize", {**RETRAIN, "linear": "weight_only", "size_mb": 1.27,
                                            "speedup/latency": 2.6, "speedup/measured": 2.15, "wer/test": 30.5}),
        run("quantize_automl_dynamic", "quantize", {**RETRAIN, "linear": "dynamic", "size_mb": 1.26,
                                                    "speedup/measured": 0.74, "wer/test": 31.0}),
    ]


def test_dense_control_row_and_the_table_against_it():
    result = compare(pipeline_runs())
    result.stage_times = {"baseline": {"seconds": 1800.0}, "retrain automl": {"seconds": 1230.0},
                          "retrain dense": {"seconds": 1260.0}, "quantize": {"seconds": 60.0}}
    assert [r["name"] for r in result.rows if r["stage"] == "retrain"] == ["retrain_dense", "retrain_automl",
                                                                           "retrain_guided"]
    control = result.reference("control")
    assert control["name"] == "retrain_dense" and control["model"] == "dense control"
    assert control["provenance"] == "dense" and control["speedup/params"] == 1.0 and control["speedup/macs"] == 1.0
    assert control["speedup/measured"] == 0.98  # a measured value is kept as measured
    table = markdown(result, "test")
    assert "| dense control | retrain | retrain_dense | dense | 1.00 | 1.00 | 1.00 | 0.98 |" in table
    section = table[table.index("Against the dense control"):]
    assert "Dense control: `retrain_dense`" in section and "search_aggressive" not in section
    # AutoML 31.0 against the control's 27.0 and the baseline's 28.0; the control against the baseline: -3.6
    assert ("| AutoML retrained | retrain_automl | 3.90 | 4.10 | 2.60 | 2.30 (2.21-2.35) | 3.50 | 31.00 | +14.8 "
            "| +10.7 | 20.5 |") in section
    assert "| guided retrained | retrain_guided | 3.90 | 4.10 | - | - | 3.50 | 29.00 | +7.4 | +3.6 |  |" in section
    assert ("| dense control | retrain_dense | 1.00 | 1.00 | 1.00 | 0.98 | 12.00 | 27.00 | reference | -3.6 | 21.0 |"
            in section)
    assert "| baseline | baseline | 1.00 | 1.00 | 1.00 | 1.00 | 12.00 | 28.00 | +3.7 | reference | 30.0 |" in section
    assert "| retrain dense | 21.0 |" in table  # the stage wall times keep every recorded stage
    rows = {r["name"]: r for r in csv.DictReader(io.StringIO(csv_text(result, "test")))}
    assert float(rows["retrain_automl"]["wer/test_change_vs_control_pct"]) == pytest.approx(14.815, abs=1e-3)
    assert rows["retrain_dense"]["wer/test_change_vs_control_pct"] == "" and rows["search_aggressive"]["model"]
    assert float(rows["retrain_dense"]["wall_seconds"]) == 1260.0
    assert "No dense control run" in markdown(compare(pipeline_runs()[:4]), "test")


def test_a_compressed_retrain_is_not_the_control():
    result = compare([run("retrain_x", "retrain", {**RETRAIN, "provenance": ""}),
                      run("retrain_dense", "retrain", {**CONTROL, "provenance": "dense", "speedup/params": 1.0})])
    assert {r["name"]: r["role"] for r in result.rows} == {"retrain_dense": "control", "retrain_x": "model"}


def test_quantized_rows_show_size_measured_speedup_and_linear_mode():
    result = compare(pipeline_runs() + [run("quantize_old", "quantize", {**RETRAIN, "speedup/measured": 1.1})])
    table = markdown(result, "test")
    assert ("| AutoML int8 weight-only | quantize | quantize_automl | automl | 3.90 | 4.10 | 2.60 | 2.15 | 900.00 "
            "| 1.27 |" in table)
    assert ("| AutoML int8 dynamic | quantize | quantize_automl_dynamic | automl | 3.90 | 4.10 | - | 0.74 | 900.00 "
            "| 1.26 |" in table)
    assert "| AutoML int8 | quantize | quantize_old |" in table  # a summary without the mode: no mode claimed


def test_estimated_and_measured_speedups_side_by_side():
    """speedup/latency (scheme estimates and search summaries) is read like speedup/macs: a column between
    the other estimates and the measured speed-up; absent, '-' in Markdown and empty in the CSV."""
    result = compare(pipeline_runs())
    columns = result.columns
    assert columns[4:8] == ["speedup/params", "speedup/macs", "speedup/latency", "speedup/measured"]
    rows = {r["name"]: r for r in result.rows}
    assert rows["search_aggressive"]["speedup/latency"] == 2.4 and rows["retrain_automl"]["speedup/latency"] == 2.6
    assert rows["retrain_guided"]["speedup/latency"] is None and rows["baseline"]["speedup/latency"] == 1.0
    table = markdown(result, "test")
    header = table.splitlines()[0]
    assert "| speedup/params | speedup/macs | speedup/latency | speedup/measured |" in header
    assert "| AutoML search | search | search_aggressive | automl | 3.90 | 4.10 | 2.40 | - |" in table
    assert "| AutoML retrained | retrain | retrain_automl | automl | 3.90 | 4.10 | 2.60 | 2.30 (2.21-2.35) |" in table
    assert "| guided retrained | retrain | retrain_guided | guided | 3.90 | 4.10 | - | - |" in table
    assert "| est. speed-up (params) | est. (MACs) | est. (latency) | measured speed-up |" in table
    csv_rows = {r["name"]: r for r in csv.DictReader(io.StringIO(csv_text(result, "test")))}
    assert csv_rows["search_aggressive"]["speedup/latency"] == "2.4"
    assert csv_rows["retrain_guided"]["speedup/latency"] == "" and csv_rows["baseline"]["speedup/latency"] == "1.0"
    assert csv_rows["retrain_automl"]["speedup/measured_min"] == "2.21"
    assert csv_rows["retrain_automl"]["speedup/measured_max"] == "2.35"
    assert csv_rows["quantize_automl"]["speedup/measured_min"] == ""


def drawn_text_boxes(fig):
    """(text, window box) of every text drawn in ``fig`` after the layout ``save_figure`` gives it: titles,
    axis and tick labels in view, legend entries, annotations, bar values."""
    from matplotlib.text import Text

    fig.tight_layout()
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    tick_labels, shown = set(), []
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            low, high = sorted(axis.get_view_interval())
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                tick_labels.update({id(tick.label1), id(tick.label2)})
                if ax.axison and tick.get_loc() is not None and low - 1e-9 <= tick.get_loc() <= high + 1e-9:
                    shown += [tick.label1, tick.label2]
    texts = [t for t in fig.findobj(Text) if id(t) not in tick_labels] + shown
    return [(t.get_text(), t.get_window_extent(renderer)) for t in texts if t.get_visible() and t.get_text().strip()]


def assert_no_overlapping_text(fig):
    boxes = drawn_text_boxes(fig)
    assert len(boxes) > 10
    for i, (text, box) in enumerate(boxes):
        for other, other_box in boxes[i + 1:]:
            assert not box.shrunk(0.98, 0.98).overlaps(other_box.shrunk(0.98, 0.98)), f"{text!r} overlaps {other!r}"


def test_figures_are_legible(tmp_path):
    from compress.figures import pyplot

    result = compare(pipeline_runs())
    fig = pareto_figure(result, "test")
    estimated, measured, legend_axes = fig.axes
    final = [r for r in result.rows if r["stage"] != "search"]  # the search's scheme (not retrained): table only
    entries = [t.get_text() for t in legend_axes.get_legend().get_texts()]
    assert len(entries) == len(final) == 6 and len(set(entries)) == len(entries)
    assert entries[0] == "baseline" and "dense control\nretrain_dense" in entries
    assert any(e.startswith("guided retrained") and e.endswith("(not measured)") for e in entries)
    assert "search rows (not retrained): in the table" in legend_axes.get_legend().get_title().get_text()
    handles = legend_axes.get_legend().legend_handles
    assert len({(h.get_color(), h.get_marker()) for h in handles}) == len(final)
    assert len(estimated.collections) == 6 and len(measured.collections) == 5  # guided has no measured speed-up
    assert [tuple(c.get_offsets()[0]) for c in measured.collections if c.get_offsets()[0][0] == 1.0] == [(1.0, 28.0)]
    assert "5 of 6 models measured" in measured.get_title()
    assert "×" in estimated.get_xlabel() and "×" in measured.get_xlabel() and "(%)" in estimated.get_ylabel()
    positions = [tuple(t.get_position()) for ax in fig.axes for t in ax.texts]
    assert len(positions) == len(set(positions))  # no text annotations stacked at one point
    assert_no_overlapping_text(fig)
    pyplot().close(fig)
    crowded = compare([run("baseline", "baseline", BASELINE)]  # a dozen models at one point stay distinguishable
                      + [run(f"retrain_seed_{i}", "retrain", RETRAIN) for i in range(12)])
    fig = pareto_figure(crowded, "test")
    handles = fig.axes[2].get_legend().legend_handles
    assert len(handles) == 13 and len({(h.get_color(), h.get_marker()) for h in handles}) == 13
    assert_no_overlapping_text(fig)
    pyplot().close(fig)
    fig = retraining_figure(result)
    assert [t.get_text().split("\n")[0] for t in fig.axes[0].get_xticklabels()] == [
        "dense control", "AutoML retrained", "guided retrained"]
    assert_no_overlapping_text(fig)
    pyplot().close(fig)
    written = write_outputs(result, tmp_path, "test")
    assert all(Path(written[k]).stat().st_size > 10_000 for k in ("pareto", "retraining"))


def test_online_runs_are_read_through_the_api():
    class FakeRun:
        name, state, id = "baseline", "finished", "abc"
        config, summary = {"stage": "baseline"}, BASELINE

    class FakeApi:
        def runs(self, path):
            assert path == "team/shrinkml"
            return [FakeRun()]

    result = compare(read_online_runs("shrinkml", "team", api=FakeApi()))
    assert result.rows[0]["wer/test"] == 28.0 and result.rows[0]["source"] == "team/shrinkml/abc"


@pytest.fixture(scope="module")
def offline_dir(tmp_path_factory):
    """Real offline W&B runs, as the stages write them: a finished baseline, a retrained model with estimated
    speed-ups (latency too) and a measured one with its spread, a run without a stage, and a run whose log is
    damaged afterwards."""
    root = tmp_path_factory.mktemp("wandb_runs")
    script = (
        "import json, sys, wandb\n"
        "root, name, stage, extra = sys.argv[1:5]\n"
        "config = {'stage': stage, 'output_dir': root + '/' + name} if stage != '-' else {'lr': 1}\n"
        "r = wandb.init(mode='offline', dir=root + '/' + name, name=name, project='shrinkml', config=config)\n"
        "r.summary.update({'params': 3000, 'size_mb': 12.0, 'wer/dev': 30.0, 'wer/test': 28.5, **json.loads(extra)})\n"
        "r.finish()\n"
    )
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}
    retrained = {"params": 900, "provenance": "automl", "speedup/params": 3.9, "speedup/macs": 4.1,
                 "speedup/latency": 2.6, "speedup/measured": 2.3, "speedup/measured_min": 2.2,
                 "speedup/measured_max": 2.4}
    for name, stage, extra in (("baseline", "baseline", {}), ("retrain", "retrain", retrained), ("foreign", "-", {}),
                               ("damaged", "baseline", {})):
        (root / name).mkdir()
        done = subprocess.run([sys.executable, "-c", script, str(root), name, stage, json.dumps(extra)], env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    log = next((root / "damaged").rglob("*.wandb"))
    log.write_bytes(log.read_bytes()[:40])
    return root


def test_offline_runs_through_the_script(offline_dir, tmp_path):
    assert len(find_offline_runs(offline_dir)) == 4
    runs = list(offline_runs(offline_dir))
    assert {r.name for r in runs if r.config.get("stage") == "baseline"} == {"baseline"}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare_runs.py"), f"runs_dir={offline_dir}",
                           f"output_dir={tmp_path}", f"stage_times={tmp_path / 'no-times.json'}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| baseline | baseline | baseline | dense | 1.00 |" in done.stdout
    assert "foreign" in done.stdout and "no 'stage'" in done.stdout
    assert "damaged" in done.stdout
    assert (tmp_path / "comparison.md").read_text().count("| baseline | baseline | baseline |") == 1
    # the estimates and the measured speed-up with its spread, as the retrain stage logs them
    assert ("| AutoML retrained | retrain | retrain | automl | 3.90 | 4.10 | 2.60 | 2.30 (2.20-2.40) | 900.00 |"
            in (tmp_path / "comparison.md").read_text())
    rows = {r["name"]: r for r in csv.DictReader((tmp_path / "comparison.csv").read_text().splitlines())}
    assert rows["retrain"]["speedup/latency"] == "2.6" and rows["retrain"]["speedup/measured_max"] == "2.4"
    assert rows["baseline"]["speedup/latency"] == "1.0" and rows["baseline"]["speedup/measured_min"] == ""
    missing = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare_runs.py"),
                              f"runs_dir={tmp_path / 'nowhere'}", f"output_dir={tmp_path}"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=600)
    assert missing.returncode == 2 and "nowhere" in missing.stderr


def test_an_empty_runs_directory_is_refused_and_an_earlier_comparison_kept(tmp_path):
    (tmp_path / "runs").mkdir()
    out = tmp_path / "compare"
    out.mkdir()
    for name in ("comparison.md", "comparison.csv"):
        (out / name).write_text("earlier")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare_runs.py"), f"runs_dir={tmp_path / 'runs'}",
                           f"output_dir={out}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(
        f"compare_runs: no runs found under {tmp_path / 'runs'}; run a stage first")
    assert [(out / name).read_text() for name in ("comparison.md", "comparison.csv")] == ["earlier", "earlier"]


def test_timed_records_a_stage_and_keeps_its_exit_status(tmp_path):
    env = {**os.environ, "STAGE_TIMES": str(tmp_path / "times.json")}
    for stage, code in (("search aggressive", 0), ("retrain automl", 3)):
        done = subprocess.run([sys.executable, str(ROOT / "scripts" / "timed.py"), stage, "--", sys.executable, "-c",
                               f"import sys; sys.exit({code})"], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == code and f"stage '{stage}'" in done.stdout
    times = read_stage_times(tmp_path / "times.json")
    assert set(times) == {"search aggressive", "retrain automl"} and times["retrain automl"]["returncode"] == 3
    assert all(0 <= entry["seconds"] < 60 for entry in times.values())


def test_sparse_bytes_and_nonzero_parameters_are_columns_where_a_run_counted_them():
    pruned = {**RETRAIN, "provenance": "magnitude", "bytes/sparse": 412345, "params/nonzero": 270}
    result = compare([run("baseline", "baseline", BASELINE), run("retrain_pruned", "retrain", pruned)])
    assert result.columns[10:12] == ["bytes/sparse", "params/nonzero"]
    rows = {r["name"]: r for r in result.rows}
    assert rows["retrain_pruned"]["bytes/sparse"] == 412345 and rows["retrain_pruned"]["params/nonzero"] == 270
    assert rows["baseline"]["bytes/sparse"] is None  # not counted: empty, never a made-up dense value
    assert "| 900.00 | 3.50 | 412345 | 270.00 |" in markdown(result, "test")
    csv_rows = {r["name"]: r for r in csv.DictReader(io.StringIO(csv_text(result, "test")))}
    assert csv_rows["retrain_pruned"]["bytes/sparse"] == "412345.0" and csv_rows["baseline"]["params/nonzero"] == ""
