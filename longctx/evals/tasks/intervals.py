"""The statistics a verdict rests on: intervals and how many more trials or windows would settle a question.

Pure functions, no I/O. Retrieval is a binomial count (Wilson score interval); perplexity is exp(mean NLL) over
windows (Student-t interval of per-window NLLs), and a perplexity ratio is exp of a difference of mean NLLs:
paired window by window where both cells scored the same text (same document and start), else the two cells'
intervals combined as independent. "How many more" assumes the observed rate (or mean and spread) stays as it is.
"""

from __future__ import annotations

import math

Z95 = 1.959964
# two-sided 95% Student t quantiles by degrees of freedom; 1.96 beyond 30
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
       12: 2.179, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042}
MAX_MORE = 100_000  # beyond this, "more trials" is no plan: say the rates do not separate


def t95(df: int) -> float:
    return next((T95[d] for d in sorted(T95) if d >= df), 1.96)


def wilson_interval(successes: float, n: int, z: float = Z95) -> list[float]:
    """Wilson score interval of a binomial proportion (95% by default): [low, high], [0, 1] when n == 0.

    Unlike p ± z·√(p(1−p)/n) it stays inside [0, 1] and is not empty at 0/n or n/n (5/5 -> [0.566, 1]).
    `successes` may be fractional: the interval n trials would give at an observed rate.
    """
    if n <= 0:
        return [0.0, 1.0]
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(max(p * (1 - p), 0.0) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def _smallest(ok, start: int = 0) -> int | None:
    """The smallest K >= start with ok(K) (ok monotone from some point on), or None below MAX_MORE."""
    if ok(start):
        return start
    high = max(1, start)
    while not ok(high):
        high *= 2
        if high > MAX_MORE:
            return None
    low = high // 2
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if ok(mid) else (mid, high)
    return high


def separated(below: tuple[int, int], above: tuple[int, int], margin: float) -> bool:
    """Whether the Wilson upper bound of `below` (k, n) lies under the lower bound of `above` by `margin`."""
    return wilson_interval(*below)[1] + margin < wilson_interval(*above)[0]


def trials_to_separate(below: tuple[int, int], above: tuple[int, int], margin: float) -> int | None:
    """More trials K, added to each of the two cells at their observed rates, after which `below` is separated
    from `above` (0 if it already is); None when the observed rates are not `margin` apart."""
    (k1, n1), (k2, n2) = below, above
    if n1 <= 0 or n2 <= 0 or k2 / n2 - k1 / n1 <= margin:
        return None
    p1, p2 = k1 / n1, k2 / n2
    return _smallest(lambda K: separated((p1 * (n1 + K), n1 + K), (p2 * (n2 + K), n2 + K), margin))


def trials_to_decide(k: int, n: int, threshold: float) -> int | None:
    """More trials K at the observed rate after which the Wilson interval lies on one side of `threshold`
    (lower bound >= it, or upper bound < it); 0 if it already does; None when the rate is the threshold."""
    if n <= 0:
        return None
    p = k / n
    if p == threshold:
        return None
    if p > threshold:
        return _smallest(lambda K: wilson_interval(p * (n + K), n + K)[0] >= threshold)
    return _smallest(lambda K: wilson_interval(p * (n + K), n + K)[1] < threshold)


def mean_ci95(values: list[float]) -> tuple[float, float | None]:
    """Mean and half-width of its 95% Student-t interval (None with fewer than two values)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, t95(n - 1) * sd / math.sqrt(n)


def window_nlls(record: dict) -> dict[tuple, float]:
    """(document, start) -> mean NLL per token of each window a perplexity cell recorded with its sums."""
    out = {}
    for window in record.get("windows") or []:
        if not isinstance(window, dict):
            continue
        total, count = window.get("nll_sum"), window.get("n_tokens")
        if isinstance(total, (int, float)) and isinstance(count, int) and count > 0:
            out[(window.get("doc"), window.get("start"))] = total / count
    return out


def _nll(record: dict) -> float | None:
    """A cell's mean NLL (log of its perplexity where older cells hold only that)."""
    nll, ppl = record.get("nll"), record.get("ppl")
    if isinstance(nll, (int, float)):
        return nll
    return math.log(ppl) if isinstance(ppl, (int, float)) and ppl > 0 else None


def _log_half(record: dict) -> float | None:
    ci = record.get("ppl_ci95")
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(v, (int, float)) and v > 0 for v in ci):
        return (math.log(ci[1]) - math.log(ci[0])) / 2
    return None


def ppl_ratio(a: dict, b: dict) -> dict | None:
    """ppl(a) / ppl(b) of two perplexity cells with its 95% interval.

    Paired when both cells hold per-window NLLs of the same windows (same document and start: the prefix
    evaluation of one model, or two models read on the same plan): the t interval of the per-window differences.
    Else the two cells' t intervals are combined as independent (wider). Returns {ratio, ci95 (or None),
    paired, n, sd (per-window sd of the log ratio, paired only)} or None when either cell has no number.
    """
    nll_a, nll_b = _nll(a), _nll(b)
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (nll_a, nll_b)):  # None, NaN, inf
        return None
    wa, wb = window_nlls(a), window_nlls(b)
    shared = sorted(set(wa) & set(wb), key=str)
    if len(shared) >= 2 and len(shared) == len(wa) == len(wb):
        diffs = [wa[w] - wb[w] for w in shared]
        mean, half = mean_ci95(diffs)
        sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1))
        return {"ratio": math.exp(mean), "ci95": [math.exp(mean - half), math.exp(mean + half)], "paired": True,
                "n": len(diffs), "sd": sd}
    diff = nll_a - nll_b
    ha, hb = _log_half(a), _log_half(b)
    n = min(int(a.get("n_windows") or 0), int(b.get("n_windows") or 0)) or None
    if ha is None or hb is None:
        return {"ratio": math.exp(diff), "ci95": None, "paired": False, "n": n, "sd": None}
    half = math.sqrt(ha * ha + hb * hb)
    return {"ratio": math.exp(diff), "ci95": [math.exp(diff - half), math.exp(diff + half)], "paired": False, "n": n,
            "sd": None}


def windows_to_decide(ratio: dict, threshold: float) -> int | None:
    """More windows K (same per-window spread of the paired log ratio) after which the ratio's interval lies on
    one side of `threshold`; None for an unpaired ratio (pairing, not more windows, is what it lacks first) or
    when the ratio is the threshold."""
    if not ratio.get("paired") or not ratio.get("sd") or not ratio.get("n"):
        return None
    n, sd = ratio["n"], ratio["sd"]
    gap = abs(math.log(ratio["ratio"]) - math.log(threshold))
    if gap == 0:
        return None
    return _smallest(lambda K: t95(n + K - 1) * sd / math.sqrt(n + K) < gap)
