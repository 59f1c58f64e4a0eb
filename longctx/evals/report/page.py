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
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

from longctx.errors import UsageError
from longctx.evals.report import plots
from longctx.evals.report.compare import baseline_json, baseline_section, versus_baseline
from longctx.evals.report.judge import build_summary
from longctx.evals.report.load import join_perplexity, load_results
from longctx.evals.report.page_html import render_html
from longctx.evals.report.page_markdown import render_markdown
from longctx.evals.report.summary_json import summary_json
from longctx.evals.report.text import checkout_root, joined_text, portable
from longctx.evals.tasks import all_tasks
from longctx.files import partial_dir, replace_into_place
from longctx.locks import output_lock


def write_report(results_dir: Path | str, out_dir: Path | str | None = None, title: str | None = None,
                 baselines: list[str] | None = None, joined: list[str] | None = None) -> list[Path]:
    """Render RESULTS_DIR into report.html, report.md, summary.json and the PNGs; returns the files written.
    `baselines`: labels every model's perplexity is compared with (`compare`); `joined`: other results folders
    whose cells of the same models fill the tasks RESULTS_DIR lacks (`load.join_perplexity`), written relative to
    RESULTS_DIR. For both, None keeps those of the last report written to OUT (so a suite's re-render keeps
    them), ["none"] drops them."""
    results_dir = Path(results_dir)
    out_dir = Path(out_dir) if out_dir is not None else results_dir
    title = title or f"longctx report: {results_dir.resolve().name}"
    with output_lock(out_dir):
        last = _last_summary(out_dir)
        joined = (last.get("joined_from") or []) if joined is None else [
            os.path.relpath(Path(d).resolve(), results_dir.resolve()) for d in joined if d != "none"]
        models = load_results(results_dir)
        for name in joined:
            if not (results_dir / name).is_dir():
                raise UsageError(f"--ppl-from {name}: no such results folder (relative to {results_dir})")
            join_perplexity(models, results_dir / name, name)
        models = build_summary(models)
        baselines = _last_baselines(last) if baselines is None else [b for b in baselines if b != "none"]
        for baseline in baselines:  # an unknown label: one line before anything is drawn
            versus_baseline(models, baseline)
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = partial_dir(out_dir / "report")  # every file is drawn here, then moved into place one by one
        try:
            return _write_report(models, results_dir, out_dir, tmp, title, baselines, joined)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _last_summary(out_dir: Path) -> dict:
    try:
        last = json.loads((out_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return {}
    return last if isinstance(last, dict) else {}


def _last_baselines(last: dict) -> list[str]:
    kept = last.get("versus_baselines") or []
    return [b["baseline"] for b in kept if isinstance(b, dict) and isinstance(b.get("baseline"), str)] \
        if isinstance(kept, list) else []


def _write_report(models, results_dir: Path, out_dir: Path, tmp: Path, title: str, baselines: list[str],
                  joined: list[str]) -> list[Path]:
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
               "figures": figures, "baselines": [s for b in baselines if (s := baseline_section(models, b))],
               "joined": joined_text(models)}
    summary = {**summary_json(models, title, figures),
               "versus_baselines": [baseline_json(models, baseline) for baseline in baselines],
               "joined_from": joined}
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
    paths = write_report(args.results_dir, args.out, args.title, args.baselines, args.joined)
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
        dest="baselines",
        action="append",
        default=None,
        metavar="LABEL",
        help="compare every model's perplexity with this model's, window by window (paired intervals); repeat for "
        "several; default: the baselines of the last report in the output folder; 'none' drops them",
    )
    parser.add_argument(
        "--ppl-from",
        dest="joined",
        action="append",
        default=None,
        metavar="DIR",
        help="another results folder: its perplexity of the same checkpoints (same label, rope and fingerprint) "
        "serves the models of RESULTS_DIR that have none (a retrieval-only study), so the SUPERFICIAL check can "
        "run; repeatable; default: those of the last report in the output folder; 'none' drops them",
    )
    parser.set_defaults(func=run)
