"""RESULTS.md and README.md stay a results page and a short front page: size limits, a table of contents whose
entries are the page's sections, and relative links that resolve."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIMITS = {"RESULTS.md": 15_000, "README.md": 12_000}   # bytes


def anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {anchor(h) for h in re.findall(r"^#+ (.*)$", path.read_text(), re.M)}


@pytest.mark.parametrize("name", sorted(LIMITS))
def test_page_within_its_size_limit(name):
    assert (ROOT / name).stat().st_size <= LIMITS[name]


def test_results_table_of_contents_lists_every_section():
    text = (ROOT / "RESULTS.md").read_text()
    contents = re.findall(r"^- \[[^\]]+\]\(#([^)]+)\)$", text, re.M)
    sections = [anchor(h) for h in re.findall(r"^## (.*)$", text, re.M)]
    assert contents == sections and "tried-not-kept" in contents


@pytest.mark.parametrize("name", ["RESULTS.md", "README.md", "docs/results_history.md"])
def test_relative_links_resolve(name):
    page = ROOT / name
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if target.startswith(("http://", "https://")):
            continue
        path, _, fragment = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{name}: {target}"
        if fragment:
            assert fragment in anchors(linked), f"{name}: {target}"
