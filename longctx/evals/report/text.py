"""The words and numbers of a report: perplexities, ratios, trial counts, rope settings and run lines."""

from __future__ import annotations

import math

from longctx.evals.report.load import ModelSummary, perplexity_task
from longctx.evals.tasks.base import as_float
from longctx.evals.tasks.intervals import wilson_interval


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


def counts_text(counts: tuple[int, int]) -> str:
    low, high = wilson_interval(*counts)
    return f"{counts[0]}/{counts[1]} [{low:.2f}, {high:.2f}]"


def ppl_windows_text(model: ModelSummary) -> str | None:
    """Which documents the perplexity windows came from, per length: '2K: 2 windows (a.txt, b.txt); …'."""
    task = perplexity_task()
    return task and task.windows_text(model.records(task.name))


def run_text(run: dict) -> str:
    """One evaluation run in a line: command, commit, machine, wall time."""
    commit = str(run.get("commit") or "unknown")[:12] + (" (modified)" if run.get("dirty") else "")
    machine = run.get("machine") if isinstance(run.get("machine"), dict) else {}
    where = ", ".join(str(x) for x in (machine.get("gpu") or machine.get("cpu"),
                                       machine.get("cores") and f"{machine['cores']} cores",
                                       machine.get("torch") and f"torch {machine['torch']}") if x)
    world = run.get("world")
    if isinstance(world, int) and world > 1:  # launched as several processes (longctx.evals.run.parallel)
        where = f"{where or 'machine unknown'} × {world} processes"
    seconds = as_float(run.get("wall_seconds"))
    wall = f"{seconds / 60:.1f} min" if seconds is not None else "?"
    return (
        f"`{run.get('command')}` · commit {commit} · {where or 'machine unknown'} · {wall} · {run.get('started', '')}"
    )


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
