"""The report's Kamradt section: per model and variant, a depth × length table of the score with its Wilson 95%
interval, and the panels his heatmap draws (`longctx.evals.report.plots.kamradt_heatmap`: his layout from
viz/CreateVizFromLLMTesting.ipynb in gkamradt/LLMTest_NeedleInAHaystack, length on x as "Token Limit", depth on y
as "Depth Percent" from 0% at the top, his red → yellow → green colours over 0..1)."""

from __future__ import annotations

from longctx.evals.tasks.base import answer_interval
from longctx.lengths import fmt_len


def panels(models, task) -> list[dict]:
    """Per model and variant with Kamradt cells: its label, variant, panel title, lengths, depths, and
    {(depth, length): score} and {(depth, length): Wilson interval}."""
    out = []
    for model in models:
        variants = model.cells.get(task.name) or {}
        for variant, records in sorted(variants.items(), key=lambda item: str(item[0])):
            cells = {(r["depth"], r["length"]): r for r in records if isinstance(r.get("depth"), (int, float))}
            if not cells:
                continue
            out.append({"label": model.label, "variant": variant,
                        "title": model.label + (f"\n{task.variant_name(variant)}" if len(variants) > 1 else ""),
                        "lengths": sorted({n for _, n in cells}), "depths": sorted({d for d, _ in cells}),
                        "scores": {k: r.get(task.value_key) for k, r in cells.items()},
                        "ci95": {k: answer_interval(r, task.value_key) for k, r in cells.items()}})
    return out


def report_lines(models, task) -> list[str]:
    """The Kamradt section of `longctx report`: how it differs from his run, then depth × length per model."""
    shown = panels(models, task)
    if not shown:
        return []
    out = ["## Kamradt needle in a haystack", "",
           "Greg Kamradt's needle (\"The best thing to do in San Francisco is eat a sandwich and sit in Dolores "
           "Park on a sunny day.\"), question and prompts, greedy decoding; each cell: the share of the key "
           "phrases \"sandwich\" and \"Dolores Park\" in the answer (or a `--judge`'s score), mean over its "
           "samples, [Wilson 95% interval over answers, each scored by its share of key phrases]. Length = "
           "prompt + answer budget, exact. Haystack: public-domain books from `--haystack-dir`, not his Paul "
           "Graham essays; no LLM judge unless one is named (his: GPT-3.5 scoring 1-10). Differences from his "
           "code: `longctx/evals/tasks/kamradt.py`.", ""]
    for panel in shown:
        lengths = panel["lengths"]
        out += [f"### {panel['label']}: {task.variant_name(panel['variant'])}", "",
                "| Depth | " + " | ".join(map(fmt_len, lengths)) + " |", "|---" * (len(lengths) + 1) + "|"]
        for depth in panel["depths"]:
            texts = []
            for n in lengths:
                value, ci = panel["scores"].get((depth, n)), panel["ci95"].get((depth, n))
                texts.append("–" if value is None else f"{value:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""))
            out.append(f"| {100 * depth:g}% | " + " | ".join(texts) + " |")
        out.append("")
    return out
