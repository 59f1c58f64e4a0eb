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
from longctx.files import read_jsonl as read_json_lines

log = logging.getLogger(__name__)

TASKS = ("ppl", "passkey", "niah")
RETRIEVAL_OK = 0.85      # RULER's threshold: a length counts as usable when retrieval stays at or above it
RETRIEVAL_FAILED = 0.5   # below this, retrieval has failed (used by the SUPERFICIAL flag)
PPL_HOLDS = 1.25         # ppl(L) <= 1.25 x in-distribution ppl: perplexity "holds" at L
PPL_BROKEN = 2.0         # ppl(L) > 2 x in-distribution ppl: the model breaks at L
FIGURES = {  # file name -> caption
    "ppl_vs_length.png": "Perplexity by context length (dashed: each model's trained length; bars: 95% CI).",
    "passkey_heatmaps.png": "Passkey retrieval accuracy by context length and depth of the key.",
    "niah_heatmaps.png": "Needle in a haystack: score by context length and needle depth (0% = start).",
    "ppl_buckets.png": "Loss by token position at each model's longest evaluated length: where extrapolation breaks.",
}


@dataclass
class ModelSummary:
    """Everything the report says about one model folder; lengths are dict keys in tokens."""

    label: str
    meta: dict                                  # model.json
    cells: dict[str, dict[tuple, list[dict]]]   # task -> variant -> records (one per key, the last line wins)
    series: dict[str, tuple] = field(default_factory=dict)   # task -> variant shown in the table
    ppl: dict[int, dict] = field(default_factory=dict)        # length -> ppl record of that series
    passkey: dict[int, float] = field(default_factory=dict)   # length -> accuracy, mean over depths
    niah: dict[int, float] = field(default_factory=dict)      # length -> score, mean over depths
    retrieval: dict[int, float] = field(default_factory=dict)  # mean of passkey and niah where both exist
    ci95: dict[str, dict[int, list[float]]] = field(default_factory=dict)  # task -> length -> pooled Wilson 95%
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
        return self.series.get("ppl")

    def records(self, task: str) -> list[dict]:
        """Cells of the variant of `task` that the table shows."""
        return self.cells.get(task, {}).get(self.series.get(task), [])

    def ppl_value(self, length: int) -> float | None:
        record = self.ppl.get(length)
        return None if record is None else _as_float(record.get("ppl"), default=math.inf)


def _positive_int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _as_float(value, default=None) -> float | None:
    """A finite-or-infinite float from JSON; NaN and junk become `default` (a NaN perplexity means it blew up)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return default
    return float(value)


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

def variant_of(task: str, record: dict) -> tuple:
    """The settings besides length and depth that make cells comparable (one heatmap row per NIAH variant)."""
    if task == "ppl":
        return (record.get("data"), record.get("stride"))
    if task == "passkey":  # keys of another digit count are another experiment (older results: None)
        return (record.get("mode"), record.get("key_digits"))
    return (record.get("needles", 1), record.get("distractors", 0), record.get("mode"))


def variant_name(task: str, variant: tuple) -> str:
    if task == "ppl":
        return f"data={variant[0]}, stride={'none' if variant[1] is None else variant[1]}"
    if task == "passkey":
        return f"mode={variant[0]}" + (f", key_digits={variant[1]}" if len(variant) > 1 and variant[1] else "")
    return f"needles={variant[0]}, distractors={variant[1]}, mode={variant[2]}"


def read_jsonl(path: Path, warnings: list[str]) -> list[dict]:
    """Records of one task file; a half-written line (killed run) is skipped with a warning, the last line of a key wins."""
    by_key: dict[str, dict] = {}
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            warnings.append(f"{path.name} line {number} is not valid JSON (interrupted run?): skipped")
            continue
        if not isinstance(record, dict) or _positive_int(record.get("length")) is None:
            warnings.append(f"{path.name} line {number} has no positive integer `length`: skipped")
            continue
        key = str(record.get("key") or f"line {number}")
        by_key.pop(key, None)  # re-insert so the order follows the last write
        by_key[key] = record
    return list(by_key.values())


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
    cells: dict[str, dict[tuple, list[dict]]] = {}
    for task in TASKS:
        path = folder / f"{task}.jsonl"
        if path.is_file():
            for record in read_jsonl(path, warnings):
                cells.setdefault(task, {}).setdefault(variant_of(task, record), []).append(record)
    runs = read_json_lines(folder / "runs.jsonl", repair=False)  # a report only reads: a torn last line is skipped
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
        return (folder / "model.json").is_file() or any((folder / f"{t}.jsonl").is_file() for t in TASKS)

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


def mean_by_length(records: list[dict], value_key: str) -> dict[int, float]:
    """Mean over depths of `value_key` per length (cells without a number are left out)."""
    values: dict[int, list[float]] = {}
    for record in records:
        value = _as_float(record.get(value_key))
        if value is not None:
            values.setdefault(record["length"], []).append(value)
    return {length: sum(v) / len(v) for length, v in sorted(values.items())}


def pooled_ci95(records: list[dict], task: str) -> dict[int, list[float]]:
    """Per length, the Wilson 95% interval of all its depths' trials pooled (passkey: correct of trials, NIAH:
    retrieved of questions); a length with a cell lacking those counts (older results) has none."""
    from longctx.evals.scoring import wilson_interval

    hits, totals = ("correct", "trials") if task == "passkey" else ("retrieved", "questions")
    counts: dict[int, list[int]] = {}
    for record in records:
        k, n = record.get(hits), record.get(totals)
        pooled = counts.setdefault(record["length"], [0, 0])
        if isinstance(k, int) and isinstance(n, int) and pooled[1] >= 0:
            pooled[0], pooled[1] = pooled[0] + k, pooled[1] + n
        else:
            pooled[1] = -1
    return {length: wilson_interval(k, n) for length, (k, n) in sorted(counts.items()) if n > 0}


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
    model.ppl = {r["length"]: r for r in sorted(model.records("ppl"), key=lambda r: r["length"])}
    model.passkey = mean_by_length(model.records("passkey"), "accuracy")
    model.niah = mean_by_length(model.records("niah"), "score")
    model.ci95 = {task: pooled_ci95(model.records(task), task) for task in ("passkey", "niah")}
    for length in sorted(set(model.passkey) | set(model.niah)):
        scores = [s[length] for s in (model.passkey, model.niah) if length in s]
        model.retrieval[length] = sum(scores) / len(scores)
    model.effective_length = effective_length(model.retrieval)

    trained, lengths = model.trained, sorted(set(model.ppl) | set(model.retrieval))
    if model.ppl:
        in_distribution = [n for n in model.ppl if trained is not None and n <= trained]
        model.ppl_ref = model.ppl_value(max(in_distribution) if in_distribution else min(model.ppl))
    if trained is None:
        model.warnings.append("model.json has no trained_length: no verdict on extension is possible")
    # A model that cannot retrieve even within its trained length (a random or chat-formatted model) says
    # nothing about extension through retrieval: judge its longer lengths on perplexity alone.
    baseline = max((n for n in model.retrieval if trained is not None and n <= trained), default=None)
    retrieval_judges = baseline is None or model.retrieval[baseline] >= RETRIEVAL_FAILED
    if not retrieval_judges:
        model.notes.append(f"retrieval fails within the trained length ({model.retrieval[baseline]:.2f} at "
                           f"{fmt_len(baseline)}), so it cannot judge the extension")
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
    primaries = {task: primary_variant(models, task) for task in TASKS}
    for model in models:
        summarize(model, primaries)
    return models


def ppl_windows_text(model: ModelSummary) -> str | None:
    """Which documents the perplexity windows came from, per length: '2K: 2 windows (a.txt, b.txt); …'."""
    parts = []
    for record in sorted(model.records("ppl"), key=lambda r: r["length"]):
        windows = record.get("windows")
        if not isinstance(windows, list) or not windows:
            continue
        docs = ", ".join(dict.fromkeys(str(w.get("doc")) for w in windows if isinstance(w, dict)))
        parts.append(f"{fmt_len(record['length'])}: {len(windows)} window{'s' * (len(windows) != 1)} ({docs})")
    return "; ".join(parts) or None


def run_text(run: dict) -> str:
    """One evaluation run in a line: command, commit, machine, wall time."""
    commit = str(run.get("commit") or "unknown")[:12] + (" (modified)" if run.get("dirty") else "")
    machine = run.get("machine") if isinstance(run.get("machine"), dict) else {}
    where = ", ".join(str(x) for x in (machine.get("gpu") or machine.get("cpu"),
                                       machine.get("cores") and f"{machine['cores']} cores",
                                       machine.get("torch") and f"torch {machine['torch']}") if x)
    seconds = _as_float(run.get("wall_seconds"))
    wall = f"{seconds / 60:.1f} min" if seconds is not None else "?"
    return f"`{run.get('command')}` · commit {commit} · {where or 'machine unknown'} · {wall} · {run.get('started', '')}"


def rope_text(rope: dict | None) -> str:
    if not isinstance(rope, dict) or not rope:
        return "–"
    text = str(rope.get("rope_type") or rope.get("type") or "default")
    theta = _as_float(rope.get("rope_theta"))
    if theta is not None:
        text += " θ=" + f"{theta:.4g}".replace("e+0", "e").replace("e+", "e")  # 1e5, 5e5, 1.25e6
    factor = _as_float(rope.get("factor"))
    if factor is not None:
        text += f" ×{factor:g}"
    return text


def summary_json(models: list[ModelSummary], title: str, figures: list[str]) -> dict:
    from longctx import __version__

    rows = []
    for m in models:
        by_length = [{"length": n, "ppl": m.ppl_value(n),
                      "ppl_ci95": m.ppl.get(n, {}).get("ppl_ci95"), "passkey": m.passkey.get(n),
                      "passkey_ci95": m.ci95.get("passkey", {}).get(n), "niah": m.niah.get(n),
                      "niah_ci95": m.ci95.get("niah", {}).get(n), "retrieval": m.retrieval.get(n),
                      "status": m.status.get(n)}
                     for n in sorted(set(m.ppl) | set(m.retrieval))]
        rows.append({"label": m.label, "source": m.meta.get("source"), "trained_length": m.trained,
                     "claimed_length": m.claimed, "rope": m.meta.get("rope"),
                     "series": {task: variant_name(task, variant) for task, variant in m.series.items()},
                     "ppl_ref": m.ppl_ref, "by_length": by_length, "effective_length": m.effective_length,
                     "verdict": m.verdict, "superficial": bool(m.flags), "flags": m.flags, "warnings": m.warnings,
                     "ppl_windows": ppl_windows_text(m), "runs": m.runs})
    return _strict_json({"title": title, "longctx_version": __version__, "thresholds": {
        "retrieval_ok": RETRIEVAL_OK, "retrieval_failed": RETRIEVAL_FAILED, "ppl_holds": PPL_HOLDS,
        "ppl_broken": PPL_BROKEN}, "models": rows, "figures": figures})


def _strict_json(value):
    """Infinite perplexities as the string "inf" and NaN as null: JSON parsers outside Python reject both."""
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else "inf" if value > 0 else "-inf"
    if isinstance(value, dict):
        return {key: _strict_json(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    return value


# --- rendering ----------------------------------------------------------------------------------------
