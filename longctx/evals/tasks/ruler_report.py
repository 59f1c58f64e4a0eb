"""The report's RULER section in RULER's own layout: per model, tasks × lengths, the average, and the effective
length (the longest length up to which every evaluated length averages at least the threshold: 85.6, Llama-2-7B's
4K score, unless the run set another), each score with its Wilson 95% interval (over answers, `base.answer_counts`)."""

from __future__ import annotations

from longctx.evals.tasks import ruler_tasks as rt
from longctx.evals.tasks.base import answer_interval
from longctx.lengths import fmt_len


def effective(average: dict[int, float], lengths: list[int], threshold: float) -> int | None:
    """RULER's effective length: the longest length up to which every length averages ≥ threshold (a length
    without an average stops it)."""
    best = None
    for n in lengths:
        if n not in average or average[n] < threshold:
            break
        best = n
    return best


def common_tasks(records: list[dict]) -> list[str]:
    """The tasks run at every length of the table, in RULER's order."""
    lengths = {r["length"] for r in records}
    return [n for n in rt.SYNTHETIC if lengths and all(any(r.get("subtask") == n and r["length"] == length
                                                           for r in records) for length in lengths)]


def table(records: list[dict], threshold: float) -> tuple[list[str], dict[int, float], int | None]:
    """Markdown rows (task × length) of one model and variant, the average per length (over lengths where every
    task of the table ran) and the effective length. Where some length ran fewer tasks, a second average over
    the tasks run at every length compares the lengths like with like."""
    lengths = sorted({r["length"] for r in records})
    names = [n for n in rt.SYNTHETIC if any(r.get("subtask") == n for r in records)]
    cells = {(r.get("subtask"), r["length"]): r for r in records}

    def text(record: dict | None) -> str:
        if record is None:
            return "–"
        low, high = answer_interval(record) or (None, None)  # over answers, whatever an older cell stored
        interval = f" [{100 * low:.0f}, {100 * high:.0f}]" if low is not None else ""
        return f"{record['ruler_score']:.1f}{interval}"

    rows = ["| Task | " + " | ".join(map(fmt_len, lengths)) + " |", "|---" * (len(lengths) + 1) + "|"]
    for name in names:
        mark = " †" if rt.needs_essay(name) else ""
        rows.append(f"| {name}{mark} | " + " | ".join(text(cells.get((name, n))) for n in lengths) + " |")
    average = {}
    for n in lengths:
        scores = [cells[name, n]["ruler_score"] for name in names if (name, n) in cells]
        if len(scores) == len(names):
            average[n] = sum(scores) / len(scores)
    averages = [f"**{average[n]:.1f}**" if n in average else "– (not every task)" for n in lengths]
    rows.append("| **Avg.** | " + " | ".join(averages) + " |")
    common = common_tasks(records)
    if common and common != names:
        subset = {n: sum(cells[name, n]["ruler_score"] for name in common) / len(common) for n in lengths}
        rows.append(f"| Avg. of {' + '.join(common)} (run at every length) | "
                    + " | ".join(f"{subset[n]:.1f}" for n in lengths) + " |")
    return rows, average, effective(average, lengths, threshold)


def report_lines(models, task) -> list[str]:
    """The RULER section of `longctx report` (empty when no model has RULER cells)."""
    present = [(m, variant, records) for m in models for variant, records in (m.cells.get(task.name) or {}).items()]
    if not present:
        return []
    out = ["## RULER", "",
           "RULER's synthetic tasks, templates and `string_match_all` scoring (×100); each cell: mean over its "
           "samples, [Wilson 95% interval over answers, each scored by the share of its expected strings]. Length = "
           "prompt + RULER's generation budget, exact. †: essay haystack = public-domain books from `--haystack-dir`,"
           " not RULER's Paul Graham essays, so these rows are not the same haystack as published RULER numbers. "
           "Differences from RULER's protocol: "
           "`longctx/evals/tasks/ruler_tasks.py`.", ""]
    summary = []
    for m, variant, records in present:
        threshold = next((r["threshold"] for r in reversed(records) if isinstance(r.get("threshold"), (int, float))),
                         85.6)
        rows, average, longest = table(records, threshold)
        samples = sorted({r.get("samples") for r in records if r.get("samples")})
        out += [f"### {m.label}: {task.variant_name(variant)}", "",
                f"Samples per cell: {', '.join(map(str, samples))}; effective length (avg ≥ {threshold:g}): "
                f"{fmt_len(longest) if longest else 'none'}.", "", *rows, ""]
        summary.append((m.label, variant, average, longest, threshold))
    lengths = sorted({n for *_, average, _, _ in summary for n in average})
    if lengths:
        out += [
            "### RULER average by model",
            "",
            "| Model | " + " | ".join(map(fmt_len, lengths)) + " | Effective length |",
            "|---" * (len(lengths) + 2) + "|",
        ]
        for label, variant, average, longest, threshold in summary:
            values = [f"{average[n]:.1f}" if n in average else "–" for n in lengths]
            out.append(
                f"| {label} ({variant[0]}) | "
                + " | ".join(values)
                + f" | {fmt_len(longest) if longest else 'none'} (≥ {threshold:g}) |"
            )
        out.append("")
    return out
