"""Results on disk: nothing finished is ever lost, nothing finished is ever recomputed.

Layout (the report reads exactly this): `OUT/<label>/model.json` describes the model, and
`OUT/<label>/<task>.jsonl` holds one JSON line per finished cell, keyed by `cell["key"]`. Each line is
flushed and fsynced the moment its cell finishes, so a killed run loses at most the cell in flight and a
rerun skips every key already present. Retrieval tasks also journal each finished trial in
`<task>.partial` (JSON lines, not read by the report) because one trial computes every depth of a length
at once; a rerun reuses those trials instead of computing them again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from longctx.files import append_jsonl, kill_point, read_jsonl, sanitize, write_json_atomic


def format_value(value) -> str:
    """How a key prints a field: None -> 'none', floats without trailing zeros (0.5, 0.3333)."""
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{round(value, 4):g}"
    return str(value)


def cell_key(task: str, **fields) -> str:
    """'ppl|L=4096|stride=none|data=pydoc': the task, then each field in the order given (length as L)."""
    parts = [f"{'L' if name == 'length' else name}={format_value(value)}" for name, value in fields.items()]
    return "|".join([task, *parts])


class ResultsWriter:
    """Appends finished cells of one task of one model; knows which keys are done.

    `after_append(cell)` runs after each cell is safely on disk (tests use it to simulate a crash).
    `before_first_write()` runs once, before the first line this writer writes (run_tasks writes model.json
    there): the folder is created only then, so a run refused before its first cell leaves nothing behind.
    """

    def __init__(self, out_dir: str | os.PathLike, label: str, task: str, *,
                 after_append: Callable[[dict], None] | None = None,
                 before_first_write: Callable[[], None] | None = None):
        self.dir = Path(out_dir) / label
        self.before_first_write = before_first_write
        self.task = task
        self.path = self.dir / f"{task}.jsonl"
        self.journal_path = self.dir / f"{task}.partial"
        self.after_append = after_append
        # a torn last line (a crash mid-write) is cut off so appends stay valid; a garbled line's cell is redone
        self._cells = {cell["key"]: cell for cell in read_jsonl(self.path) if "key" in cell}
        self._samples: dict[str, dict] = {}
        for record in read_jsonl(self.journal_path):
            if "key" in record and "sample" in record:
                self._samples.setdefault(record["key"], {})[record["sample"]["seed"]] = record["sample"]

    def done(self, key: str) -> bool:
        return key in self._cells

    def cell(self, key: str) -> dict | None:
        return self._cells.get(key)

    def cells(self) -> list[dict]:
        return list(self._cells.values())

    def _ready(self) -> None:
        if self.before_first_write is not None:
            self.before_first_write()
            self.before_first_write = None
        self.dir.mkdir(parents=True, exist_ok=True)

    def append(self, cell: dict) -> None:
        cell = sanitize(cell)
        self._ready()
        append_jsonl(self.path, cell)
        self._cells[cell["key"]] = cell
        if self.after_append is not None:
            self.after_append(cell)
        kill_point("results:appended")

    def add_sample(self, key: str, sample: dict) -> None:
        """Journal one finished trial of a cell that is not finished yet."""
        sample = sanitize(sample)
        self._ready()
        append_jsonl(self.journal_path, {"key": key, "sample": sample})
        kill_point("results:journaled")
        self._samples.setdefault(key, {})[sample["seed"]] = sample

    def samples(self, key: str) -> dict:
        """Journaled trials of a cell: {seed: sample}."""
        return dict(self._samples.get(key, {}))


def append_run(out_dir: str | os.PathLike, label: str, record: dict) -> Path:
    """OUT/<label>/runs.jsonl: one line per evaluation run (command, commit, machine, wall time, cells)."""
    path = Path(out_dir) / label / "runs.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    append_jsonl(path, record)
    return path


def write_model_json(out_dir: str | os.PathLike, label: str, info: dict) -> Path:
    """OUT/<label>/model.json; warnings already recorded by an earlier run are kept (deduplicated)."""
    path = Path(out_dir) / label / "model.json"
    old_warnings = []
    if path.is_file():
        try:
            old_warnings = json.loads(path.read_text()).get("warnings") or []
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            old_warnings = []
    warnings = list(dict.fromkeys([*old_warnings, *(info.get("warnings") or [])]))
    return write_json_atomic(path, {**info, "warnings": warnings})  # readers never see half a file
