"""Every searcher's seeded search on the tiny corpus gives the explored points and the result scheme it gave when
the fixture ``tests/data/search_pinned.json`` was recorded: a change to the search's plumbing (the loop, the state,
the configs) must not change what any searcher finds. Re-record only for an intended change of behaviour:
``SHRINKML_RECORD_PINNED=1 pytest tests/test_search_pinned.py`` (and say why in the commit)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from asr_helpers import search_stage

from compress.scheme import Scheme

FIXTURE = Path(__file__).parent / "data" / "search_pinned.json"
RECORD = os.environ.get("SHRINKML_RECORD_PINNED") == "1"
# searcher -> overrides: a few steps each, the tiny space of asr_helpers.search_overrides (a_t = 1.5)
SEARCHES = {
    "aggressive": ["search=aggressive", "search.steps=4"],
    "penalty": ["search=aggressive", "search.searcher.feasibility=penalty", "search.steps=6"],
    "optuna_tpe": ["search=optuna_tpe", "search.steps=4", "search.searcher.n_startup_trials=2"],
    "random": ["search=random", "search.steps=12"],
    "random_feasible": ["search=random_feasible", "search.steps=4"],
    "greedy": ["search=greedy", "search.steps=2"],
}


def pinned(out: Path, report: dict) -> dict:
    """What must not change: the explored points in order (ranks, proxy WER to 4 places, step) and the report's
    candidates and result."""
    points = [json.loads(line) for path in sorted(out.glob("explored-*.jsonl")) for line in path.open()]
    best = out / "best_scheme.json"
    return {"explored": [{"ranks": p["ranks"], "wer": round(p["wer"], 4), "step": p["step"]} for p in points],
            "candidates": [r["model"] for r in report["rows"]],
            "best": Scheme.load(best).ranks if best.is_file() else None,
            "explored_count": report["summary"]["explored"]}


@pytest.fixture(scope="module")
def recorded() -> dict:
    if RECORD:
        return {}
    if not FIXTURE.is_file():
        pytest.fail(f"{FIXTURE} is missing; record it with SHRINKML_RECORD_PINNED=1")
    return json.loads(FIXTURE.read_text())


@pytest.mark.parametrize("name", list(SEARCHES))
def test_a_seeded_search_finds_what_it_found_when_pinned(name, recorded, tiny_corpus, tmp_path_factory):
    search, out = search_stage(tiny_corpus, tmp_path_factory, f"pinned_{name}", *SEARCHES[name],
                               options=3 if name == "greedy" else 4)
    got = pinned(out, search())
    if RECORD:
        everything = json.loads(FIXTURE.read_text()) if FIXTURE.is_file() else {}
        everything[name] = got
        FIXTURE.parent.mkdir(parents=True, exist_ok=True)
        FIXTURE.write_text(json.dumps(everything, indent=1, sort_keys=True) + "\n")
        return
    assert got == recorded[name]
