"""Atomic writes: a reader, or a run resumed after a kill, finds the old file or the new one, never half of one.

Every result file (schemes, reports, summaries, tables, figures, int8 models) is written by
:func:`save_atomic`: the writer fills a temporary file in the target's directory (so the rename never
crosses file systems), the file is flushed to disk (fsync), renamed over the target (``os.replace``)
and the directory is flushed, so that the rename itself survives a power loss. The temporary file is
hidden (``.<name>.<random>.tmp<suffix>``), keeps the target's suffix (``savefig``, ``np.save`` and
``soundfile`` choose the format by it), gets the permissions a plain ``open`` would give, and is
removed when the writer fails.

Two kinds of file do not come through here: append-only logs (the search's explored set appends and
fsyncs one line at a time) and the checkpoints of Lightning's ``ModelCheckpoint``, which
``lightning.fabric.utilities.cloud_io._atomic_save`` writes through an fsspec transaction: a temporary
file in the system temporary directory, moved over the checkpoint on commit (a rename when that
directory is on the run's file system, a copy otherwise).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path


def save_atomic(path: str | Path, writer: Callable[[Path], object], fsync: bool = True) -> Path:
    """Write ``path`` atomically: ``writer(tmp)`` writes the whole content to the temporary path ``tmp``
    (e.g. ``lambda tmp: torch.save(obj, tmp)`` or ``lambda tmp: fig.savefig(tmp)``), which then replaces
    ``path``. Parent directories are created. ``fsync=False`` skips the two flushes to disk, for caches
    that can be computed again: still atomic against a killed process, not against a power loss.
    Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    try:
        writer(tmp)
        if fsync:
            _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        _fsync_directory(path.parent)
    return path


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return save_atomic(path, lambda tmp: tmp.write_bytes(data))


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically, as UTF-8 with its line endings as given."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, data: object) -> Path:
    """Write ``data`` to ``path`` atomically as indented JSON with a final newline."""
    return write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def _temporary(path: Path) -> Path:
    """A new, empty, hidden file beside ``path`` with ``path``'s suffix (mode 0666 less the umask)."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{path.suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(path: Path) -> None:
    """Flush a rename in directory ``path`` to disk, where the platform and file system allow it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
