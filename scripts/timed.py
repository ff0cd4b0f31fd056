#!/usr/bin/env python
"""Run one pipeline stage's command and record its wall time (the README's stage table).

    python scripts/timed.py "search aggressive" -- .venv/bin/python search.py search=aggressive

Appends ``{stage: {seconds, finished, returncode}}`` to ``runs/stage_times.json`` (atomically; the
path can be changed with ``STAGE_TIMES``) and exits with the command's exit status.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from common.atomic import write_json_atomic
from common.cli import cli_main


@cli_main("timed")
def main() -> int:
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    stage, command = sys.argv[1], sys.argv[3:]
    started = time.perf_counter()
    returncode = subprocess.call(command)
    seconds = time.perf_counter() - started
    path = Path(os.environ.get("STAGE_TIMES", "runs/stage_times.json"))
    try:
        times = json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        print(f"timed: {path} was damaged; starting it afresh", file=sys.stderr)
        times = {}
    times[stage] = {"seconds": round(seconds, 1), "finished": datetime.now(UTC).isoformat(timespec="seconds"),
                    "returncode": returncode}
    write_json_atomic(path, times)
    print(f"timed: stage '{stage}' took {seconds / 60:.1f} min (exit {returncode})")
    return returncode


if __name__ == "__main__":
    sys.exit(main())
