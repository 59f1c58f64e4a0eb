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

This module is the `longctx report` verb and writes the files; `page_markdown` and `page_html` render the two
pages from what `page_table` gives both, and `text` holds their words and numbers.
"""

from __future__ import annotations

import base64
import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

from longctx.evals.report import plots
from longctx.evals.report.compare import baseline_json, baseline_section, versus_baseline
from longctx.evals.report.judge import build_summary
from longctx.evals.report.load import load_results
from longctx.evals.report.page_html import render_html
from longctx.evals.report.page_markdown import render_markdown
from longctx.evals.report.summary_json import summary_json
from longctx.evals.report.text import checkout_root, portable
from longctx.evals.tasks import all_tasks
from longctx.files import partial_dir, replace_into_place
from longctx.locks import output_lock


def write_report(results_dir: Path | str, out_dir: Path | str | None = None, title: str | None = None,
                 baseline: str | None = None) -> list[Path]:
    """Render RESULTS_DIR into report.html, report.md, summary.json and the PNGs; returns the files written.
    `baseline`: the label every model's perplexity is compared with (`compare`); None keeps the one of the last
    report written to OUT (so a suite's re-render keeps it), "none" drops it."""
    results_dir = Path(results_dir)
    out_dir = Path(out_dir) if out_dir is not None else results_dir
    models = build_summary(load_results(results_dir))
    title = title or f"longctx report: {results_dir.resolve().name}"
    with output_lock(out_dir):
        baseline = _last_baseline(out_dir) if baseline is None else None if baseline == "none" else baseline
        versus_baseline(models, baseline)  # an unknown label: one line before anything is drawn
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = partial_dir(out_dir / "report")  # every file is drawn here, then moved into place one by one
        try:
            return _write_report(models, results_dir, out_dir, tmp, title, baseline)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _last_baseline(out_dir: Path) -> str | None:
    try:
        last = json.loads((out_dir / "summary.json").read_text()).get("versus_baseline") or {}
    except (OSError, ValueError, AttributeError):
        return None
    return last.get("baseline") if isinstance(last, dict) and isinstance(last.get("baseline"), str) else None


def _write_report(models, results_dir: Path, out_dir: Path, tmp: Path, title: str, baseline: str | None) -> list[Path]:
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
               "figures": figures, "baseline": baseline_section(models, baseline)}
    summary = {**summary_json(models, title, figures), "versus_baseline": baseline_json(models, baseline)}
    write("summary.json", json.dumps(summary, indent=2, allow_nan=False) + "\n")
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
    paths = write_report(args.results_dir, args.out, args.title, args.baseline)
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
    parser.add_argument(
        "--baseline",
        default=None,
        metavar="LABEL",
        help="compare every model's perplexity with this model's, window by window (paired intervals); default: "
        "the baseline of the last report in the output folder; 'none' drops it",
    )
    parser.set_defaults(func=run)
