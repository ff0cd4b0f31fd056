"""common.atomic: every result writer's atomic write (temporary file beside the target, fsync, rename)."""

from __future__ import annotations

import json
import os

import pytest

from common.atomic import save_atomic, write_bytes_atomic, write_json_atomic, write_text_atomic


def test_writes_replace_the_target_and_leave_no_temporary_file(tmp_path):
    path = tmp_path / "new" / "dir" / "report.json"  # parents are created
    write_json_atomic(path, {"wer": 12.5, "rows": [1, 2]})
    assert json.loads(path.read_text()) == {"wer": 12.5, "rows": [1, 2]} and path.read_text().endswith("}\n")
    write_text_atomic(path, "line one\r\nline two\n")  # line endings as given, UTF-8
    assert path.read_bytes() == b"line one\r\nline two\n"
    write_text_atomic(path, "caf\u00e9\n")
    assert path.read_bytes() == "caf\u00e9\n".encode()
    write_bytes_atomic(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.json"]


def test_a_failing_writer_keeps_the_old_file_and_removes_its_temporary_file(tmp_path):
    path = tmp_path / "model_int8.pt"
    path.write_bytes(b"old model")

    def half_then_crash(tmp):
        tmp.write_bytes(b"half of a new")
        raise KeyboardInterrupt  # a kill arrives mid-write

    with pytest.raises(KeyboardInterrupt):
        save_atomic(path, half_then_crash)
    assert path.read_bytes() == b"old model" and [p.name for p in tmp_path.iterdir()] == ["model_int8.pt"]


def test_the_writer_gets_a_hidden_temporary_path_with_the_targets_suffix_and_plain_permissions(tmp_path):
    seen = []

    def writer(tmp):
        seen.append(tmp)
        tmp.write_text("x")

    save_atomic(tmp_path / "explored.png", writer)
    tmp = seen[0]
    assert tmp.parent == tmp_path and tmp.name.startswith(".explored.png.") and tmp.suffix == ".png"
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "explored.png").stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would create it


def test_figures_and_torch_files_go_through_it(tmp_path):
    import torch

    from compress.figures import pyplot, save_figure

    fig, ax = pyplot().subplots()
    ax.plot([0, 1], [1, 0])
    save_figure(fig, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the format follows the suffix
    save_atomic(tmp_path / "state.pt", lambda tmp: torch.save({"w": torch.ones(2)}, tmp))
    assert torch.equal(torch.load(tmp_path / "state.pt")["w"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curve.png", "state.pt"]
