"""The report page as HTML: templates/report.html.j2 filled with the tables' cells (coloured), the verdict badges,
the legend, the figures embedded as base64 PNGs (so the page can be mailed) and the models' details. Its Markdown
twin is `page_markdown`; `page` writes both.
"""

from __future__ import annotations

from longctx.evals.report.judge import no_flag_line
from longctx.evals.report.load import ModelSummary
from longctx.evals.report.page_table import (
    beyond_trained,
    effective_text,
    figure_captions,
    grade_note,
    legend,
    len_or_dash,
    metric_cell,
    series_note,
    table_columns,
)
from longctx.evals.report.text import details_text, inline_markdown, markdown_blocks, rope_text, run_groups
from longctx.evals.tasks import all_tasks
from longctx.lengths import fmt_len

STATUS_BADGE = {"superficial": "bad", "breaks": "warn", "degrades": "warn", "inconclusive": "neutral",
                "extends": "good"}


def _verdict_badge(model: ModelSummary) -> str:
    statuses = set(model.status.values())
    for status in ("superficial", "breaks", "degrades", "extends"):
        if status in statuses:
            return STATUS_BADGE[status]
    return "neutral"


def render_html(models: list[ModelSummary], context: dict, images: dict[str, str]) -> str:
    """The page of templates/report.html.j2; `images` holds each figure's PNG in base64."""
    from longctx.templates import html_page

    columns = table_columns(models)
    rows = [
        (
            m,
            [
                (text + grade_note(m, task, n) + series_note(m, task) if text != "–" else text, colour,
                 beyond_trained(m, n))
                for task, lengths in columns
                for n in lengths
                for text, colour in [metric_cell(m, task, n)]
            ],
        )
        for m in models
    ]
    return html_page(
        "report.html.j2",
        **context,
        models=models,
        columns=columns,
        rows=rows,
        fmt_len=fmt_len,
        badge=_verdict_badge,
        len_or_dash=len_or_dash,
        rope_text=rope_text,
        effective=effective_text,
        legend=legend(models),
        images=images,
        captions=figure_captions(),
        warned=[(m, w) for m in models for w in m.warnings],
        details=details_text,
        made=[inline_markdown(line) for line in run_groups(models)],
        status_badge=STATUS_BADGE,
        decided=[(m, n) for m in models for n in m.decisions],
        no_flag_line=no_flag_line(models),
        joined_html=inline_markdown(context.get("joined") or ""),
        task_sections=[markdown_blocks(task.report_lines(models)) for task in all_tasks().values()
                       if hasattr(task, "report_lines")],
    )
