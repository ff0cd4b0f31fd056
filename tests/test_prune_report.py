"""The pruning goals as scripts/prune_report.py states them (the table itself is run in tests/test_budget.py)."""

from __future__ import annotations

from shrinkml.prune_report import _pattern, goals, markdown


def row(method, target, wer_dev, wer_test, pattern="unstructured", speedup=None, control=10.0):
    return {"method": method, "pattern": pattern, "target": target, "sparsity": target, "params": 1000,
            "mb_fp32": 1.0, "mb_int8": 0.3, "wer_dev": wer_dev, "wer_test": wer_test, "speedup": speedup,
            "vs_control": 100.0 * (wer_test / control - 1.0)}


CONTROL = row("dense control", 0.0, 11.0, 10.0, pattern="-", speedup=1.0)


def test_csp_against_magnitude_from_70_percent_same_pattern_only():
    rows = [CONTROL, row("csp", 0.5, 12, 30.0), row("magnitude", 0.5, 12, 11.0),  # below 70%: not counted
            row("csp", 0.7, 12, 11.0), row("magnitude", 0.7, 12, 11.5),
            row("csp", 0.8, 12, 12.0), row("magnitude", 0.8, 12, 12.5),
            row("csp", 0.8, 12, 9.0, pattern="block 4x1")]  # no magnitude twin with that pattern: not a pair
    assert goals(rows)[0].startswith("CSP below magnitude at every sparsity from 70%: met (2 of 2 pairs")
    rows.append(row("magnitude", 0.8, 12, 8.0, pattern="block 4x1"))
    assert "not met (2 of 3 pairs" in goals(rows)[0]


def test_the_80_percent_goal_takes_the_run_best_on_dev():
    rows = [CONTROL, row("csp", 0.8, 12.0, 10.4, speedup=1.4),
            row("magnitude", 0.8, 13.0, 10.1, pattern="block 4x1", speedup=2.1)]
    lines = goals(rows)
    assert lines[1].startswith("at 80% (best on dev: csp unstructured): test WER 10.40, +4.0% against the dense "
                               "control: met (<= +5%); measured batch-1 speed-up 1.40x: not met (>= 2x)")
    assert lines[2].startswith("at 80%, fastest: magnitude block 4x1, 2.10x")
    assert goals([CONTROL])[1] == "at 80%: not measured yet"
    table = markdown(rows, {"prune_csp_0.9": "unfinished (no summary.json)"})
    assert "| csp | unstructured | 80.0% | 80.0% | 1,000 |" in table and "not reported: prune_csp_0.9" in table


def test_the_pattern_names_blocks_and_the_sensitivity_allocation():
    assert _pattern({"compress": {"pattern": "unstructured", "allocation": "uniform"}}) == "unstructured"
    assert _pattern({"compress": {"pattern": "block", "block": [4, 1], "allocation": "sensitivity"}}) == \
        "block 4x1, sensitivity"
