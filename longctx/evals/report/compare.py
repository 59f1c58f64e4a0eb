"""Perplexity of every model against one baseline model of the same folder (`longctx report --baseline LABEL`).

"Adds nothing", "costs 3%" and "better than" are comparisons between two models, and two separate means with
their own intervals cannot decide them: the windows vary far more than the models do. So each model's cell is
divided by the baseline's cell of the same series (same documents and settings) window by window, and the t
interval of the per-window log ratios says whether the difference is real (`intervals.ppl_ratio`). Where the two
did not read the same windows (cells of another window plan, e.g. written by an older longctx) the ratio is
unpaired and says so.
"""

from __future__ import annotations

import math

from longctx.errors import UsageError
from longctx.evals.report.load import ModelSummary, perplexity_task
from longctx.evals.tasks.intervals import ppl_ratio
from longctx.lengths import fmt_len


def versus_baseline(models: list[ModelSummary], baseline: str | None) -> dict[str, dict[int, dict]]:
    """Model label -> length -> ppl(model) / ppl(baseline) with its interval, on the model's shown series.
    Lengths where the baseline has no cell of that series are left out, and models without any; {} without a
    baseline."""
    task = perplexity_task()
    if not baseline or task is None:
        return {}
    base = next((m for m in models if m.label == baseline), None)
    if base is None:
        raise UsageError(f"--baseline {baseline}: no model folder of that label here "
                         f"(labels: {', '.join(m.label for m in models)})")
    out: dict[str, dict[int, dict]] = {}
    for model in models:
        variant = model.series.get(task.name)
        if model is base or variant is None:
            continue
        theirs = base.latest(task.name, variant)
        ratios = {n: ppl_ratio(cell, theirs[n]) for n, cell in model.latest(task.name).items() if n in theirs}
        if any(r is not None for r in ratios.values()):  # a model on text the baseline never read: not listed
            out[model.label] = {n: r for n, r in ratios.items() if r is not None}
    return out


def reading(ratio: dict) -> str:
    """lower / higher when the 95% interval lies on one side of 1, else inconclusive."""
    ci = ratio.get("ci95")
    if not ci:
        return "no interval"
    return "lower" if ci[1] < 1 else "higher" if ci[0] > 1 else "inconclusive"


def ratio_cell(ratio: dict | None) -> str:
    if ratio is None:
        return "–"
    if not math.isfinite(ratio["ratio"]):
        return "inf"
    ci = ratio.get("ci95")
    interval = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
    paired = "" if ratio.get("paired") else ", unpaired"
    return f"×{ratio['ratio']:.3f}{interval} ({reading(ratio)}{paired})"


def baseline_section(models: list[ModelSummary], baseline: str | None) -> dict | None:
    """The page's comparison table: {title, text, columns, rows of text}; None without a baseline or cells."""
    ratios = versus_baseline(models, baseline)
    lengths = sorted({n for by_length in ratios.values() for n in by_length})
    if not lengths:
        return None
    text = (f"ppl(model) / ppl({baseline}) on the model's series (the same documents and settings), with the 95% "
            f"t interval of the per-window log ratios where both read the same windows, else of the two cells' "
            f"intervals combined (unpaired, wider). lower / higher: the interval lies below / above 1; "
            f"inconclusive: it holds 1.")
    rows = [[label, *(ratio_cell(by_length.get(n)) for n in lengths)] for label, by_length in ratios.items()]
    return {"title": f"Perplexity against {baseline}", "text": text, "columns": ["Model", *map(fmt_len, lengths)],
            "rows": rows}


def baseline_json(models: list[ModelSummary], baseline: str) -> dict:
    """summary.json's record of the comparison: {baseline, models: label -> length -> ratio}."""
    ratios = versus_baseline(models, baseline)
    return {"baseline": baseline, "models": {
        label: {str(n): {**{k: r.get(k) for k in ("ratio", "ci95", "paired", "n")}, "reading": reading(r)}
                for n, r in by_length.items()} for label, by_length in ratios.items()}}
