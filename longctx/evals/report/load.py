"""Reading a results folder: one `ModelSummary` per model folder, its cells grouped by task and variant.
Pure data; `judge` decides what the numbers mean, `page` shows them."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from longctx.errors import UsageError
from longctx.evals.tasks import all_tasks
from longctx.evals.tasks.base import PERPLEXITY, RETRIEVAL
from longctx.files import read_jsonl

log = logging.getLogger(__name__)


@dataclass
class ModelSummary:
    """Everything the report says about one model folder; lengths are dict keys in tokens."""

    label: str
    meta: dict                                  # model.json
    cells: dict[str, dict[tuple, list[dict]]]   # task -> variant -> records (one per key, the last line wins)
    series: dict[str, tuple] = field(default_factory=dict)   # task -> variant shown in the table
    off_series: set[str] = field(default_factory=set)         # tasks whose shown variant is not the column's
    values: dict[str, dict[int, float]] = field(default_factory=dict)  # task -> length -> number in its table
    ci95: dict[str, dict[int, list[float]]] = field(default_factory=dict)  # task -> length -> 95% interval
    strict: dict[str, dict[int, float]] = field(default_factory=dict)  # retrieval task -> length -> token-exact grade
    graded_by: dict[str, dict[int, str]] = field(default_factory=dict)  # retrieval task -> length -> how graded
    retrieval: dict[int, float] = field(default_factory=dict)  # mean of the retrieval tasks where they exist
    ppl_ref: float | None = None                # perplexity at the longest evaluated length <= trained
    status: dict[int, str] = field(default_factory=dict)      # length -> in-distribution/extends/...
    flags: list[dict] = field(default_factory=list)
    effective_length: int | None = None
    verdict: str = ""
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)             # verdict caveats, said before the verdict
    runs: list[dict] = field(default_factory=list)              # runs.jsonl: command, commit, machine, wall time
    counts: dict[int, tuple[int, int]] = field(default_factory=dict)  # retrieval (correct, trials) pooled by length
    strict_counts: dict[int, tuple[int, int]] = field(default_factory=dict)  # the same, token-exact grades
    grading: dict[int, str] = field(default_factory=dict)      # length -> content / token-exact / mixed, all tasks
    tasks_at: dict[int, list[str]] = field(default_factory=dict)  # length -> retrieval units (Task.unit) measured
    unit_counts: dict[int, dict[str, tuple[int, int]]] = field(default_factory=dict)  # length -> unit -> counts
    strict_unit_counts: dict[int, dict[str, tuple[int, int]]] = field(default_factory=dict)  # token-exact grade
    ref_length: int | None = None               # where ppl_ref was measured
    ratios: dict[int, dict] = field(default_factory=dict)     # length -> ppl / ppl_ref with its interval
    control: dict | None = None                 # in-window retrieval {length, counts, from: other label or None}
    controls: list[dict] = field(default_factory=list)  # the same at every in-window length, longest first
    same_as: str | None = None                  # a model whose rope equals this one's up to the trained length
    decisions: dict[int, str] = field(default_factory=dict)   # length beyond trained -> why its status
    weighed: set[int] = field(default_factory=set)            # lengths beyond trained whose retrieval was judged
    joined: dict[str, str] = field(default_factory=dict)      # task -> the other results folder its cells came from

    @property
    def trained(self) -> int | None:
        return _positive_int(self.meta.get("trained_length"))

    @property
    def claimed(self) -> int | None:
        return _positive_int(self.meta.get("claimed_length"))

    @property
    def ppl_series(self) -> tuple | None:
        task = perplexity_task()
        return self.series.get(task.name) if task else None

    def records(self, task: str) -> list[dict]:
        """Cells of the variant of `task` that the table shows."""
        return self.cells.get(task, {}).get(self.series.get(task), [])

    def latest(self, task: str, variant: tuple | None = None) -> dict[int, dict]:
        """Length -> the record there (the last written, where older keys share a length) of the table's variant
        of `task`, or of `variant` when given."""
        records = self.records(task) if variant is None else self.cells.get(task, {}).get(variant, [])
        return {r["length"]: r for r in sorted(records, key=lambda r: r["length"])}

    def lengths(self) -> list[int]:
        """Every length some task has a number at."""
        return sorted(set().union(*self.values.values()))

    def ppl_value(self, length: int) -> float | None:
        task = perplexity_task()
        return self.values.get(task.name, {}).get(length) if task else None


def perplexity_task():
    """The task whose perplexity the verdict weighs against retrieval, or None."""
    return next((task for task in all_tasks().values() if task.kind == PERPLEXITY), None)


def retrieval_tasks() -> list:
    return [task for task in all_tasks().values() if task.kind == RETRIEVAL]


def _positive_int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def read_cells(path: Path, task, warnings: list[str]) -> dict[tuple, list[dict]]:
    """Variant -> records of one task file; lines that do not parse (a killed run) and records without a length
    are skipped with a warning, and the last line of a key wins."""
    by_key: dict[str, dict] = {}
    for index, record in enumerate(read_jsonl(path, repair=False, skipped=warnings)):
        key = str(record.get("key") or f"record {index}")
        if _positive_int(record.get("length")) is None:
            warnings.append(f"{path.name}: {key} has no positive integer `length`: skipped")
            continue
        by_key.pop(key, None)  # re-insert so the order follows the last write
        by_key[key] = record
    return task.group(list(by_key.values()))


def load_model_folder(folder: Path) -> ModelSummary:
    warnings: list[str] = []
    meta: dict = {}
    meta_path = folder / "model.json"
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            warnings.append(f"model.json is not valid JSON ({exc}): trained/claimed lengths unknown")
        if not isinstance(meta, dict):
            meta = {}
    else:
        warnings.append("no model.json: trained/claimed lengths unknown")
    cells = {}
    for task in all_tasks().values():
        variants = read_cells(folder / f"{task.name}.jsonl", task, warnings)
        if variants:
            cells[task.name] = variants
    runs = read_jsonl(folder / "runs.jsonl", repair=False)  # a report only reads: a torn last line is skipped
    for message in warnings:
        log.warning("longctx report: %s: %s", folder.name, message)
    return ModelSummary(label=str(meta.get("label") or folder.name), meta=meta, cells=cells, warnings=warnings,
                        runs=runs)


def load_results(results_dir: Path) -> list[ModelSummary]:
    """One ModelSummary per model folder (sorted by folder name); RESULTS_DIR may also be one model folder."""
    results_dir = Path(results_dir)
    hint = "run `longctx eval suite ...` first"
    if not results_dir.is_dir():
        raise UsageError(f"no results in {results_dir} (not a directory): {hint}")

    def is_model_folder(folder: Path) -> bool:
        return (folder / "model.json").is_file() or any((folder / f"{t}.jsonl").is_file() for t in all_tasks())

    folders = [results_dir] if is_model_folder(results_dir) else sorted(
        p for p in results_dir.iterdir() if p.is_dir() and is_model_folder(p))
    if not folders:
        raise UsageError(f"no results in {results_dir}: {hint}")
    return [load_model_folder(folder) for folder in folders]


def join_perplexity(models: list[ModelSummary], other_dir: Path, name: str) -> None:
    """Take from `other_dir` (named `name` on the page) the perplexity cells of every model here that has none,
    from its folder there: one with its label that is the same model (the same rope, trained length and
    checkpoint fingerprint); a label that names another model there is an error. The runs that computed them come
    along, for 'How these numbers were made'. Only perplexity: retrieval from elsewhere would change what the
    page's retrieval means."""
    here = {m.label: m for m in models}
    for other in load_results(other_dir):
        model = here.get(other.label)
        if model is None:
            continue
        ids = [(m.meta.get("fingerprint") or {}).get("id") for m in (model, other)]
        fields = [(m.meta.get("rope"), m.meta.get("trained_length")) for m in (model, other)]
        if not all(ids) or ids[0] != ids[1] or fields[0] != fields[1]:
            raise UsageError(f"--ppl-from {name}: its {other.label!r} is not the model of that label here (rope, "
                             "trained length or checkpoint fingerprint differ, or one is not recorded): rename one "
                             "label")
        task = perplexity_task()
        taken = [task.name] if task and task.name in other.cells and task.name not in model.cells else []
        for task in taken:
            model.cells[task] = other.cells[task]
            model.joined[task] = name
        model.runs += [run for run in other.runs if set(run.get("tasks") or []) & set(taken)]
