"""The benchmarks' record of finished runs: one JSON line each, kept across restarts.

A benchmark appends each finished run (a federation, a seed …) to its ``*_runs.jsonl``
in ``benchmarks/results/`` and, started again, skips what is there: an interrupted
benchmark loses nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def load_runs(path: Path, fresh: bool) -> dict[str, dict[str, Any]]:
    """The runs recorded in ``path`` by key (none, and the file removed, when ``fresh``)."""
    if fresh:
        path.unlink(missing_ok=True)
    if not path.is_file():
        return {}
    rows = (json.loads(line) for line in path.read_text().splitlines())
    return {row["key"]: row for row in rows}


def record_run(path: Path, row: dict[str, Any]) -> None:
    """Append the finished run ``row`` (with its ``key``) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps(row) + "\n")
