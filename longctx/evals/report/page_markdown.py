"""The report page as Markdown (report.md): the same content as the HTML page, numbers with their intervals in
brackets, cells beyond the trained length in italics, each task's own section (RULER's tables) and the figures
linked as the PNGs beside it. Its HTML twin is `page_html`; `page` writes both.
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
from longctx.evals.report.text import details_text, fmt_ppl, rope_text, run_groups
from longctx.evals.tasks import all_tasks
from longctx.evals.tasks.base import PERPLEXITY, RETRIEVAL
from longctx.lengths import fmt_len


def _status_text(status: str) -> str:
    return {"superficial": "🟥 **SUPERFICIAL**", "extends": "extends", "inconclusive": "inconclusive"}.get(
        status, status
    )


def render_markdown(models: list[ModelSummary], context: dict) -> str:
    def row(cells) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    out = [
        f"# {context['title']}",
        "",
        f"_{len(models)} model(s) from `{context['results_dir']}`, generated {context['generated']}_",
        "",
        *([context["joined"], ""] if context.get("joined") else []),
    ]
    for m in models:
        if m.flags:
            out += [f"> 🟥 **SUPERFICIAL — {m.label}**: {m.verdict}", ""]
    if not any(m.flags for m in models):
        out += [f"> {no_flag_line(models)}", ""]
    out += [
        "## Summary",
        "",
        row(["Model", "Trained", "Claimed", "RoPE", "Effective length", "Verdict"]),
        row(["---"] * 6),
    ]
    for m in models:
        verdict_text = f"🟥 **{m.verdict}**" if m.flags else m.verdict
        out.append(
            row(
                [
                    f"**{m.label}**",
                    len_or_dash(m.trained),
                    len_or_dash(m.claimed),
                    rope_text(m.meta.get("rope")),
                    effective_text(m),
                    verdict_text,
                ]
            )
        )
    for task, lengths in table_columns(models):
        out += ["", f"### {task.title}", "", row(["Model", *map(fmt_len, lengths)]), row(["---"] * (len(lengths) + 1))]
        for m in models:
            texts = []
            for n in lengths:
                text = metric_cell(m, task, n)[0]
                interval = m.ci95.get(task.name, {}).get(n) if text != "–" else None
                if interval and task.kind == RETRIEVAL:  # pooled over depths: Wilson 95%
                    text += f" [{interval[0]:.2f}, {interval[1]:.2f}]"
                elif interval and task.kind == PERPLEXITY:  # t interval over windows
                    text += f" [{fmt_ppl(interval[0])}, {fmt_ppl(interval[1])}]"
                text += grade_note(m, task, n) + series_note(m, task) if text != "–" else ""
                texts.append(f"*{text}*" if text != "–" and beyond_trained(m, n) else text)
            out.append(row([f"**{m.label}**", *texts]))
    out += ["", legend(models), ""]
    decided = [(m, n) for m in models for n in m.decisions]
    if decided:
        out += [
            "## Verdicts by length",
            "",
            "Beyond each model's trained length; the interval behind each "
            "decision, and what would settle it where the data do not.",
            "",
            row(["Model", "Length", "Verdict", "Why"]),
            row(["---"] * 4),
        ]
        out += [row([f"**{m.label}**", fmt_len(n), _status_text(m.status[n]), m.decisions[n]]) for m, n in decided]
        out += [""]
    for versus in context.get("baselines") or []:
        out += [f"## {versus['title']}", "", versus["text"], "", row(versus["columns"]),
                row(["---"] * len(versus["columns"])), *(row([f"**{r[0]}**", *r[1:]]) for r in versus["rows"]), ""]
    for task in all_tasks().values():  # a task's own section (RULER's table layout), where it has one
        out += task.report_lines(models) if hasattr(task, "report_lines") else []
    if context["figures"]:
        out += ["## Figures", ""]
        captions = figure_captions()
        out += [
            line for name in context["figures"] for line in (f"![{captions[name]}]({name})", "", captions[name], "")
        ]
    warned = [(m, w) for m in models for w in m.warnings]
    if warned:
        out += ["## Warnings", "", *(f"- **{m.label}**: {w}" for m, w in warned), ""]
    out += ["## Models", "", *(f"- **{m.label}**: {details_text(m)}" for m in models), ""]
    made = run_groups(models)
    if made:
        out += ["## How these numbers were made", "", *(f"- {line}" for line in made), ""]
    return "\n".join(out) + "\n"
