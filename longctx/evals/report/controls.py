"""Retrieval counts by length and by unit (a task, or one RULER subtask), and each model's in-window control: the
retrieval a verdict weighs a longer length against, on the units both measured and graded alike. Pure data."""

from __future__ import annotations

from longctx.evals.report.load import ModelSummary, retrieval_tasks
from longctx.fingerprint import same_weights
from longctx.rope_config import same_rope_up_to


def pooled(model: ModelSummary, counts_of) -> dict[int, tuple[int, int]]:
    """Length -> (correct, trials) of every retrieval task pooled; a length where a task with a number there has
    no counts gets none (no interval for the mean)."""
    pooled: dict[int, list] = {}
    for task in retrieval_tasks():
        values, counts = model.values[task.name], counts_of(task, model.records(task.name))
        for length in values:
            total = pooled.setdefault(length, [0, 0, True])
            if length in counts:
                total[0], total[1] = total[0] + counts[length][0], total[1] + counts[length][1]
            else:
                total[2] = False
    return {n: (k, t) for n, (k, t, whole) in sorted(pooled.items()) if whole and t > 0}


def by_unit(model: ModelSummary, counts_of) -> dict[int, dict[str, tuple[int, int]]]:
    """Length -> unit (`Task.unit`: a task, or one RULER subtask) -> its (correct, trials)."""
    out: dict[int, dict[str, tuple[int, int]]] = {}
    for task in retrieval_tasks():
        groups: dict[str, list[dict]] = {}
        for record in model.records(task.name):
            groups.setdefault(task.unit(record), []).append(record)
        for unit, records in groups.items():
            for length, counts in counts_of(task, records).items():
                out.setdefault(length, {})[unit] = counts
    return out


def control_for(control: dict | None, units: list[str]) -> dict | None:
    """The control restricted to `units` (those measured at the length it judges), its counts summed over them; None
    when it lacks one of them (retrieval inside the window says nothing about a task it did not measure). Extra
    units of the control are left out, so a length that ran only the hard tasks is not weighed against easy ones."""
    if control is None or not units or not set(units) <= set(control.get("units") or {}):
        return None
    if set(units) == set(control["units"]):
        return control

    def summed(by_unit: dict | None):
        if not by_unit or any(unit not in by_unit for unit in units):
            return None
        return (sum(by_unit[u][0] for u in units), sum(by_unit[u][1] for u in units))

    return {**control, "counts": summed(control["units"]), "strict": summed(control.get("strict_units")),
            "tasks": list(units)}


def graded_alike(model: ModelSummary, length: int, control: dict | None) -> tuple[tuple | None, dict | None, str]:
    """(counts at `length`, control, note): both graded by content, or both token-exact where either side holds
    only that grade (older forced cells): a content-graded control against token-exact cells would read the
    stricter grade beyond the window as a drop."""
    counts = model.counts.get(length)
    if counts is None or control is None or model.grading.get(length) == control.get("grading"):
        return counts, control, ""
    strict_here, strict_there = model.strict_counts.get(length), control.get("strict")
    if strict_here is None or strict_there is None:
        return counts, control, ""
    return strict_here, {**control, "counts": strict_there}, "graded token-exact on both sides (one has only that): "


def find_controls(models: list[ModelSummary]) -> None:
    """Each model's in-window retrieval, at every length inside its trained length (longest first; `control` is
    the longest): its own, else that of a model whose rope rotates every position alike up to the trained length
    (dynamic NTK and its original)."""
    for model in models:
        inside = sorted((n for n in model.counts if model.trained is not None and n <= model.trained), reverse=True)
        model.controls = [{"length": n, "counts": model.counts[n], "from": None, "strict": model.strict_counts.get(n),
                           "grading": model.grading.get(n), "tasks": model.tasks_at.get(n, []),
                           "units": model.unit_counts.get(n, {}), "strict_units": model.strict_unit_counts.get(n, {})}
                          for n in inside]
    for model in models:
        rope = model.meta.get("rope")
        if model.trained is None or not isinstance(rope, dict):
            continue
        for other in models:
            if other is not model and same_model_in_window(model, other):
                model.same_as = model.same_as or other.label
                if not model.controls and other.controls and other.controls[0]["from"] is None:
                    model.controls = [{**c, "from": other.label} for c in other.controls]
    for model in models:
        model.control = model.controls[0] if model.controls else None


def control_at(model: ModelSummary, units: list[str]) -> dict | None:
    """The control a length that measured `units` is weighed against: the longest in-window length that measured
    them all, restricted to them (`control_for`)."""
    return next((found for c in model.controls if (found := control_for(c, units)) is not None), None)


def same_model_in_window(a: ModelSummary, b: ModelSummary) -> bool:
    """Whether `a` is `b` within its trained length: another rope config (a patch changes only config.json)
    that rotates every position alike up to the trained length. Identical rope configs are not taken as the same
    model (a fine-tune of it keeps the config), nor models whose fingerprints name other weights (their config
    differs by the patch itself, so only the weight files are compared)."""
    rope_a, rope_b = a.meta.get("rope"), b.meta.get("rope")
    if a.trained != b.trained or not isinstance(rope_b, dict) or rope_a == rope_b:
        return False
    if same_weights(a.meta.get("fingerprint"), b.meta.get("fingerprint")) is False:
        return False
    return same_rope_up_to(rope_a, rope_b, a.trained)
