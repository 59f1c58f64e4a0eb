"""What the two renderings of the report page (`page_markdown`, `page_html`) share: the tables' columns and
cells (the number, its background colour, its grade mark, whether the length lies beyond the trained one), the
legend under the tables with the judging rules it explains, the figures' captions and the length texts.
"""

from __future__ import annotations

from longctx.evals.report.judge import (  # the judging rules the legend explains
    PPL_BROKEN,
    PPL_HOLDS,
    RETRIEVAL_FAILED,
    RETRIEVAL_OK,
    SEPARATION,
)
from longctx.evals.report.load import ModelSummary, retrieval_tasks
from longctx.evals.report.text import fmt_ppl
from longctx.evals.tasks import all_tasks
from longctx.evals.tasks.base import PERPLEXITY
from longctx.lengths import fmt_len


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


def table_columns(models: list[ModelSummary]) -> list[tuple]:
    """(task, lengths) for each task some model has numbers of, lengths the union over models."""
    columns = [
        (task, sorted(set().union(*(m.values.get(task.name, {}) for m in models)))) for task in all_tasks().values()
    ]
    return [(task, lengths) for task, lengths in columns if lengths]


def metric_cell(model: ModelSummary, task, length: int) -> tuple[str, str | None]:
    """(text, background colour) of one metric cell: a perplexity is coloured by its ratio to the
    in-distribution one, a retrieval score by itself."""
    value = model.values.get(task.name, {}).get(length)
    if value is None:
        return "–", None
    if task.kind == PERPLEXITY:
        return fmt_ppl(value), _ppl_colour(model, length)
    return f"{value:.2f}", _score_colour(value)


OLD_GRADE = "†"  # marks a retrieval number graded token-exact only (cells written before content grading)
OTHER_SERIES = "‡"  # marks a number read on another series (e.g. other documents) than the rest of its column


def grade_note(model: ModelSummary, task, length: int) -> str:
    """What follows a retrieval number: † where it is the token-exact grade of older cells, the token-exact grade
    in parentheses where it differs from the content grade, else nothing."""
    graded_by = model.graded_by.get(task.name, {}).get(length)
    if graded_by in ("token-exact", "mixed"):
        return OLD_GRADE
    strict, value = model.strict.get(task.name, {}).get(length), model.values.get(task.name, {}).get(length)
    if strict is None or value is None or f"{strict:.2f}" == f"{value:.2f}":
        return ""
    return f" (exact {strict:.2f})"


def beyond_trained(model: ModelSummary, length: int) -> bool:
    return model.status.get(length, "in-distribution") != "in-distribution"


def figure_captions() -> dict[str, str]:
    return {figure.file: figure.caption for task in all_tasks().values() for figure in task.figures()}


def series_note(model: ModelSummary, task) -> str:
    """‡ after a number read on another series (data, settings) than the rest of its column."""
    return OTHER_SERIES if task.name in model.off_series else ""


def legend(models: list[ModelSummary]) -> str:
    shown = dict.fromkeys(
        f"{t.label} {t.variant_name(m.series[t.name])}"
        for t in all_tasks().values()
        for m in models
        if t.name in m.series and t.name not in m.off_series
    )
    return (
        _retrieval_legend() + _grading_legend(models) + (f" Series in the table: {'; '.join(shown)}." if shown else "")
        + _series_legend(models)
    )


def _series_legend(models: list[ModelSummary]) -> str:
    """Which rows of a column were read on another series, and which: their numbers do not compare across rows."""
    others: dict[str, list[str]] = {}
    for t in all_tasks().values():
        for m in models:
            if t.name in m.off_series and t.name in m.series:
                others.setdefault(f"{t.label} {t.variant_name(m.series[t.name])}", []).append(m.label)
    parts = [f"{', '.join(labels)}: {series}" for series, labels in others.items()]
    return (f" {OTHER_SERIES}: read on another series than the rest of the column, so not comparable across rows "
            f"there ({'; '.join(parts)})." if parts else "")


def _grading_legend(models: list[ModelSummary]) -> str:
    """How retrieval was graded, and what the marks beside its numbers mean, where a model has them."""
    grades = {g for m in models for by_length in m.graded_by.values() for g in by_length.values()}
    if not grades:
        return ""
    text = ""
    if "content" in grades:
        text += (
            " Retrieval is graded by content, as the passkey anchors and RULER grade: greedy decoding's answer "
            "holds the expected value (passkey: its first integer; NIAH: the number, ignoring case); "
            "(exact x): the token-exact grade (greedy decoding emits the gold answer's tokens first), where it "
            "differs."
        )
    if grades & {"token-exact", "mixed"}:
        text += (
            f" {OLD_GRADE}: graded token-exact only (greedy decoding emits the gold answer's tokens first): "
            "cells written before retrieval was graded by content (the answer holds the expected value); "
            "stricter: an answer with a newline instead of a space before the key counts wrong. A verdict weighs "
            "such cells against the token-exact grade of their control."
        )
    return text


def _retrieval_legend() -> str:
    metrics = [task.metric for task in retrieval_tasks()]
    mean_of = " and ".join([", ".join(metrics[:-1]), metrics[-1]] if len(metrics) > 1 else metrics)
    return (
        f"Retrieval = mean of {mean_of} (mean over depths; in brackets in report.md, the "
        f"Wilson 95% interval of all depths' trials pooled). Effective length (RULER): "
        f"the longest length L with retrieval >= {RETRIEVAL_OK} at every evaluated length <= L. Italic cells lie "
        f"beyond the model's trained length; their perplexity is coloured by its ratio to the in-distribution "
        f"perplexity (green <= {PPL_HOLDS}x, yellow <= {PPL_BROKEN}x, red above); in brackets, the 95% t interval "
        f"over windows. Every verdict is read from intervals: SUPERFICIAL when the interval of ppl(L) / "
        f"in-distribution ppl lies <= {PPL_HOLDS}x and retrieval's Wilson upper bound at L lies {SEPARATION} or "
        f"more below the lower bound of retrieval measured inside the trained length (the control; a model "
        f"without one is never flagged); extends when that ratio's interval lies <= {PPL_HOLDS}x and retrieval's "
        f"lower bound >= {RETRIEVAL_OK}; otherwise inconclusive, with the trials or windows that would decide it "
        f"at the observed rates. A control whose upper bound is below {RETRIEVAL_FAILED} cannot judge."
    )


def len_or_dash(length: int | None) -> str:
    return fmt_len(length) if length else "–"


def effective_text(model: ModelSummary) -> str:
    if not model.retrieval:
        return "–"
    return fmt_len(model.effective_length) if model.effective_length else f"< {fmt_len(min(model.retrieval))}"
