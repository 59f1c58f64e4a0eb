"""Reading eval results back in tests: finished cells by key, without their timings (the one thing two runs
of the same cells never share), so runs that must agree can be compared with ==."""

from __future__ import annotations

import json
from pathlib import Path


def without_timings(value):
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def cells_by_key(path: Path) -> dict[str, dict]:
    """The cells of one results file (e.g. OUT/<label>/passkey.jsonl), keyed by cell key."""
    return {cell["key"]: without_timings(cell) for cell in map(json.loads, Path(path).read_text().splitlines())}
