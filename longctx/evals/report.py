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
import math
from datetime import datetime, timezone
from pathlib import Path

from longctx.evals.summary import (  # the data model and judging rules the page renders
    FIGURES,
    PPL_BROKEN,
    PPL_HOLDS,
    RETRIEVAL_FAILED,
    RETRIEVAL_OK,
    TASKS,
    ModelSummary,
    _as_float,
    build_summary,
    fmt_len,
    fmt_ppl,
    load_results,
    ppl_windows_text,
    rope_text,
    run_text,
    summary_json,
    variant_name,
)

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
               + "</ul>")
    made = _provenance(models)
    if made:
        out.append("<h2>How these numbers were made</h2><ul>" + "".join(
            f"<li>{e(line).replace('`', '')}</li>" for line in made) + "</ul>")
    out.append("</body></html>\n")
    return "\n".join(out)


def _legend(models: list[ModelSummary]) -> str:
    names = {"ppl": "perplexity", "passkey": "passkey", "niah": "NIAH"}
    shown = dict.fromkeys(f"{names[t]} {variant_name(t, m.series[t])}" for t in TASKS for m in models if t in m.series)
    return LEGEND + (f" Series in the table: {'; '.join(shown)}." if shown else "")


LEGEND = (f"Retrieval = mean of passkey accuracy and NIAH score (mean over depths; in brackets in report.md, the "
          f"Wilson 95% interval of all depths' trials pooled). Effective length (RULER): "
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
                interval = m.ci95.get(attr, {}).get(n) if text != "–" else None
                if interval:  # pooled over depths: Wilson 95%
                    text += f" [{interval[0]:.2f}, {interval[1]:.2f}]"
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
    made = _provenance(models)
    if made:
        out += ["## How these numbers were made", "", *(f"- {line}" for line in made), ""]
    return "\n".join(out) + "\n"


def _provenance(models: list[ModelSummary]) -> list[str]:
    """Per model: where the perplexity windows came from, and every run (command, commit, machine, wall time)."""
    lines = []
    for m in models:
        windows = ppl_windows_text(m)
        if windows:
            lines.append(f"**{m.label}** perplexity windows, each from one document: {windows}")
        lines += [f"**{m.label}** run: {run_text(run)}" for run in m.runs]
    return lines


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
