"""The words and numbers of a report: perplexities, ratios, trial counts, rope settings, run lines and where
each model came from."""

from __future__ import annotations

import json
import math
from pathlib import Path

from longctx.evals.report.load import ModelSummary, perplexity_task
from longctx.evals.tasks.base import as_float
from longctx.evals.tasks.intervals import wilson_interval
from longctx.lengths import fmt_len


def fmt_ppl(ppl: float | None) -> str:
    if ppl is None:
        return "–"
    if not math.isfinite(ppl):
        return "inf"
    return f"{ppl:.2f}" if ppl < 100 else f"{ppl:.0f}" if ppl < 1e5 else f"{ppl:.1e}"


def ratio_text(ratio: dict) -> str:
    if not math.isfinite(ratio["ratio"]):
        return "ppl inf"
    ci = ratio.get("ci95")
    interval = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else " (no interval)"
    how = "paired" if ratio.get("paired") else "unpaired"
    n = f", {ratio['n']} windows" if ratio.get("n") else ""
    return f"ppl ×{ratio['ratio']:.2f}{interval} of in-distribution ({how}{n})"


def counts_text(counts: tuple[float, int]) -> str:
    """'7/10 [0.40, 0.89]'; a fractional count (answers scored by the share of their strings) with one decimal."""
    low, high = wilson_interval(*counts)
    k = f"{counts[0]:g}" if float(counts[0]).is_integer() else f"{counts[0]:.1f}"
    return f"{k}/{counts[1]} [{low:.2f}, {high:.2f}]"


def ppl_windows_text(model: ModelSummary) -> str | None:
    """Which documents the perplexity windows came from, per length: '2K: 2 windows (a.txt, b.txt); …'."""
    task = perplexity_task()
    return task and task.windows_text(model.records(task.name))


def joined_text(models: list[ModelSummary]) -> str:
    """One sentence naming the cells taken from other results folders (`longctx report --ppl-from`), or ''."""
    by_source: dict[tuple, list[str]] = {}
    for m in models:
        for task, source in m.joined.items():
            by_source.setdefault((source, task), []).append(m.label)
    if not by_source:
        return ""
    parts = [f"{task} of {_names(labels)} from `{source}`" for (source, task), labels in by_source.items()]
    return ("Cells read from other results folders (the same models: label, rope and checkpoint fingerprint "
            "checked): " + "; ".join(parts) + ".")


def run_groups(models: list[ModelSummary]) -> list[str]:
    """'How these numbers were made', one line per distinct run: the perplexity windows once per distinct set of
    documents (with the models that read them), then each command once, with the models it evaluated (and their
    wall times), its commits, machines and dates."""
    lines, windows, commands = [], {}, {}
    for m in models:
        text = ppl_windows_text(m)
        if text:
            windows.setdefault(text, []).append(m.label)
        for run in m.runs:
            commands.setdefault(str(run.get("command")), []).append((m.label, run))
    for text, labels in windows.items():
        lines.append(f"Perplexity windows, each from one document ({_names(labels)}): {text}")
    for command, runs in sorted(commands.items(), key=lambda item: min(str(r.get("started", "")) for _, r in item[1])):
        models_text = ", ".join(f"{label} ({_minutes(run)})" for label, run in runs)
        commits = _distinct(str(r.get("commit") or "unknown")[:12] + (" (modified)" if r.get("dirty") else "")
                            for _, r in runs)
        machines = _distinct(_machine_text(r) for _, r in runs)
        days = sorted({str(r.get("started", ""))[:10] for _, r in runs if r.get("started")})
        when = days[0] if len(days) == 1 else f"{days[0]} – {days[-1]}" if days else "?"
        lines.append(f"`{command}` · {models_text} · commit {', '.join(commits)} · {'; '.join(machines)} · {when}")
    return lines


def _names(labels: list[str]) -> str:
    return "**" + "**, **".join(labels) + "**"


def _distinct(values) -> list[str]:
    return list(dict.fromkeys(values))


def _minutes(run: dict) -> str:
    seconds = as_float(run.get("wall_seconds"))
    return f"{seconds / 60:.1f} min" if seconds is not None else "?"


def _machine_text(run: dict) -> str:
    machine = run.get("machine") if isinstance(run.get("machine"), dict) else {}
    where = ", ".join(str(x) for x in (machine.get("gpu") or machine.get("cpu"),
                                       machine.get("cores") and f"{machine['cores']} cores",
                                       machine.get("torch") and f"torch {machine['torch']}") if x)
    world = run.get("world")
    if isinstance(world, int) and world > 1:  # launched as several processes (longctx.evals.run.parallel)
        where = f"{where or 'machine unknown'} × {world} processes"
    return where or "machine unknown"


def inline_markdown(text: str):
    """One line of the Markdown a report writes (`**bold**`, `` `code` ``) as HTML, everything else escaped."""
    import html
    import re

    from markupsafe import Markup

    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]*)`", r"<code>\1</code>", out)
    return Markup(re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", out))


def markdown_blocks(lines: list[str]):
    """The Markdown a task's report section writes (`##`/`###` headings, paragraphs, pipe tables) as HTML, so the
    HTML page shows what report.md shows (RULER's table layout, Kamradt's per-depth tables)."""
    from markupsafe import Markup

    out, table = [], []

    def cells(line: str) -> list[str]:
        return [cell.strip() for cell in line.strip().strip("|").split("|")]

    def flush() -> None:
        if table:
            head, body = table[0], [row for row in table[1:] if not set("".join(row)) <= set("-: ")]
            out.append("<table><tr>" + "".join(f"<th>{inline_markdown(c)}</th>" for c in head) + "</tr>"
                       + "".join(f"<tr class='task'><td class='txt'>{inline_markdown(row[0])}</td>"
                                 + "".join(f"<td>{inline_markdown(c)}</td>" for c in row[1:]) + "</tr>"
                                 for row in body) + "</table>")
            table.clear()

    for line in lines:
        if line.startswith("|"):
            table.append(cells(line))
            continue
        flush()
        level = len(line) - len(line.lstrip("#"))
        if 1 < level < 5 and line[level:level + 1] == " ":
            out.append(f"<h{level}>{inline_markdown(line[level + 1:])}</h{level}>")
        elif line.strip():
            out.append(f"<p class='legend'>{inline_markdown(line)}</p>")
    flush()
    return Markup("\n".join(out))


def portable(text: str, root: Path | None) -> str:
    """`text` with every path inside the checkout `root` written relative to it: a committed report names no
    folder of the machine that made it."""
    if root is None or len(root.parts) < 2:
        return text
    return text.replace(str(root) + "/", "")


def checkout_root(results_dir: Path) -> Path | None:
    """The repository checkout holding `results_dir` (the nearest folder above it with a .git), else None."""
    for folder in [Path(results_dir).resolve(), *Path(results_dir).resolve().parents]:
        if (folder / ".git").exists():
            return folder
    return None


def rope_text(rope: dict | None) -> str:
    if not isinstance(rope, dict) or not rope:
        return "–"
    text = str(rope.get("rope_type") or rope.get("type") or "default")
    theta = as_float(rope.get("rope_theta"))
    if theta is not None:
        text += " θ=" + f"{theta:.4g}".replace("e+0", "e").replace("e+", "e")  # 1e5, 5e5, 1.25e6
    factor = as_float(rope.get("factor"))
    if factor is not None:
        text += f" ×{factor:g}"
    return text


def origin_text(model: ModelSummary) -> str:
    """The weights' origin as the loader recorded it (model.json `origin`), else as its paths tell."""
    from longctx.sources import origin

    if model.meta.get("origin"):
        return str(model.meta["origin"])
    if not model.meta.get("source") and not model.meta.get("model_dir"):
        return "origin unknown"
    return origin(str(model.meta.get("source") or model.meta.get("model_dir")), model.meta.get("model_dir"))


def details_text(model: ModelSummary) -> str:
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
