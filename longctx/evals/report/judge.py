"""Judging each model: perplexity vs retrieval by length, effective length (RULER) and the verdict that flags
SUPERFICIAL long context, each decided only where its interval allows. Pure data, no rendering."""

from __future__ import annotations

import math
from collections import Counter

from longctx.evals.report.controls import by_unit, control_at, find_controls, graded_alike, pooled
from longctx.evals.report.load import ModelSummary, perplexity_task, retrieval_tasks
from longctx.evals.report.text import counts_text, fmt_ppl, ratio_text, rope_text
from longctx.evals.tasks import all_tasks
from longctx.evals.tasks.intervals import (
    ppl_ratio,
    separated,
    trials_to_decide,
    trials_to_separate,
    wilson_interval,
    windows_to_decide,
)
from longctx.lengths import fmt_len

RETRIEVAL_OK = 0.85      # RULER's threshold: a length counts as usable when retrieval's lower bound clears it
RETRIEVAL_FAILED = 0.5   # an in-window control whose upper bound is below this cannot judge an extension
PPL_HOLDS = 1.25         # ppl(L) / in-distribution ppl: its interval <= 1.25 means perplexity "holds" at L
PPL_BROKEN = 2.0         # its interval above 2: the model breaks at L
SEPARATION = 0.1         # SUPERFICIAL: retrieval's upper bound at L this far below the control's lower bound


def primary_variant(models: list[ModelSummary], task: str) -> tuple | None:
    """The variant evaluated at the most (model, length) pairs, so every model is compared on the same series."""
    coverage: Counter = Counter()
    for model in models:
        for variant, records in model.cells.get(task, {}).items():
            coverage[variant] += len({r["length"] for r in records})
    return min(coverage, key=lambda v: (-coverage[v], str(v))) if coverage else None


def _pick(model: ModelSummary, task: str, preferred: tuple | None) -> tuple | None:
    variants = model.cells.get(task, {})
    if preferred in variants:
        return preferred
    return min(variants, key=lambda v: (-len({r["length"] for r in variants[v]}), str(v))) if variants else None


def effective_length(retrieval: dict[int, float]) -> int | None:
    """RULER: the longest length L such that every evaluated length <= L scores >= 0.85; None if the first fails.
    The verdict passes Wilson lower bounds, so a length counts only when its interval clears 0.85."""
    best = None
    for length in sorted(retrieval):
        if retrieval[length] < RETRIEVAL_OK:
            break
        best = length
    return best


def _ppl_state(ratio: dict | None) -> str | None:
    """holds / high / breaks / unsure from the interval of ppl(L) / in-distribution ppl (None: not measured)."""
    if ratio is None:
        return None
    if not math.isfinite(ratio["ratio"]):
        return "breaks"
    if not ratio.get("ci95"):
        return "unsure"
    low, high = ratio["ci95"]
    if low > PPL_BROKEN:
        return "breaks"
    if high <= PPL_HOLDS:
        return "holds"
    return "high" if low > PPL_HOLDS else "unsure"


def _more(count: int | None, what: str, where: str = "") -> str:
    if not count:
        return f"more {what}s at these rates would not settle it"
    return f"run {count} more {what}{'s' * (count != 1)}{where}"


def judge_length(ratio: dict | None, counts: tuple[int, int] | None, control: dict | None,
                 retrieval: float | None = None) -> tuple[str, str]:
    """(status, reason) of one length beyond the trained one, each decided only where its interval allows.

    `ratio`: ppl(L) / in-distribution ppl with its interval (`intervals.ppl_ratio`); `counts`: retrieval at L,
    (correct, trials) pooled; `control`: {"length", "counts"} of retrieval inside the trained length. SUPERFICIAL
    needs the ratio's interval <= PPL_HOLDS and retrieval's Wilson upper bound below the control's lower bound
    by SEPARATION; "extends" needs the ratio's interval <= PPL_HOLDS and retrieval's lower bound >= RETRIEVAL_OK.
    Otherwise "inconclusive", with how many more trials or windows (at the observed rates) would decide it.
    """
    ppl = _ppl_state(ratio)
    ppl_text = ratio_text(ratio) if ratio else "ppl not measured"
    n_windows = ratio and ratio.get("n")
    if ratio and ratio.get("paired"):
        ppl_more = _more(windows_to_decide(ratio, PPL_HOLDS), "window")
    else:  # windows of other text at each length: the book-to-book spread swamps the ratio
        ppl_more = "score each length on the same windows (prefix evaluation pairs them) with more windows"
    unsure = f"{ppl_text} straddles ×{PPL_HOLDS}: inconclusive at n = {n_windows or '?'} windows: {ppl_more}"
    if ppl == "breaks":
        return "breaks", ppl_text
    if counts is None:
        if retrieval is not None:
            return "inconclusive", f"retrieval {retrieval:.2f} without trial counts (no interval); {ppl_text}"
        return {None: ("untested", ""), "holds": ("ppl only", ppl_text), "high": ("degrades", ppl_text)}.get(
            ppl, ("inconclusive", unsure))
    k, n = counts
    low, high = wilson_interval(k, n)
    seen = f"retrieval {counts_text(counts)}"
    and_ppl = f"; {unsure}" if ppl == "unsure" else f"; {ppl_text}"
    if low >= RETRIEVAL_OK:
        if ppl in ("holds", None):
            return "extends", seen + and_ppl
        return ("degrades" if ppl == "high" else "inconclusive"), seen + and_ppl
    if ppl == "high":
        return "degrades", seen + and_ppl
    if high >= RETRIEVAL_OK:
        return "inconclusive", (f"{seen} straddles {RETRIEVAL_OK}: inconclusive at n = {n}: "
                                f"{_more(trials_to_decide(k, n, RETRIEVAL_OK), 'trial')}{and_ppl}")
    if control is None:
        if ppl == "holds":
            return "inconclusive", (f"{ppl_text} but {seen}, and no retrieval was measured inside the trained "
                                    "length: no control, no SUPERFICIAL flag")
        return "degrades", seen + and_ppl
    versus = f"{seen} vs {counts_text(control['counts'])} at {fmt_len(control['length'])} in the window"
    if separated(counts, control["counts"], SEPARATION):
        if ppl == "holds":
            return "superficial", f"{ppl_text} but {versus}"
        return ("inconclusive" if ppl == "unsure" else "degrades"), versus + and_ppl
    more = trials_to_separate(counts, control["counts"], SEPARATION)
    if more is None:  # no drop at these rates, however many trials: nothing degraded, nothing shown to extend
        return "inconclusive", (f"{versus}: no drop from the window at these rates, but both below {RETRIEVAL_OK}, "
                                f"so this task cannot show the extension working for this model{and_ppl}")
    where = f" at {fmt_len(control['length'])} and at this length"
    return "inconclusive", f"{versus}: inconclusive at n = {n}: {_more(more, 'trial', where)}{and_ppl}"


def _ratios(model: ModelSummary) -> dict[int, dict]:
    """Length -> ppl(L) / ppl at the reference length with its interval."""
    task = perplexity_task()
    if task is None or model.ref_length is None:
        return {}
    cells = model.latest(task.name)
    ref = cells.get(model.ref_length)
    out = {}
    for length, record in cells.items():
        value = task.value(record)
        if not math.isfinite(value):
            out[length] = {"ratio": math.inf, "ci95": None, "paired": False, "n": None}
        elif ref is not None:
            ratio = ppl_ratio(record, ref)
            if ratio is not None:
                out[length] = ratio
    return out


def summarize(model: ModelSummary, primaries: dict[str, tuple | None]) -> None:
    """The per-length numbers of one model (its verdict needs every model: `judge`)."""
    model.series = {task: _pick(model, task, primaries.get(task)) for task in model.cells}
    model.off_series = {task for task, variant in model.series.items() if variant != primaries.get(task)}
    for task in all_tasks().values():
        model.values[task.name] = task.values(model.records(task.name))
        model.ci95[task.name] = task.ci95(model.records(task.name))
        if hasattr(task, "graded_by"):  # retrieval graded by content, with the token-exact grade beside it
            model.strict[task.name] = task.strict_values(model.records(task.name))
            model.graded_by[task.name] = task.graded_by(model.records(task.name))
    by_task = [model.values[task.name] for task in retrieval_tasks()]
    for length in sorted(set().union(*by_task)):
        scores = [values[length] for values in by_task if length in values]
        model.retrieval[length] = sum(scores) / len(scores)
    model.counts = pooled(model, lambda task, records: task.trial_counts(records))
    model.strict_counts = pooled(model, lambda task, records: task.strict_trial_counts(records)
                                  if hasattr(task, "strict_trial_counts") else {})
    model.unit_counts = by_unit(model, lambda task, records: task.trial_counts(records))
    model.strict_unit_counts = by_unit(model, lambda task, records: task.strict_trial_counts(records)
                                        if hasattr(task, "strict_trial_counts") else {})
    model.tasks_at = {n: sorted({task.unit(r) for task in retrieval_tasks() for r in model.records(task.name)
                                 if r["length"] == n}) for n in model.retrieval}
    for task_grades in model.graded_by.values():
        for length, grade in task_grades.items():
            model.grading[length] = grade if model.grading.get(length, grade) == grade else "mixed"
    model.effective_length = effective_length({n: wilson_interval(*c)[0] for n, c in model.counts.items()})
    trained, lengths = model.trained, model.lengths()
    ppl_lengths = [n for n in lengths if model.ppl_value(n) is not None]
    if ppl_lengths:
        in_distribution = [n for n in ppl_lengths if trained is not None and n <= trained]
        model.ref_length = max(in_distribution) if in_distribution else min(ppl_lengths)
        model.ppl_ref = model.ppl_value(model.ref_length)
    model.ratios = _ratios(model)


def judge(model: ModelSummary) -> None:
    """Statuses, flags and the verdict of one model whose numbers and control are known."""
    trained = model.trained
    if trained is None:
        model.warnings.append("model.json has no trained_length: no verdict on extension is possible")
    if model.control and model.control["from"]:
        source = model.control["from"]
        model.notes.append(f"{rope_text(model.meta.get('rope'))} is {source} up to {fmt_len(trained)}: its in-window "
                           f"reading is {source}'s")
    control = model.control
    retrieval_judges = True  # with a control, whether it can judge depends on each length's tasks (below)
    if control is None and model.retrieval:
        best = max(model.retrieval, key=model.retrieval.get)
        retrieval_judges = model.retrieval[best] >= RETRIEVAL_FAILED
        model.notes.append("no retrieval inside the trained length (no control): no SUPERFICIAL flag"
                           if retrieval_judges else
                           f"retrieval fails at every evaluated length (at best {model.retrieval[best]:.2f}, at "
                           f"{fmt_len(best)}) and was not measured within the trained length, so it cannot judge "
                           "the extension")
    for length in model.lengths():
        retrieval = model.retrieval.get(length)
        if trained is None or length <= trained:
            model.status[length] = "in-distribution"
            if trained is not None and retrieval is not None and retrieval < RETRIEVAL_OK:
                model.warnings.append(f"retrieval {retrieval:.2f} at {fmt_len(length)}, within the trained length: "
                                      "check the prompt format before trusting longer lengths")
            continue
        ratio = model.ratios.get(length)
        # the control weighs only the tasks it measured (passkey inside the window says nothing about NIAH beyond
        # it), and only those this length measured (8K's easy RULER tasks say nothing about 16K's hard ones)
        units = model.tasks_at.get(length)  # None: no retrieval here, nothing to weigh against a control
        versus_control = control_at(model, units) if units else None
        other = control is not None and bool(units) and versus_control is None
        judges = retrieval_judges and not _control_fails(model, versus_control)
        counts, versus, graded = (graded_alike(model, length, versus_control) if judges
                                  else (None, versus_control, ""))
        status, reason = judge_length(ratio, counts, versus, retrieval if judges else None)
        here = model.counts.get(length)
        if not judges and versus_control is not None and here is not None:  # say why this retrieval is set aside
            reason = (f"retrieval {counts_text(here)} here, but {counts_text(versus_control['counts'])} at "
                      f"{fmt_len(versus_control['length'])} inside the window is too low to judge it; {reason}")
        if other:
            graded = (f"no length inside the window measured every task of this one ({' + '.join(units)}; the "
                      f"control at {fmt_len(control['length'])}: {' + '.join(control['tasks'])}), so none is used: ")
        model.status[length], model.decisions[length] = status, graded + reason
        if counts is not None and versus is not None:
            model.weighed.add(length)
        if status == "superficial":
            model.flags.append({"kind": "superficial", "length": length, "ppl": model.ppl_value(length),
                                "ppl_ratio": ratio["ratio"], "ppl_ratio_ci95": ratio.get("ci95"),
                                "retrieval": retrieval, "retrieval_counts": list(counts),
                                "control": {**versus, "counts": list(versus["counts"])},
                                "message": f"SUPERFICIAL at {fmt_len(length)}: {reason}"})
    model.verdict = verdict(model)
    model.warnings.extend(_cell_warnings(model))


def _control_fails(model: ModelSummary, control: dict | None) -> bool:
    """Whether retrieval inside the window fails on these tasks (upper bound below RETRIEVAL_FAILED), so it cannot
    judge the extension on them; says so once in the verdict's notes."""
    if control is None or control.get("counts") is None:
        return False
    if wilson_interval(*control["counts"])[1] >= RETRIEVAL_FAILED:
        return False
    note = (f"retrieval fails within the trained length ({counts_text(control['counts'])} at "
            f"{fmt_len(control['length'])}, {' + '.join(control['tasks'])}), so it cannot judge the extension on "
            f"{'that task' if len(control['tasks']) == 1 else 'those tasks'}")
    if note not in model.notes:
        model.notes.append(note)
    return True


def verdict(model: ModelSummary) -> str:
    """One line: SUPERFICIAL first (it is the trap), then how far it extends and where it stops or what is
    undecided."""
    beyond = [n for n, s in model.status.items() if s not in ("in-distribution", "untested")]
    if model.trained is None:
        return "unknown trained length"
    if not beyond:
        return f"not evaluated beyond its trained length ({fmt_len(model.trained)})"
    parts = list(model.notes)
    if model.flags:
        also = [fmt_len(f["length"]) for f in model.flags[1:]]
        parts.append(model.flags[0]["message"] + (f" (also at {', '.join(also)})" if also else ""))
    extends_to = None
    for length in beyond:
        if model.status[length] != "extends":
            break
        extends_to = length
    if extends_to is not None:
        parts.append(f"extends to {fmt_len(extends_to)}")
    stop = next((n for n in beyond if model.status[n] != "extends"), None)
    broken = next((n for n in beyond if model.status[n] == "breaks"), None)
    if stop is not None and model.status[stop] == "degrades":
        parts.append(f"degrades at {fmt_len(stop)} ({model.decisions[stop]})")
    elif stop is not None and model.status[stop] == "inconclusive":
        parts.append(f"inconclusive at {fmt_len(stop)}: {model.decisions[stop]}")
    elif stop is not None and model.status[stop] == "ppl only":
        held = [stop]  # the ppl-only lengths in a row from the first: "ppl holds at 12K and 16K"
        for n in beyond[beyond.index(stop) + 1:]:
            if model.status[n] != "ppl only":
                break
            held.append(n)
        where = " and ".join(map(fmt_len, held)) if len(held) < 3 else f"{fmt_len(held[0])}–{fmt_len(held[-1])}"
        parts.append(f"ppl holds at {where}" + ("" if model.notes else " but retrieval was not run there"))
        # a longer length whose retrieval was weighed decides more than the ppl-only one before it: say it too
        later = next((n for n in beyond if n > stop and n in model.weighed
                      and model.status[n] in ("degrades", "inconclusive")), None)
        if later is not None:
            parts.append(f"degrades at {fmt_len(later)} ({model.decisions[later]})"
                         if model.status[later] == "degrades" else
                         f"inconclusive at {fmt_len(later)}: {model.decisions[later]}")
    if broken is not None:
        ppl = model.ppl_value(broken)
        parts.append(f"breaks at {fmt_len(broken)} (ppl {fmt_ppl(ppl)} vs {fmt_ppl(model.ppl_ref)})")
    return "; ".join(parts)


def no_flag_line(models: list[ModelSummary]) -> str:
    """The page's headline when no model is flagged: that the check found nothing, or why it could not run (it
    needs perplexity and retrieval at a length beyond the trained one, and retrieval inside it)."""
    def checked(model: ModelSummary) -> bool:
        return model.control is not None and any(
            model.trained is not None and n > model.trained and n in model.ratios and n in model.counts
            for n in model.lengths())

    if any(checked(m) for m in models):
        return ("No superficial long context: no model keeps low perplexity beyond its trained length while failing "
                "retrieval.")
    return ("SUPERFICIAL check not run: it compares perplexity and retrieval at a length beyond a model's trained "
            "length with retrieval inside it, and no model here has all three (evaluate perplexity at the retrieval "
            "lengths to run it).")


def _cell_warnings(model: ModelSummary) -> list[str]:
    """model.json warnings plus cell warnings, identical ones collapsed into one line with a count; a model.json
    warning that a cell repeats (a length past the claimed context) is said once, by the cells."""
    counts: Counter = Counter()
    in_cells: set[str] = set()
    for task, variants in model.cells.items():
        for records in variants.values():
            for record in records:
                for warning in record.get("warnings") or []:
                    counts[f"{task}: {warning}"] += 1
                    in_cells.add(str(warning))
    messages = [str(w) for w in model.meta.get("warnings") or [] if str(w) not in in_cells]
    messages += [m if n == 1 else f"{m} ({n} cells)" for m, n in counts.items()]
    return messages


def build_summary(models: list[ModelSummary]) -> list[ModelSummary]:
    primaries = {task: primary_variant(models, task) for task in all_tasks()}
    for model in models:
        summarize(model, primaries)
    find_controls(models)
    for model in models:
        judge(model)
    return models
