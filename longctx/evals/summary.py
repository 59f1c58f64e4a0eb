"""Reading a results folder and judging each model: perplexity vs retrieval by length, effective length
(RULER) and the verdict that flags SUPERFICIAL long context. Pure data, no rendering; `report.py` draws it."""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from longctx.errors import UsageError
from longctx.evals import tasks
from longctx.evals.task import PERPLEXITY, RETRIEVAL, as_float
from longctx.files import read_jsonl, sanitize

log = logging.getLogger(__name__)

RETRIEVAL_OK = 0.85      # RULER's threshold: a length counts as usable when retrieval stays at or above it
RETRIEVAL_FAILED = 0.5   # below this, retrieval has failed (used by the SUPERFICIAL flag)
PPL_HOLDS = 1.25         # ppl(L) <= 1.25 x in-distribution ppl: perplexity "holds" at L
PPL_BROKEN = 2.0         # ppl(L) > 2 x in-distribution ppl: the model breaks at L


@dataclass
class ModelSummary:
    """Everything the report says about one model folder; lengths are dict keys in tokens."""

    label: str
    meta: dict                                  # model.json
    cells: dict[str, dict[tuple, list[dict]]]   # task -> variant -> records (one per key, the last line wins)
    series: dict[str, tuple] = field(default_factory=dict)   # task -> variant shown in the table
    values: dict[str, dict[int, float]] = field(default_factory=dict)  # task -> length -> number in its table
    ci95: dict[str, dict[int, list[float]]] = field(default_factory=dict)  # task -> length -> 95% interval
    retrieval: dict[int, float] = field(default_factory=dict)  # mean of the retrieval tasks where they exist
    ppl_ref: float | None = None                # perplexity at the longest evaluated length <= trained
    status: dict[int, str] = field(default_factory=dict)      # length -> in-distribution/extends/...
    flags: list[dict] = field(default_factory=list)
    effective_length: int | None = None
    verdict: str = ""
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)             # verdict caveats, said before the verdict
    runs: list[dict] = field(default_factory=list)              # runs.jsonl: command, commit, machine, wall time

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

    def latest(self, task: str) -> dict[int, dict]:
        """Length -> the table's record there (the last written, where older keys share a length)."""
        return {r["length"]: r for r in sorted(self.records(task), key=lambda r: r["length"])}

    def lengths(self) -> list[int]:
        """Every length some task has a number at."""
        return sorted(set().union(*self.values.values()))

    def ppl_value(self, length: int) -> float | None:
        task = perplexity_task()
        return self.values.get(task.name, {}).get(length) if task else None


def perplexity_task():
    """The task whose perplexity the verdict weighs against retrieval, or None."""
    return next((task for task in tasks().values() if task.kind == PERPLEXITY), None)


def retrieval_tasks() -> list:
    return [task for task in tasks().values() if task.kind == RETRIEVAL]


def _positive_int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def fmt_len(length: int) -> str:
    """4096 -> '4K', 1536 -> '1.5K', 1000 -> '1000': how context lengths are usually spoken of."""
    if length >= 1024 and length % 512 == 0:
        return f"{length / 1024:g}K"
    return str(length)


def fmt_ppl(ppl: float | None) -> str:
    if ppl is None:
        return "–"
    if not math.isfinite(ppl):
        return "inf"
    return f"{ppl:.2f}" if ppl < 100 else f"{ppl:.0f}" if ppl < 1e5 else f"{ppl:.1e}"


# --- reading results ---------------------------------------------------------------------------------

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
    cells: dict[tuple, list[dict]] = {}
    for record in by_key.values():
        cells.setdefault(task.variant(record), []).append(record)
    return cells


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
    for task in tasks().values():
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
        return (folder / "model.json").is_file() or any((folder / f"{t}.jsonl").is_file() for t in tasks())

    folders = [results_dir] if is_model_folder(results_dir) else sorted(
        p for p in results_dir.iterdir() if p.is_dir() and is_model_folder(p))
    if not folders:
        raise UsageError(f"no results in {results_dir}: {hint}")
    return [load_model_folder(folder) for folder in folders]


# --- judging ------------------------------------------------------------------------------------------

def primary_variant(models: list[ModelSummary], task: str) -> tuple | None:
    """The variant evaluated at the most (model, length) pairs, so every model is compared on the same series."""
    coverage: Counter = Counter()
    for model in models:
        for variant, records in model.cells.get(task, {}).items():
            coverage[variant] += len({r["length"] for r in records})
    return min(coverage, key=lambda v: (-coverage[v], str(v))) if coverage else None


def _pick(model: ModelSummary, task: str, preferred: tuple | None) -> tuple | None:
    variants = model.cells.get(task, {})
    if preferred in variants:
        return preferred
    return min(variants, key=lambda v: (-len({r["length"] for r in variants[v]}), str(v))) if variants else None


def effective_length(retrieval: dict[int, float]) -> int | None:
    """RULER: the longest length L such that every evaluated length <= L scores >= 0.85; None if the first fails."""
    best = None
    for length in sorted(retrieval):
        if retrieval[length] < RETRIEVAL_OK:
            break
        best = length
    return best


def judge_length(ratio: float | None, retrieval: float | None) -> str:
    """Status of one length beyond the trained one, from ppl / in-distribution ppl and retrieval."""
    if ratio is None and retrieval is None:
        return "untested"
    if ratio is not None and ratio > PPL_BROKEN:
        return "breaks"
    ppl_holds = ratio is None or ratio <= PPL_HOLDS
    if retrieval is None:
        return "ppl only" if ratio is not None and ppl_holds else "degrades"
    if ratio is not None and ppl_holds and retrieval < RETRIEVAL_FAILED:
        return "superficial"
    if ppl_holds and retrieval >= RETRIEVAL_OK:
        return "extends"
    return "degrades"


def summarize(model: ModelSummary, primaries: dict[str, tuple | None]) -> None:
    """Fill in the per-length numbers, flags, effective length and verdict of one model."""
    model.series = {task: _pick(model, task, primaries.get(task)) for task in model.cells}
    for task in tasks().values():
        model.values[task.name] = task.values(model.records(task.name))
        model.ci95[task.name] = task.ci95(model.records(task.name))
    by_task = [model.values[task.name] for task in retrieval_tasks()]
    for length in sorted(set().union(*by_task)):
        scores = [values[length] for values in by_task if length in values]
        model.retrieval[length] = sum(scores) / len(scores)
    model.effective_length = effective_length(model.retrieval)

    trained, lengths = model.trained, model.lengths()
    ppl_lengths = [n for n in lengths if model.ppl_value(n) is not None]
    if ppl_lengths:
        in_distribution = [n for n in ppl_lengths if trained is not None and n <= trained]
        model.ppl_ref = model.ppl_value(max(in_distribution) if in_distribution else min(ppl_lengths))
    if trained is None:
        model.warnings.append("model.json has no trained_length: no verdict on extension is possible")
    # A model that cannot retrieve even within its trained length (a random or chat-formatted model) says
    # nothing about extension through retrieval: judge its longer lengths on perplexity alone. Where nothing
    # within it was measured, a model that retrieves at no evaluated length (a patch that damages the model at
    # every length, such as linear interpolation without training) gives no evidence either.
    baseline = max((n for n in model.retrieval if trained is not None and n <= trained), default=None)
    if baseline is not None:
        retrieval_judges = model.retrieval[baseline] >= RETRIEVAL_FAILED
        if not retrieval_judges:
            model.notes.append(f"retrieval fails within the trained length ({model.retrieval[baseline]:.2f} at "
                               f"{fmt_len(baseline)}), so it cannot judge the extension")
    else:
        best = max(model.retrieval, key=model.retrieval.get, default=None)
        retrieval_judges = best is None or model.retrieval[best] >= RETRIEVAL_FAILED
        if not retrieval_judges:
            model.notes.append(f"retrieval fails at every evaluated length (at best {model.retrieval[best]:.2f}, "
                               f"at {fmt_len(best)}) and was not measured within the trained length, so it "
                               "cannot judge the extension")
    for length in lengths:
        ppl, retrieval = model.ppl_value(length), model.retrieval.get(length)
        if trained is None or length <= trained:
            model.status[length] = "in-distribution"
            if trained is not None and retrieval is not None and retrieval < RETRIEVAL_OK:
                model.warnings.append(f"retrieval {retrieval:.2f} at {fmt_len(length)}, within the trained length: "
                                      "check the prompt format before trusting longer lengths")
            continue
        ratio = ppl / model.ppl_ref if ppl is not None and model.ppl_ref else None
        status = model.status[length] = judge_length(ratio, retrieval if retrieval_judges else None)
        if status == "superficial":
            model.flags.append({"kind": "superficial", "length": length, "ppl": ppl, "ppl_ratio": ratio,
                                "retrieval": retrieval, "message": (
                                    f"SUPERFICIAL at {fmt_len(length)}: ppl {fmt_ppl(ppl)} (×{ratio:.2f} of "
                                    f"in-distribution) but retrieval {retrieval:.2f}")})
    model.verdict = verdict(model)
    model.warnings.extend(_cell_warnings(model))


def verdict(model: ModelSummary) -> str:
    """One line: SUPERFICIAL first (it is the trap), then how far it extends and where it stops."""
    beyond = [n for n, s in model.status.items() if s not in ("in-distribution", "untested")]
    if model.trained is None:
        return "unknown trained length"
    if not beyond:
        return f"not evaluated beyond its trained length ({fmt_len(model.trained)})"
    parts = list(model.notes)
    if model.flags:
        also = [fmt_len(f["length"]) for f in model.flags[1:]]
        parts.append(model.flags[0]["message"] + (f" (also at {', '.join(also)})" if also else ""))
    extends_to = None
    for length in beyond:
        if model.status[length] != "extends":
            break
        extends_to = length
    if extends_to is not None:
        parts.append(f"extends to {fmt_len(extends_to)}")
    stop = next((n for n in beyond if model.status[n] != "extends"), None)
    broken = next((n for n in beyond if model.status[n] == "breaks"), None)
    if stop is not None and model.status[stop] == "degrades":
        retrieval = model.retrieval.get(stop)
        parts.append(f"degrades at {fmt_len(stop)}" + (f" (retrieval {retrieval:.2f})" if retrieval is not None else ""))
    elif stop is not None and model.status[stop] == "ppl only":
        parts.append(f"ppl holds at {fmt_len(stop)}" + ("" if model.notes else " but retrieval was not run there"))
    if broken is not None:
        ppl = model.ppl_value(broken)
        parts.append(f"breaks at {fmt_len(broken)} (ppl {fmt_ppl(ppl)} vs {fmt_ppl(model.ppl_ref)})")
    return "; ".join(parts)


def _cell_warnings(model: ModelSummary) -> list[str]:
    """model.json warnings plus cell warnings, identical ones collapsed into one line with a count."""
    messages = [str(w) for w in model.meta.get("warnings") or []]
    counts: Counter = Counter()
    for task, variants in model.cells.items():
        for records in variants.values():
            for record in records:
                for warning in record.get("warnings") or []:
                    counts[f"{task}: {warning}"] += 1
    messages += [m if n == 1 else f"{m} ({n} cells)" for m, n in counts.items()]
    return messages


def build_summary(models: list[ModelSummary]) -> list[ModelSummary]:
    primaries = {task: primary_variant(models, task) for task in tasks()}
    for model in models:
        summarize(model, primaries)
    return models


def ppl_windows_text(model: ModelSummary) -> str | None:
    """Which documents the perplexity windows came from, per length: '2K: 2 windows (a.txt, b.txt); …'."""
    task = perplexity_task()
    return task and task.windows_text(model.records(task.name))


def run_text(run: dict) -> str:
    """One evaluation run in a line: command, commit, machine, wall time."""
    commit = str(run.get("commit") or "unknown")[:12] + (" (modified)" if run.get("dirty") else "")
    machine = run.get("machine") if isinstance(run.get("machine"), dict) else {}
    where = ", ".join(str(x) for x in (machine.get("gpu") or machine.get("cpu"),
                                       machine.get("cores") and f"{machine['cores']} cores",
                                       machine.get("torch") and f"torch {machine['torch']}") if x)
    world = run.get("world")
    if isinstance(world, int) and world > 1:  # launched as several processes (longctx.evals.parallel)
        where = f"{where or 'machine unknown'} × {world} processes"
    seconds = as_float(run.get("wall_seconds"))
    wall = f"{seconds / 60:.1f} min" if seconds is not None else "?"
    return f"`{run.get('command')}` · commit {commit} · {where or 'machine unknown'} · {wall} · {run.get('started', '')}"


def rope_text(rope: dict | None) -> str:
    if not isinstance(rope, dict) or not rope:
        return "–"
    text = str(rope.get("rope_type") or rope.get("type") or "default")
    theta = as_float(rope.get("rope_theta"))
    if theta is not None:
        text += " θ=" + f"{theta:.4g}".replace("e+0", "e").replace("e+", "e")  # 1e5, 5e5, 1.25e6
    factor = as_float(rope.get("factor"))
    if factor is not None:
        text += f" ×{factor:g}"
    return text


def summary_json(models: list[ModelSummary], title: str, figures: list[str]) -> dict:
    from longctx import __version__

    rows = []
    for m in models:
        by_length = []
        for n in m.lengths():
            row = {"length": n}
            for task in tasks():
                row[task] = m.values.get(task, {}).get(n)
                row[f"{task}_ci95"] = m.ci95.get(task, {}).get(n)
            by_length.append({**row, "retrieval": m.retrieval.get(n), "status": m.status.get(n)})
        rows.append({"label": m.label, "source": m.meta.get("source"), "trained_length": m.trained,
                     "claimed_length": m.claimed, "rope": m.meta.get("rope"),
                     "series": {task: tasks()[task].variant_name(variant) for task, variant in m.series.items()},
                     "ppl_ref": m.ppl_ref, "by_length": by_length, "effective_length": m.effective_length,
                     "verdict": m.verdict, "superficial": bool(m.flags), "flags": m.flags, "warnings": m.warnings,
                     "ppl_windows": ppl_windows_text(m), "runs": m.runs})
    # an infinite perplexity is a result: "inf" (JSON parsers outside Python reject Infinity and NaN)
    return sanitize({"title": title, "longctx_version": __version__, "thresholds": {
        "retrieval_ok": RETRIEVAL_OK, "retrieval_failed": RETRIEVAL_FAILED, "ppl_holds": PPL_HOLDS,
        "ppl_broken": PPL_BROKEN}, "models": rows, "figures": figures}, inf_as_text=True)
