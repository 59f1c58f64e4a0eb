"""`longctx report RESULTS_DIR`: one page that compares every evaluated model and says whether it worked.

Reads `RESULTS_DIR/<label>/model.json` and `<task>.jsonl` (one per task of `longctx.evals.tasks.all_tasks()`) as written
by `longctx eval`, and writes `report.html` (templates/report.html.j2, self-contained: figures embedded as data
URIs, so it can be mailed), `report.md` (same content, linking the PNGs beside it), `summary.json` (the table
and flags for machines) and the PNGs. Every task contributes its table, its figures and its summary.json columns.

The point of the page is the verdict column. Perplexity alone is the classic trap of context extension:
a patched rotary config often keeps perplexity flat far beyond the trained length while the model can no
longer retrieve anything from there. So a length beyond the trained one counts as extended only when
retrieval (passkey / needle-in-a-haystack) holds too, and low perplexity with failed retrieval is flagged
SUPERFICIAL in red. Effective length follows RULER: the longest length L such that every evaluated length
<= L has retrieval >= 0.85.
"""

from __future__ import annotations

import base64
import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

from longctx.evals.report import plots
from longctx.evals.report.judge import (  # the judging rules the page explains
    PPL_BROKEN,
    PPL_HOLDS,
    RETRIEVAL_FAILED,
    RETRIEVAL_OK,
    SEPARATION,
    build_summary,
)
from longctx.evals.report.load import ModelSummary, load_results, perplexity_task, retrieval_tasks
from longctx.evals.report.summary_json import summary_json
from longctx.evals.report.text import (
    checkout_root,
    fmt_ppl,
    inline_markdown,
    portable,
    rope_text,
    run_groups,
)
from longctx.evals.tasks import all_tasks
from longctx.evals.tasks.base import PERPLEXITY, RETRIEVAL
from longctx.files import partial_dir, replace_into_place
from longctx.lengths import fmt_len
from longctx.locks import output_lock

STATUS_BADGE = {"superficial": "bad", "breaks": "warn", "degrades": "warn", "inconclusive": "neutral",
                "extends": "good"}


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


def _columns(models: list[ModelSummary]) -> list[tuple]:
    """(task, lengths) for each task some model has numbers of, lengths the union over models."""
    columns = [
        (task, sorted(set().union(*(m.values.get(task.name, {}) for m in models)))) for task in all_tasks().values()
    ]
    return [(task, lengths) for task, lengths in columns if lengths]


def _cell(model: ModelSummary, task, length: int) -> tuple[str, str | None]:
    """(text, background colour) of one metric cell: a perplexity is coloured by its ratio to the
    in-distribution one, a retrieval score by itself."""
    value = model.values.get(task.name, {}).get(length)
    if value is None:
        return "–", None
    if task.kind == PERPLEXITY:
        return fmt_ppl(value), _ppl_colour(model, length)
    return f"{value:.2f}", _score_colour(value)


OLD_GRADE = "†"  # marks a retrieval number graded token-exact only (cells written before content grading)


def _grade_note(model: ModelSummary, task, length: int) -> str:
    """What follows a retrieval number: † where it is the token-exact grade of older cells, the token-exact grade
    in parentheses where it differs from the content grade, else nothing."""
    graded_by = model.graded_by.get(task.name, {}).get(length)
    if graded_by in ("token-exact", "mixed"):
        return OLD_GRADE
    strict, value = model.strict.get(task.name, {}).get(length), model.values.get(task.name, {}).get(length)
    if strict is None or value is None or f"{strict:.2f}" == f"{value:.2f}":
        return ""
    return f" (exact {strict:.2f})"


def _beyond(model: ModelSummary, length: int) -> bool:
    return model.status.get(length, "in-distribution") != "in-distribution"


def _verdict_badge(model: ModelSummary) -> str:
    statuses = set(model.status.values())
    for status in ("superficial", "breaks", "degrades", "extends"):
        if status in statuses:
            return STATUS_BADGE[status]
    return "neutral"


def render_html(models: list[ModelSummary], context: dict, images: dict[str, str]) -> str:
    """The page of templates/report.html.j2; `images` holds each figure's PNG in base64."""
    from longctx.templates import html_page

    columns = _columns(models)
    rows = [
        (
            m,
            [
                (text + _grade_note(m, task, n) if text != "–" else text, colour, _beyond(m, n))
                for task, lengths in columns
                for n in lengths
                for text, colour in [_cell(m, task, n)]
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
        len_or_dash=_len_or_dash,
        rope_text=rope_text,
        effective=_effective_text,
        legend=_legend(models),
        images=images,
        captions=_captions(),
        warned=[(m, w) for m in models for w in m.warnings],
        details=_details,
        made=[inline_markdown(line) for line in run_groups(models)],
        status_badge=STATUS_BADGE,
        decided=[(m, n) for m in models for n in m.decisions],
    )


def _captions() -> dict[str, str]:
    return {figure.file: figure.caption for task in all_tasks().values() for figure in task.figures()}


def _legend(models: list[ModelSummary]) -> str:
    shown = dict.fromkeys(
        f"{t.label} {t.variant_name(m.series[t.name])}"
        for t in all_tasks().values()
        for m in models
        if t.name in m.series
    )
    return (
        _retrieval_legend() + _grading_legend(models) + (f" Series in the table: {'; '.join(shown)}." if shown else "")
    )


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
            "stricter: an answer with a newline instead of a space before the key counts wrong."
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


def _status_text(status: str) -> str:
    return {"superficial": "🟥 **SUPERFICIAL**", "extends": "extends", "inconclusive": "inconclusive"}.get(
        status, status
    )


def _len_or_dash(length: int | None) -> str:
    return fmt_len(length) if length else "–"


def _effective_text(model: ModelSummary) -> str:
    if not model.retrieval:
        return "–"
    return fmt_len(model.effective_length) if model.effective_length else f"< {fmt_len(min(model.retrieval))}"


def origin_text(model: ModelSummary) -> str:
    """The weights' origin as the loader recorded it (model.json `origin`), else as its paths tell."""
    from longctx.sources import origin

    if model.meta.get("origin"):
        return str(model.meta["origin"])
    if not model.meta.get("source") and not model.meta.get("model_dir"):
        return "origin unknown"
    return origin(str(model.meta.get("source") or model.meta.get("model_dir")), model.meta.get("model_dir"))


def _details(model: ModelSummary) -> str:
    """Where the model came from in words, then each setting once (a path the words already name is left out)."""
    keys = ("source", "model_dir", "device", "dtype", "attn_implementation", "longctx_version")
    parts = [origin_text(model)] if model.meta else []
    shown = set(" ".join(parts).replace(",", " ").split())
    for key in keys:
        value = model.meta.get(key)
        if value in (None, "") or (key in ("source", "model_dir") and str(value) in shown):
            continue
        parts.append(f"{key}={value}")
        shown.add(str(value))
    if model.meta.get("rope"):
        parts.append("rope=" + json.dumps(model.meta["rope"], sort_keys=True))
    ppl = perplexity_task()
    other_series = {s: r for s, r in model.cells.get(ppl.name, {}).items() if s != model.ppl_series} if ppl else {}
    for series, records in other_series.items():  # perplexity series the table leaves out, with their values
        parts.append(
            f"{ppl.label} {ppl.variant_name(series)}: "
            + ", ".join(
                f"{fmt_len(r['length'])}: {fmt_ppl(ppl.value(r))}" for r in sorted(records, key=lambda r: r["length"])
            )
        )
    return "; ".join(parts) or "no model.json"


def render_markdown(models: list[ModelSummary], context: dict) -> str:
    def row(cells) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    out = [
        f"# {context['title']}",
        "",
        f"_{len(models)} model(s) from `{context['results_dir']}`, generated {context['generated']}_",
        "",
    ]
    for m in models:
        if m.flags:
            out += [f"> 🟥 **SUPERFICIAL — {m.label}**: {m.verdict}", ""]
    if not any(m.flags for m in models):
        out += [
            "> No superficial long context: no model keeps low perplexity beyond its trained length while "
            "failing retrieval.",
            "",
        ]
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
                    _len_or_dash(m.trained),
                    _len_or_dash(m.claimed),
                    rope_text(m.meta.get("rope")),
                    _effective_text(m),
                    verdict_text,
                ]
            )
        )
    for task, lengths in _columns(models):
        out += ["", f"### {task.title}", "", row(["Model", *map(fmt_len, lengths)]), row(["---"] * (len(lengths) + 1))]
        for m in models:
            texts = []
            for n in lengths:
                text = _cell(m, task, n)[0]
                interval = m.ci95.get(task.name, {}).get(n) if text != "–" else None
                if interval and task.kind == RETRIEVAL:  # pooled over depths: Wilson 95%
                    text += f" [{interval[0]:.2f}, {interval[1]:.2f}]"
                elif interval and task.kind == PERPLEXITY:  # t interval over windows
                    text += f" [{fmt_ppl(interval[0])}, {fmt_ppl(interval[1])}]"
                text += _grade_note(m, task, n) if text != "–" else ""
                texts.append(f"*{text}*" if text != "–" and _beyond(m, n) else text)
            out.append(row([f"**{m.label}**", *texts]))
    out += ["", _legend(models), ""]
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
    for task in all_tasks().values():  # a task's own section (RULER's table layout), where it has one
        out += task.report_lines(models) if hasattr(task, "report_lines") else []
    if context["figures"]:
        out += ["## Figures", ""]
        captions = _captions()
        out += [
            line for name in context["figures"] for line in (f"![{captions[name]}]({name})", "", captions[name], "")
        ]
    warned = [(m, w) for m in models for w in m.warnings]
    if warned:
        out += ["## Warnings", "", *(f"- **{m.label}**: {w}" for m, w in warned), ""]
    out += ["## Models", "", *(f"- **{m.label}**: {_details(m)}" for m in models), ""]
    made = run_groups(models)
    if made:
        out += ["## How these numbers were made", "", *(f"- {line}" for line in made), ""]
    return "\n".join(out) + "\n"


# --- writing ------------------------------------------------------------------------------------------


def write_report(results_dir: Path | str, out_dir: Path | str | None = None, title: str | None = None) -> list[Path]:
    """Render RESULTS_DIR into report.html, report.md, summary.json and the PNGs; returns the files written."""
    results_dir = Path(results_dir)
    out_dir = Path(out_dir) if out_dir is not None else results_dir
    models = build_summary(load_results(results_dir))
    title = title or f"longctx report: {results_dir.resolve().name}"
    with output_lock(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = partial_dir(out_dir / "report")  # every file is drawn here, then moved into place one by one
        try:
            return _write_report(models, results_dir, out_dir, tmp, title)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _write_report(models, results_dir: Path, out_dir: Path, tmp: Path, title: str) -> list[Path]:
    figures: list[str] = []
    every = [figure for task in all_tasks().values() for figure in task.figures()]
    for figure in sorted(every, key=lambda figure: figure.detail):  # each task's overview first, then details
        if getattr(plots, figure.plot)(models, tmp / figure.file, figure.task):
            figures.append(figure.file)

    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    root = checkout_root(results_dir)  # paths inside the checkout are written relative to it

    def write(name: str, text: str) -> None:
        (tmp / name).write_text(portable(text, root))

    context = {"title": title, "generated": generated, "results_dir": portable(str(results_dir.resolve()), root),
               "figures": figures}
    write("summary.json", json.dumps(summary_json(models, title, figures), indent=2, allow_nan=False) + "\n")
    write("report.md", render_markdown(models, context))
    images = {name: base64.b64encode((tmp / name).read_bytes()).decode("ascii") for name in figures}
    write("report.html", render_html(models, context, images))
    for figure in every:  # a figure from an earlier run of other results would contradict this report
        if figure.file not in figures and (out_dir / figure.file).exists():
            (out_dir / figure.file).unlink()
    names = [*figures, "summary.json", "report.md", "report.html"]
    for name in names:  # every file is whole; the page last, so it never shows figures of another run
        replace_into_place(tmp / name, out_dir / name)
    return [out_dir / "report.html", out_dir / "report.md", out_dir / "summary.json", *(out_dir / n for n in figures)]


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
        "report",
        help="render evaluation results as one HTML/Markdown page with plots and verdicts",
        description="Compare every model folder in RESULTS_DIR on one page: perplexity and retrieval by length, "
        "heatmaps, effective length (RULER) and a verdict that flags low perplexity with failed "
        "retrieval as SUPERFICIAL.",
    )
    parser.add_argument(
        "results_dir",
        metavar="RESULTS_DIR",
        type=Path,
        help="folder written by `longctx eval` (one subfolder per model label)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="where to write report.html, report.md, summary.json and PNGs (default: RESULTS_DIR)",
    )
    parser.add_argument("--title", default=None, help="page title (default: 'longctx report: <folder name>')")
    parser.set_defaults(func=run)
