"""Results on disk: nothing finished is ever lost, nothing finished is ever recomputed.

Layout (the report reads exactly this): `OUT/<label>/model.json` describes the model, and
`OUT/<label>/<task>.jsonl` holds one JSON line per finished cell, keyed by `cell["key"]`. Each line is
flushed and fsynced the moment its cell finishes, so a killed run loses at most the cell in flight and a
rerun skips every key already present. Tasks also journal each finished unit of work in `<task>.partial`
(JSON lines, not read by the report): a retrieval trial, which computes every depth of a length at once, and
a perplexity window; a rerun reuses them instead of computing them again. Under several processes
(`longctx.evals.run.parallel`) process N journals in `<task>.rankN.partial`, and process 0 folds those into
`<task>.partial` and alone writes cells.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from longctx.evals.run.parallel import SINGLE, World
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
    """Appends finished cells of one task of one model; knows which keys are done and which units are journaled.

    `after_append(cell)` runs after each cell is safely on disk (tests use it to simulate a crash).
    `before_first_write()` runs once, before the first line this writer writes (run_tasks writes model.json
    there): the folder is created only then, so a run refused before its first cell leaves nothing behind.
    `world` (`parallel.World`): this process among several; process 0 reads first, then the others, then all
    wait for each other, so no process writes before every process has read the same state.
    `rope` (`rope_config.ModelRope`): the model's rotary settings as the run parsed them once; None when the
    caller has none (a task then parses them itself, `model_rope`).
    """

    def __init__(self, out_dir: str | os.PathLike, label: str, task: str, *,
                 after_append: Callable[[dict], None] | None = None,
                 before_first_write: Callable[[], None] | None = None, world: World = SINGLE, rope=None):
        self.dir = Path(out_dir) / label
        self.rope = rope
        self.before_first_write = before_first_write
        self.task = task
        self.world = world
        self.path = self.dir / f"{task}.jsonl"
        self.main_journal = self.dir / f"{task}.partial"
        self.journal_path = self.main_journal if world.main else self.dir / f"{task}.rank{world.rank}.partial"
        self.after_append = after_append
        if world.main:
            self._load()
        world.barrier()
        if not world.main:
            self._load()
        world.barrier()

    def model_rope(self, model):
        """The run's `rope_config.ModelRope` of `model` (parsed here when the run gave none)."""
        if self.rope is None:
            from longctx.rope_config import model_rope

            self.rope = model_rope(model.config)
        return self.rope

    def _load(self) -> None:
        # a torn last line (a crash mid-write) is cut off so appends stay valid; a garbled line's cell is redone
        repair = self.world.main
        self._cells = {cell["key"]: cell for cell in read_jsonl(self.path, repair=repair) if "key" in cell}
        self._samples: dict[str, dict] = {}
        self._in_main: set[tuple] = set()  # (key, unit) already in <task>.partial
        for record in read_jsonl(self.main_journal, repair=repair):
            if self._remember(record):
                self._in_main.add(journal_unit(record)[:2])
        for path in self._rank_journals():
            for record in read_jsonl(path, repair=repair):
                self._remember(record)
        if self.world.main:
            self._fold()

    def _rank_journals(self) -> list[Path]:
        """Journals of processes other than 0, of this run or of an earlier one with any number of processes."""
        if not self.dir.is_dir():
            return []
        return sorted(self.dir.glob(f"{self.task}.rank*.partial"))

    def _remember(self, record: dict) -> bool:
        """Keep a journal record in memory; False if it is not one or its unit was known already."""
        unit = journal_unit(record)
        if unit is None or unit[1] in self._samples.get(unit[0], {}):
            return False
        self._samples.setdefault(unit[0], {})[unit[1]] = unit[2]
        return True

    def _fold(self) -> None:
        """Process 0: copy other processes' journaled units into `<task>.partial`, then delete their journals (a
        crash in between leaves a unit in both: read twice, kept once)."""
        for path in self._rank_journals():
            for record in read_jsonl(path):
                unit = journal_unit(record)
                if unit is not None and unit[:2] not in self._in_main:
                    append_jsonl(self.main_journal, {"key": unit[0], "unit": unit[1], "sample": unit[2]})
                    self._in_main.add(unit[:2])
            path.unlink()

    def gather(self) -> None:
        """Several processes, every one done with its units: process 0 learns and folds all their journals."""
        self.world.barrier()
        if self.world.main:
            for path in self._rank_journals():
                for record in read_jsonl(path):
                    self._remember(record)
            self._fold()

    def settle(self) -> None:
        """Several processes, after process 0 wrote the cells: the others read them."""
        self.world.barrier()
        if not self.world.main:
            self._load()

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
        if not self.world.main:
            raise RuntimeError("only process 0 writes cells")
        cell = sanitize(cell)
        self._ready()
        append_jsonl(self.path, cell)
        self._cells[cell["key"]] = cell
        if self.after_append is not None:
            self.after_append(cell)
        kill_point("results:appended")

    def add_sample(self, key: str, sample: dict, *, unit=None) -> None:
        """Journal one finished unit of a cell that is not finished yet (`unit`: its id, default the sample's
        seed: a retrieval trial)."""
        sample = sanitize(sample)
        unit = sample["seed"] if unit is None else unit
        self._ready()
        append_jsonl(self.journal_path, {"key": key, "unit": unit, "sample": sample})
        kill_point("results:journaled")
        self._samples.setdefault(key, {})[unit] = sample
        if self.world.main:
            self._in_main.add((key, unit))

    def samples(self, key: str) -> dict:
        """Journaled units of a cell: {unit id: sample}."""
        return dict(self._samples.get(key, {}))


def journal_unit(record: dict) -> tuple | None:
    """(cell key, unit id, sample) of a journal line; journals written before units had ids named a trial by its
    seed. None for a line that is not one."""
    sample = record.get("sample")
    if not isinstance(record.get("key"), str) or not isinstance(sample, dict):
        return None
    unit = record.get("unit", sample.get("seed"))
    return (record["key"], unit, sample) if isinstance(unit, (int, str)) else None


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
