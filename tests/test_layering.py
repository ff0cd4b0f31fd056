"""The package layering of docs/architecture: asr imports neither compress nor rl; compress imports neither asr
nor rl; rl does not import asr; none of them imports the stage glue (shrinkml). Every import counts, also one
inside a function or under TYPE_CHECKING, and relative imports are resolved to the package they name."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
FORBIDDEN = {"asr": {"compress", "rl", "shrinkml"}, "compress": {"asr", "rl", "shrinkml"}, "rl": {"asr", "shrinkml"}}


def imported_packages(path: Path, src: Path) -> list[tuple[int, str]]:
    """``(line, top-level package)`` of every import in ``path``, a module under ``src``."""
    package = path.relative_to(src).with_suffix("").parts[:-1]  # the package a relative import starts from
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.append((node.lineno, node.module.split(".")[0]))
        elif isinstance(node, ast.ImportFrom):  # from . / from .. : resolved against the module's package
            anchor = package[: max(len(package) - node.level + 1, 0)]
            names = [node.module] if node.module else [alias.name for alias in node.names]
            found += [(node.lineno, anchor[0] if anchor else name.split(".")[0]) for name in names]
    return found


def layering_violations(src: Path, forbidden: dict[str, set[str]]) -> list[str]:
    """``file:line imports X`` for every import in ``src/<package>`` of a package ``forbidden[package]`` names."""
    problems = []
    for package, banned in sorted(forbidden.items()):
        for path in sorted((src / package).rglob("*.py")):
            for line, name in imported_packages(path, src):
                if name in banned:
                    problems.append(f"{path.relative_to(src.parent)}:{line}: {package} imports {name}")
    return problems


def test_packages_keep_their_layering():
    assert all((SRC / package).is_dir() for package in FORBIDDEN)
    problems = layering_violations(SRC, FORBIDDEN)
    assert not problems, "layering broken:\n" + "\n".join(problems)


@pytest.mark.parametrize("source, line", [
    ("import rl.space\n", 1),
    ("from compress.scheme import Scheme\n", 1),
    ("def late():\n    import shrinkml.stage\n", 2),                 # inside a function
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from rl import controller\n", 3),
    ("from ... import compress\n", 1),                             # relative, above asr/
])
def test_a_bad_import_is_reported_with_its_file_and_line(tmp_path, source, line):
    module = tmp_path / "src" / "asr" / "data" / "bad.py"
    module.parent.mkdir(parents=True)
    (tmp_path / "src" / "asr" / "fine.py").write_text("import torch\nfrom . import data\nfrom .data import bad\n")
    module.write_text(source)
    problems = layering_violations(tmp_path / "src", {"asr": FORBIDDEN["asr"]})
    assert len(problems) == 1 and problems[0].startswith(f"src/asr/data/bad.py:{line}: asr imports "), problems
