"""`longctx report RESULTS_DIR`: one page that compares every evaluated model and says whether it worked.

Reads `RESULTS_DIR/<label>/model.json` and `<task>.jsonl` (ppl, passkey, niah) as written by `longctx eval`,
and writes `report.html` (self-contained: figures embedded as data URIs, so it can be mailed), `report.md`
(same content, linking the PNGs beside it), `summary.json` (the table and flags for machines) and the PNGs.

The point of the page is the verdict column. Perplexity alone is the classic trap of context extension:
a patched rotary config often keeps perplexity flat far beyond the trained length while the model can no
longer retrieve anything from there. So a length beyond the trained one counts as extended only when
retrieval (passkey / needle-in-a-haystack) holds too, and low perplexity with failed retrieval is flagged
SUPERFICIAL in red. Effective length follows RULER: the longest length L such that every evaluated length
<= L has retrieval >= 0.85.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from longctx.errors import UsageError

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
    ppl_ref: float | None = None                # perplexity at the longest evaluated length <= trained
    status: dict[int, str] = field(default_factory=dict)      # length -> in-distribution/extends/...
    flags: list[dict] = field(default_factory=list)
    effective_length: int | None = None
    verdict: str = ""
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)             # verdict caveats, said before the verdict

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
    if task == "passkey":
        return (record.get("mode"),)
    return (record.get("needles", 1), record.get("distractors", 0), record.get("mode"))


def variant_name(task: str, variant: tuple) -> str:
    if task == "ppl":
        return f"data={variant[0]}, stride={'none' if variant[1] is None else variant[1]}"
    if task == "passkey":
        return f"mode={variant[0]}"
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
    for message in warnings:
        log.warning("longctx report: %s: %s", folder.name, message)
    return ModelSummary(label=str(meta.get("label") or folder.name), meta=meta, cells=cells, warnings=warnings)


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
                      "niah": m.niah.get(n), "retrieval": m.retrieval.get(n), "status": m.status.get(n)}
                     for n in sorted(set(m.ppl) | set(m.retrieval))]
        rows.append({"label": m.label, "source": m.meta.get("source"), "trained_length": m.trained,
                     "claimed_length": m.claimed, "rope": m.meta.get("rope"),
                     "series": {task: variant_name(task, variant) for task, variant in m.series.items()},
                     "ppl_ref": m.ppl_ref, "by_length": by_length, "effective_length": m.effective_length,
                     "verdict": m.verdict, "superficial": bool(m.flags), "flags": m.flags, "warnings": m.warnings})
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

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#222;max-width:1500px;margin:24px auto;
 padding:0 18px;line-height:1.4}
h1{margin:0 0 4px;font-size:1.7em} h2{margin-top:30px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta,figcaption,.legend{color:#666;font-size:.88em}
.badge{display:inline-block;padding:1px 8px;border-radius:4px;color:#fff;font-weight:700;font-size:.8em;
 letter-spacing:.03em;margin-right:6px;white-space:nowrap}
.bad{background:#c62828}.good{background:#2e7d32}.warn{background:#e65100}.neutral{background:#607d8b}
.alert{background:#fdecea;border-left:6px solid #c62828;padding:9px 14px;margin:8px 0;font-size:1.05em}
.ok{background:#edf7ee;border-left:6px solid #2e7d32;padding:9px 14px;margin:8px 0}
table{border-collapse:collapse;font-size:.86em;margin:8px 0} th,td{border:1px solid #d5d5d5;padding:4px 7px;
 text-align:center} th{background:#f3f3f3} td.txt{text-align:left;max-width:380px} td.beyond{font-style:italic}
figure{margin:20px 0} figure img{max-width:100%;border:1px solid #eee} ul{padding-left:22px}
"""
STATUS_BADGE = {"superficial": "bad", "breaks": "warn", "degrades": "warn", "extends": "good"}


def _score_colour(score: float) -> str:
    """Pastel red -> yellow -> green for a 0..1 score, matching the heatmaps' RdYlGn."""
    stops = ((0.0, (244, 166, 160)), (0.5, (255, 236, 160)), (1.0, (166, 219, 168)))
    score = min(max(score, 0.0), 1.0)
    (x0, c0), (x1, c1) = (stops[0], stops[1]) if score <= 0.5 else (stops[1], stops[2])
    t = (score - x0) / (x1 - x0)
    return "#" + "".join(f"{round(a + (b - a) * t):02x}" for a, b in zip(c0, c1, strict=True))


def _ppl_colour(model: ModelSummary, length: int) -> str | None:
    ppl = model.ppl_value(length)
    if ppl is None or not model.ppl_ref or model.status.get(length) == "in-distribution":
        return None
    ratio = ppl / model.ppl_ref
    return _score_colour(1.0 if ratio <= PPL_HOLDS else 0.5 if ratio <= PPL_BROKEN else 0.0)


def _columns(models: list[ModelSummary]) -> list[tuple[str, str, list[int]]]:
    """(name, attribute, lengths) for each metric group some model has, lengths the union over models."""
    groups = [("Perplexity", "ppl"), ("Passkey accuracy", "passkey"), ("NIAH score", "niah")]
    return [(name, attr, sorted(set().union(*(getattr(m, attr) for m in models))))
            for name, attr in groups if any(getattr(m, attr) for m in models)]


def _cell(model: ModelSummary, attr: str, length: int) -> tuple[str, str | None]:
    """(text, background colour) of one metric cell."""
    if attr == "ppl":
        return (fmt_ppl(model.ppl_value(length)), _ppl_colour(model, length)) if length in model.ppl else ("–", None)
    value = getattr(model, attr).get(length)
    return ("–", None) if value is None else (f"{value:.2f}", _score_colour(value))


def _verdict_badge(model: ModelSummary) -> str:
    statuses = set(model.status.values())
    for status in ("superficial", "breaks", "degrades", "extends"):
        if status in statuses:
            return STATUS_BADGE[status]
    return "neutral"


def render_html(models: list[ModelSummary], context: dict, images: dict[str, str]) -> str:
    e = html.escape
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(context['title'])}</title>"
           f"<style>{CSS}</style></head><body><h1>{e(context['title'])}</h1>",
           f"<div class='meta'>{len(models)} model(s) from <code>{e(context['results_dir'])}</code> · "
           f"generated {e(context['generated'])}</div>"]
    flagged = [m for m in models if m.flags]
    for m in flagged:
        out.append(f"<div class='alert'><span class='badge bad'>SUPERFICIAL</span><b>{e(m.label)}</b>: "
                   f"{e(m.verdict)}</div>")
    if not flagged:
        out.append("<div class='ok'>No superficial long context: no model keeps low perplexity beyond its "
                   "trained length while failing retrieval.</div>")
    out.append("<ul>" + "".join(f"<li><span class='badge {_verdict_badge(m)}'>{e(m.label)}</span>{e(m.verdict)}</li>"
                                for m in models) + "</ul>")

    columns = _columns(models)
    out.append("<h2>Summary</h2><table><tr><th rowspan=2>Model</th><th rowspan=2>Trained</th>"
               "<th rowspan=2>Claimed</th><th rowspan=2>RoPE</th>"
               + "".join(f"<th colspan={len(lengths)}>{name}</th>" for name, _, lengths in columns)
               + "<th rowspan=2>Effective length</th><th rowspan=2>Verdict</th></tr><tr>"
               + "".join(f"<th>{fmt_len(n)}</th>" for _, _, lengths in columns for n in lengths) + "</tr>")
    for m in models:
        cells = []
        for _, attr, lengths in columns:
            for n in lengths:
                text, colour = _cell(m, attr, n)
                style = f" style='background:{colour}'" if colour else ""
                beyond = " class='beyond'" if m.status.get(n, "in-distribution") != "in-distribution" else ""
                cells.append(f"<td{beyond}{style}>{text}</td>")
        badge = "<span class='badge bad'>SUPERFICIAL</span><br>" if m.flags else ""
        out.append(f"<tr><td class='txt'><b>{e(m.label)}</b></td><td>{_len_or_dash(m.trained)}</td>"
                   f"<td>{_len_or_dash(m.claimed)}</td><td>{e(rope_text(m.meta.get('rope')))}</td>{''.join(cells)}"
                   f"<td><b>{_effective_text(m)}</b></td><td class='txt'>{badge}{e(m.verdict)}</td></tr>")
    out.append(f"</table><div class='legend'>{e(_legend(models))}</div>")

    if context["figures"]:
        out.append("<h2>Figures</h2>")
    for name in context["figures"]:
        out.append(f"<figure><img alt='{e(name)}' src='data:image/png;base64,{images[name]}'>"
                   f"<figcaption>{e(FIGURES[name])} (<a href='{e(name)}'>{e(name)}</a>)</figcaption></figure>")
    warned = [(m, w) for m in models for w in m.warnings]
    if warned:
        out.append("<h2>Warnings</h2><ul>" + "".join(f"<li><b>{e(m.label)}</b>: {e(w)}</li>" for m, w in warned)
                   + "</ul>")
    out.append("<h2>Models</h2><ul>" + "".join(f"<li><b>{e(m.label)}</b>: {e(_details(m))}</li>" for m in models)
               + "</ul></body></html>\n")
    return "\n".join(out)


def _legend(models: list[ModelSummary]) -> str:
    names = {"ppl": "perplexity", "passkey": "passkey", "niah": "NIAH"}
    shown = dict.fromkeys(f"{names[t]} {variant_name(t, m.series[t])}" for t in TASKS for m in models if t in m.series)
    return LEGEND + (f" Series in the table: {'; '.join(shown)}." if shown else "")


LEGEND = (f"Retrieval = mean of passkey accuracy and NIAH score (mean over depths). Effective length (RULER): "
          f"the longest length L with retrieval >= {RETRIEVAL_OK} at every evaluated length <= L. Italic cells lie "
          f"beyond the model's trained length; their perplexity is coloured by its ratio to the in-distribution "
          f"perplexity (green <= {PPL_HOLDS}x, yellow <= {PPL_BROKEN}x, red above). SUPERFICIAL: perplexity "
          f"<= {PPL_HOLDS}x in-distribution beyond the trained length while retrieval < {RETRIEVAL_FAILED}.")


def _len_or_dash(length: int | None) -> str:
    return fmt_len(length) if length else "–"


def _effective_text(model: ModelSummary) -> str:
    if not model.retrieval:
        return "–"
    return fmt_len(model.effective_length) if model.effective_length else f"< {fmt_len(min(model.retrieval))}"


def _details(model: ModelSummary) -> str:
    keys = ("source", "model_dir", "device", "dtype", "attn_implementation", "longctx_version")
    parts = [f"{k}={model.meta[k]}" for k in keys if model.meta.get(k) not in (None, "")]
    if model.meta.get("rope"):
        parts.append("rope=" + json.dumps(model.meta["rope"], sort_keys=True))
    for series, records in model.cells.get("ppl", {}).items():  # series the table leaves out, with their values
        if series != model.ppl_series:
            parts.append(f"perplexity {variant_name('ppl', series)}: " + ", ".join(
                f"{fmt_len(r['length'])}: {fmt_ppl(_as_float(r.get('ppl'), math.inf))}"
                for r in sorted(records, key=lambda r: r["length"])))
    return "; ".join(parts) or "no model.json"


def render_markdown(models: list[ModelSummary], context: dict) -> str:
    def row(cells) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    out = [f"# {context['title']}", "", f"_{len(models)} model(s) from `{context['results_dir']}`, "
           f"generated {context['generated']}_", ""]
    for m in models:
        if m.flags:
            out += [f"> 🟥 **SUPERFICIAL — {m.label}**: {m.verdict}", ""]
    if not any(m.flags for m in models):
        out += ["> No superficial long context: no model keeps low perplexity beyond its trained length while "
                "failing retrieval.", ""]
    out += ["## Summary", "", row(["Model", "Trained", "Claimed", "RoPE", "Effective length", "Verdict"]),
            row(["---"] * 6)]
    for m in models:
        verdict_text = f"🟥 **{m.verdict}**" if m.flags else m.verdict
        out.append(row([f"**{m.label}**", _len_or_dash(m.trained), _len_or_dash(m.claimed),
                        rope_text(m.meta.get("rope")), _effective_text(m), verdict_text]))
    for name, attr, lengths in _columns(models):
        out += ["", f"### {name}", "", row(["Model", *map(fmt_len, lengths)]), row(["---"] * (len(lengths) + 1))]
        for m in models:
            texts = []
            for n in lengths:
                text = _cell(m, attr, n)[0]
                texts.append(f"*{text}*" if text != "–" and m.status.get(n, "in-distribution") != "in-distribution"
                             else text)
            out.append(row([f"**{m.label}**", *texts]))
    out += ["", _legend(models), ""]
    if context["figures"]:
        out += ["## Figures", ""]
        out += [line for name in context["figures"] for line in (f"![{FIGURES[name]}]({name})", "", FIGURES[name], "")]
    warned = [(m, w) for m in models for w in m.warnings]
    if warned:
        out += ["## Warnings", "", *(f"- **{m.label}**: {w}" for m, w in warned), ""]
    out += ["## Models", "", *(f"- **{m.label}**: {_details(m)}" for m in models), ""]
    return "\n".join(out) + "\n"


# --- writing ------------------------------------------------------------------------------------------

def write_report(results_dir: Path | str, out_dir: Path | str | None = None, title: str | None = None) -> list[Path]:
    """Render RESULTS_DIR into report.html, report.md, summary.json and the PNGs; returns the files written."""
    from longctx.evals import plots

    results_dir = Path(results_dir)
    out_dir = Path(out_dir) if out_dir is not None else results_dir
    models = build_summary(load_results(results_dir))
    title = title or f"longctx report: {results_dir.resolve().name}"
    out_dir.mkdir(parents=True, exist_ok=True)

    figures: list[str] = []
    for name, draw in (("ppl_vs_length.png", plots.ppl_vs_length), ("passkey_heatmaps.png", plots.passkey_heatmaps),
                       ("niah_heatmaps.png", plots.niah_heatmaps), ("ppl_buckets.png", plots.ppl_buckets)):
        path = out_dir / name
        if draw(models, path):
            figures.append(name)
        elif path.exists():
            path.unlink()  # a figure from an earlier run of other results would contradict this report

    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    context = {"title": title, "generated": generated, "results_dir": str(results_dir), "figures": figures}
    written = [out_dir / name for name in figures]
    (out_dir / "summary.json").write_text(json.dumps(summary_json(models, title, figures), indent=2, allow_nan=False) + "\n")
    (out_dir / "report.md").write_text(render_markdown(models, context))
    images = {name: base64.b64encode((out_dir / name).read_bytes()).decode("ascii") for name in figures}
    (out_dir / "report.html").write_text(render_html(models, context, images))
    return [out_dir / "report.html", out_dir / "report.md", out_dir / "summary.json", *written]


def run(args) -> int:
    paths = write_report(args.results_dir, args.out, args.title)
    models = json.loads(paths[2].read_text())["models"]
    for model in models:
        marker = "!!" if model["superficial"] else "  "
        print(f"{marker} {model['label']}: {model['verdict']}")
    print(f"wrote {paths[0]} (+ {', '.join(p.name for p in paths[1:])})")
    return 0


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "report", help="render evaluation results as one HTML/Markdown page with plots and verdicts",
        description="Compare every model folder in RESULTS_DIR on one page: perplexity and retrieval by length, "
                    "heatmaps, effective length (RULER) and a verdict that flags low perplexity with failed "
                    "retrieval as SUPERFICIAL.")
    parser.add_argument("results_dir", metavar="RESULTS_DIR", type=Path,
                        help="folder written by `longctx eval` (one subfolder per model label)")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="where to write report.html, report.md, summary.json and PNGs (default: RESULTS_DIR)")
    parser.add_argument("--title", default=None, help="page title (default: 'longctx report: <folder name>')")
    parser.set_defaults(func=run)

