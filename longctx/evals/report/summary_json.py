"""summary.json: the report's tables, statuses and flags for machines (the page's numbers, nothing more).

Per length, `retrieval` is the mean of the retrieval tasks' values (each task weighs alike, as the page's legend
says), while `retrieval_counts` pools their answers, `retrieval_pooled` is that rate and `retrieval_ci95` its Wilson
interval: the rate the verdicts weigh. With tasks of unequal answer counts the mean can lie outside that interval,
so an interval is only ever read beside `retrieval_pooled`."""

from __future__ import annotations

from longctx.evals.report.judge import PPL_BROKEN, PPL_HOLDS, RETRIEVAL_FAILED, RETRIEVAL_OK, SEPARATION
from longctx.evals.report.load import ModelSummary
from longctx.evals.report.text import ppl_windows_text
from longctx.evals.tasks import all_tasks
from longctx.evals.tasks.intervals import wilson_interval
from longctx.files import sanitize


def summary_json(models: list[ModelSummary], title: str, figures: list[str]) -> dict:
    from longctx import __version__

    rows = []
    for m in models:
        by_length = []
        for n in m.lengths():
            row = {"length": n}
            for task in all_tasks():
                row[task] = m.values.get(task, {}).get(n)
                row[f"{task}_ci95"] = m.ci95.get(task, {}).get(n)
                if task in m.graded_by:
                    row[f"{task}_strict"] = m.strict[task].get(n)
                    row[f"{task}_graded_by"] = m.graded_by[task].get(n)
            ratio = m.ratios.get(n)
            counts = m.counts.get(n)  # answers of every retrieval task pooled: `retrieval_ci95` is their interval
            by_length.append({**row, "retrieval": m.retrieval.get(n),
                              "retrieval_pooled": counts[0] / counts[1] if counts else None,
                              "retrieval_counts": list(counts) if counts else None,
                              "retrieval_ci95": wilson_interval(*counts) if counts else None,
                              "ppl_ratio": ratio and ratio["ratio"], "ppl_ratio_ci95": ratio and ratio.get("ci95"),
                              "ppl_ratio_paired": ratio and ratio.get("paired"),
                              "status": m.status.get(n), "decision": m.decisions.get(n)})
        rows.append({"label": m.label, "source": m.meta.get("source"), "trained_length": m.trained,
                     "claimed_length": m.claimed, "rope": m.meta.get("rope"),
                     "series": {task: all_tasks()[task].variant_name(variant) for task, variant in m.series.items()},
                     "off_series": sorted(m.off_series),
                     "ppl_ref": m.ppl_ref, "ppl_ref_length": m.ref_length, "by_length": by_length,
                     "control": m.control and {**m.control, "counts": list(m.control["counts"])},
                     "same_rope_as": m.same_as, "effective_length": m.effective_length,
                     "verdict": m.verdict, "superficial": bool(m.flags), "flags": m.flags, "warnings": m.warnings,
                     "ppl_windows": ppl_windows_text(m), "runs": m.runs})
    # an infinite perplexity is a result: "inf" (JSON parsers outside Python reject Infinity and NaN)
    return sanitize({"title": title, "longctx_version": __version__, "thresholds": {
        "retrieval_ok": RETRIEVAL_OK, "retrieval_failed": RETRIEVAL_FAILED, "ppl_holds": PPL_HOLDS,
        "ppl_broken": PPL_BROKEN, "separation": SEPARATION}, "models": rows, "figures": figures}, inf_as_text=True)
