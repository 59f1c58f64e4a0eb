"""What theory says about a rotary base: numpy and math only, so `longctx analyze` never imports torch.

θᵢ = b^(−2i/d), i = 0 … d/2−1. Two papers:

*Scaling Laws of RoPE-based Extrapolation* (Liu et al., arXiv 2310.05209): `critical_dim`, `extrapolation_bound`,
`base_for_extrapolation`, `critical_base`, `small_base_thresholds`; plus `ntk_base`.

*Base of RoPE Bounds Context Length* (Men et al., arXiv 2405.14591): B(m) = Σᵢ cos(m·θᵢ); a base *passes* at
context L when B(m) ≥ 0 for every integer m = 1 … L. The passing bases are not an interval but islands, some
narrower than 0.1% (d = 128, L = 4096: 26,953–26,973 passes, then nothing until 28,629), so the answer depends
on how finely bases are searched. What is exact:

- `decay_min(base, dim, L)`: the minimum of B(m) over every integer m ≤ L in float64, each m evaluated (none
  skipped or interpolated). B(m₀+k) = Σᵢ cos(m₀θᵢ)cos(kθᵢ) − sin(m₀θᵢ)sin(kθᵢ) is one matrix product per block;
  it agrees with summing cos(m·θᵢ) directly to about (d/2)·L·1.1e-16 (the rounding of the angle m·θᵢ that
  both make; 1e-10 at L = 2^20, measured), far below any margin that decides a base.
- `smallest_passing_base`: the smallest base on the grid 10^(k/K) (K steps per decade, bases ≥ 2) that passes.
  The base returned is checked by `decay_min`. Every grid base below it has an m ≤ L with B(m) < 0 (confirmed
  by a direct sum), or lies in an interval that such an m proves failing: |∂B(m)/∂ln b| ≤ m·Σᵢ(2i/d)θᵢ, a bound
  that only shrinks as b grows. Islands narrower than a grid step can be missed: exact for the grid, not for
  every real base (for d = 128 and L ≤ 64K a 10× finer grid finds nothing more than 0.03% lower).
- `all_pass_threshold`: the smallest base of a 1% grid from which every grid base up to twice it passes, each
  checked by `decay_min`. Nothing finite proves what lies above; `certified_base` is a base above which every
  base provably passes, but it is loose (150–14,000× the smallest passing base for d = 128, L = 1K–1M).

Where the minimum sits: for bases near the bound B(m) turns negative only late, so the search looks for a
failing m from m = L downwards, and first tries the failing positions of the bases just below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

TWO_PI = 2 * math.pi
GRID_FLOOR = 2.0  # the search starts here
BLOCK = 1 << 20  # positions per exact block (8 MB of float64)
COLUMNS = 128  # positions per row in `_span`: m = start + j·COLUMNS + k
TILE = 1 << 19  # rows·2n·columns of one matrix-product tile: small enough that BLAS stays on one thread
TOP_SPAN = 4096  # positions of the first span searched for a failing m, ending at m = L (then twice as many)
BATCH = 32  # grid bases whose known failing positions are checked at once
HUNT_AHEAD = 16  # grid bases hunted together (one matrix product per base and span, fewer Python steps)


def inv_freq(base: float, dim: int) -> np.ndarray:
    """θᵢ = base^(−2i/d): [d/2] float64, the same numbers as `rope.default_inv_freq`."""
    return 1.0 / (float(base) ** (np.arange(0, dim, 2, dtype=np.float64) / dim))


def ntk_base(base: float, factor: float, dim: int) -> float:
    """NTK-aware base: b·s^(d/(d−2)), which makes the lowest frequency's period s times longer (as linear
    interpolation does) while leaving the highest frequency nearly untouched."""
    return float(base) * float(factor) ** (dim / (dim - 2))


# ------------------------------------------------------------------- Scaling Laws of RoPE-based Extrapolation
def critical_dim(dim: int, base: float, train_length: int) -> int:
    """d_extra = 2·⌈(d/2)·log_base(T_train/2π)⌉, at most d: the dimensions whose period fits in the training context
    (they saw every phase); beyond them positions are out of distribution. Llama-2 (d=128, 4K, 1e4): 92."""
    return min(dim, 2 * math.ceil((dim / 2) * math.log(train_length / TWO_PI) / math.log(base)))


def extrapolation_bound(dim: int, base: float, train_length: int, pretrain_base: float | None = None) -> float:
    """T_extra = 2π·β^(d_extra/d), d_extra fixed by pre-training (`pretrain_base`, default = base).

    With β the base used when tuning at `train_length`, this is the paper's predicted context after fine-tuning
    (Llama-2 4K, β=1e6: ≈1.29e5); with β = pretrain_base it is ≈ the training length itself. math.inf when
    d_extra = d: every dimension completes a period in training (base ≲ T_train/2π = β₃, the small-base regime),
    no position is out of distribution and the theory sets no limit (2πβ would be a dimension that does not exist).
    """
    d_extra = critical_dim(dim, pretrain_base or base, train_length)
    return math.inf if d_extra >= dim else TWO_PI * float(base) ** (d_extra / dim)


def base_for_extrapolation(dim: int, target_length: int, train_length: int, pretrain_base: float) -> float:
    """Smallest tuned base β with extrapolation_bound ≥ target_length: (L/2π)^(d/d_extra); the pre-training base
    itself when its bound is already infinite (d_extra = d)."""
    d_extra = critical_dim(dim, pretrain_base, train_length)
    return float(pretrain_base) if d_extra >= dim else (target_length / TWO_PI) ** (dim / d_extra)


def critical_base(train_length: int, tune_length: int, pretrain_base: float = 10000.0) -> float:
    """β₀ = b^(log_{T_train/2π}(T_tune/2π)): tuning at T_tune with a base above β₀ extends beyond T_tune; at or
    below it the ceiling is T_tune itself (2310.05209, b the pre-training base). β₀ = b when T_tune = T_train."""
    return float(pretrain_base) ** (math.log(tune_length / TWO_PI) / math.log(train_length / TWO_PI))


def small_base_thresholds(tune_length: int) -> dict[str, float]:
    """β₁ = 2T/π, β₂ = T/π, β₃ = T/(2π): the small-base regimes of 2310.05209 (T = tuning length)."""
    return {"beta1": 2 * tune_length / math.pi, "beta2": tune_length / math.pi, "beta3": tune_length / TWO_PI}


# ------------------------------------------------------------------- Base of RoPE Bounds Context Length
def decay(base: float, dim: int, positions) -> np.ndarray:
    """B(m) summed directly, Σᵢ cos(m·θᵢ), for each m in `positions` [M] → [M]: the reference (M·d/2 cosines)."""
    m = np.asarray(positions, dtype=np.float64).reshape(-1)
    theta = inv_freq(base, dim)
    return np.concatenate([np.cos(m[lo:lo + 65536, None] * theta[None, :]).sum(-1)
                           for lo in range(0, len(m), 65536)] or [np.empty(0)])


def _rotations(theta: np.ndarray, start: int, step: int, count: int) -> np.ndarray:
    """e^(i·(start + j·step)·θᵢ) for j < count and bases [G, n]: [G, count, n] complex. From e^(i·start·θ), rows
    double up by products with e^(i·2^l·step·θ), whose angles are exact (step a power of two: scaling θ by a power
    of two does not round): one rounding per doubling, 14 at most for 16,384 rows, on top of the first row's."""
    out = np.empty((len(theta), count, theta.shape[1]), dtype=np.complex128)
    out[:, 0] = np.exp(1j * (start * theta))
    done, angle = 1, step * theta
    while done < count:
        take = min(done, count - done)
        np.multiply(out[:, :take], np.exp(1j * angle)[:, None, :], out=out[:, done:done + take])
        done, angle = done + take, 2 * angle
    return out


def _offsets(theta: np.ndarray, width: int = COLUMNS) -> np.ndarray:
    """[cos; sin](k·θᵢ) for k = 0 … width−1 and bases [G, n]: [G, 2n, width], the column tables of `_span`."""
    turns = _rotations(theta, 0, 1, width).transpose(0, 2, 1)
    return np.ascontiguousarray(np.concatenate([turns.real, turns.imag], axis=1))  # C order: BLAS's fast path


def _span(theta: np.ndarray, start: int, count: int, offsets: np.ndarray | None = None) -> np.ndarray:
    """B(m) for m = start … start+count−1 and bases [G, n] (or one base [n]): [G, count] (or [count]), as exact as
    summing cos(m·θᵢ) directly.

    m = start + j·C + k (C = COLUMNS): B = Σᵢ cos((start+jC)θᵢ)·cos(kθᵢ) − sin((start+jC)θᵢ)·sin(kθᵢ), one product
    [J, 2n] @ [2n, C] per base (tables from `_rotations`), in tiles small enough that BLAS stays on one thread (a
    threaded product stalls for milliseconds when the cores are busy)."""
    if theta.ndim == 1:
        return _span(theta[None], start, count, None if offsets is None else offsets[None])[0]
    width = offsets.shape[2] if offsets is not None else min(COLUMNS, 1 << max(count - 1, 0).bit_length())
    right = offsets if offsets is not None else _offsets(theta, width)  # [G, 2n, C]
    rows = -(-count // width)
    turns = _rotations(theta, start, width, rows)
    left = np.concatenate([turns.real, -turns.imag], axis=2)  # [G, J, 2n]
    out = np.empty((len(theta), rows, width))
    tile = max(1, TILE // (2 * theta.shape[1] * width))
    for r in range(0, rows, tile):
        np.matmul(left[:, r:r + tile], right, out=out[:, r:r + tile])
    return out.reshape(len(theta), -1)[:, :count]


def decay_min(base: float, dim: int, length: int) -> tuple[float, int]:
    """(min B(m), the m where it is reached) over every integer m = 1 … length, exact in float64 (module doc)."""
    theta = inv_freq(base, dim)
    offsets = _offsets(theta[None])[0]
    best, where = math.inf, 1
    for start in range(1, int(length) + 1, BLOCK):
        values = _span(theta, start, min(BLOCK, int(length) + 1 - start), offsets)
        j = int(values.argmin())
        if values[j] < best:
            best, where = float(values[j]), start + j
    return best, where


def first_negative(base: float, dim: int, length: int) -> int | None:
    """Smallest m ≤ length with B(m) < 0 (exact, in growing blocks from m = 1), or None when the base passes."""
    theta = inv_freq(base, dim)
    offsets = _offsets(theta[None])[0]
    start, size = 1, 1024
    while start <= length:
        values = _span(theta, start, min(size, int(length) + 1 - start), offsets)
        negative = np.flatnonzero(values < 0)
        if len(negative):
            return start + int(negative[0])
        start, size = start + size, min(size * 2, BLOCK)
    return None


def certified_base(dim: int, length: int) -> float | None:
    """A base above which every base passes, by proof: for m ≤ L a term with L·θᵢ ≤ π is ≥ cos(L·θᵢ) and any other
    is ≥ −1; that sum only grows with the base, so the first base (by bisection) where it is ≥ 0 covers all larger
    ones. Loose (150× the smallest passing base or more); None when no base below 1e300 qualifies."""
    def bound(base: float) -> float:
        phase = length * inv_freq(base, dim)
        return float(np.where(phase <= math.pi, np.cos(np.minimum(phase, math.pi)), -1.0).sum())

    low, high = GRID_FLOOR, 1e300
    if bound(high) < 1e-6:  # the margin absorbs rounding: cos(x) rounds to 1 for x < 1e-8
        return None
    while high / low > 1 + 1e-9:
        middle = math.sqrt(low * high)
        low, high = (low, middle) if bound(middle) >= 1e-6 else (middle, high)
    return high


@dataclass(frozen=True)
class GridBase:
    """A base on the grid 10^(k/K) and the exact minimum of B(m) over m ≤ length there."""
    base: float
    steps_per_decade: int  # K
    min_decay: float  # min_{m ≤ length} B(m) at `base`
    argmin: int  # the m where it is reached


class _Hunter:
    """For one base after another, an m ≤ length with B(m) < 0 and how far above the base it keeps failing:
    |∂B(m)/∂ln b| ≤ m·s with s = Σᵢ (2i/d)·θᵢ, which only shrinks as b grows, so B(m) < 0 at b proves every base
    in [b, b·e^(−B(m)/(m·s))) fails. Failing positions of recent bases are kept: they often fail the next one."""

    def __init__(self, dim: int, length: int, keep: int = 4):
        self.dim, self.length, self.keep = dim, int(length), keep
        self.exponents = np.arange(0, dim, 2, dtype=np.float64) / dim  # 2i/d
        self.witnesses: list[int] = []
        self.small_first = True  # look at m ≤ 1024 first while that keeps finding failures

    def remember(self, m: int) -> None:
        if m in self.witnesses:
            self.witnesses.remove(m)
        self.witnesses.insert(0, m)
        del self.witnesses[self.keep:]

    def widths(self, theta: np.ndarray, positions) -> np.ndarray:
        """−B(m)/(m·s) for bases [G, n] × positions [W] → [G, W]: > 0 where m fails, = the ln-width proved failing."""
        m = np.asarray(positions, dtype=np.float64)
        values = np.cos(m[None, :, None] * theta[:, None, :]).sum(-1)
        return -values / (m[None, :] * (theta @ self.exponents)[:, None])

    def hunt(self, bases: np.ndarray) -> np.ndarray:
        """For each of `bases`, the ln-width proved failing above it by a failing m found in spans of positions, or
        0.0 when none of them fails (the exact check over all m then decides): m ≤ 1024 while that keeps finding
        failures, then spans growing from m = L down to L/2, where B turns negative first near the bound."""
        theta = 1.0 / (np.asarray(bases, dtype=np.float64)[:, None] ** self.exponents[None, :])  # [G, n]
        slope, offsets = theta @ self.exponents, _offsets(theta)
        spans, stop, size = [], self.length, TOP_SPAN
        while stop > max(self.length // 2, 1024 if self.small_first else 0):
            spans.append((max(1, stop - size + 1), stop))
            stop, size = spans[-1][0] - 1, min(size * 2, BLOCK)
        if self.small_first:
            spans.insert(0, (1, min(self.length, 1024)))
        widths, small = np.zeros(len(theta)), False
        for start, stop in spans:
            rows = np.flatnonzero(widths == 0)
            per = max(1, BLOCK // (stop - start + 1))
            for group in (rows[lo:lo + per] for lo in range(0, len(rows), per)):
                values = _span(theta[group], start, stop - start + 1, offsets[group])
                failing = values.min(axis=1) < 0
                for g, row in zip(group[failing], values[failing], strict=True):
                    negative = np.flatnonzero(row < 0)
                    m = start + int(negative[(-row[negative] / (start + negative)).argmax()])
                    value = float(np.cos(m * theta[g]).sum())  # a direct sum confirms the failure
                    if value < 0:
                        widths[g], small = -value / (m * slope[g]), small or start == 1
                        self.remember(m)
        self.small_first = small
        return widths


def base_passes(base: float, dim: int, length: int) -> bool:
    """B(m) ≥ 0 for every m ≤ length: a failing m is looked for where it usually is first (fast for failing
    bases), then every m is checked."""
    return _Hunter(dim, length).hunt(np.array([base]))[0] == 0.0 and decay_min(base, dim, length)[0] >= 0


def default_steps_per_decade(length: int) -> int:
    """10,000 steps per decade (grid ratio 1.00023) up to 64K tokens, 5,000 (1.00046) above: near the answer every
    grid base costs a search for a failing m, and that search grows with the context."""
    return 10_000 if length <= 65_536 else 5_000


def smallest_passing_base(dim: int, length: int, *, steps_per_decade: int | None = None) -> GridBase:
    """The smallest base 10^(k/K) ≥ 2 with B(m) ≥ 0 for every m ≤ length (see the module doc for what is exact).

    Grid bases are visited upwards in batches: the known failing positions are tried on the whole batch at
    once; a base none of them fails is hunted (`_Hunter.hunt`) and, if nothing fails, checked over every m."""
    steps = int(steps_per_decade or default_steps_per_decade(length))
    ceiling = certified_base(dim, length)
    last = math.ceil(math.log10(ceiling) * steps) if ceiling else math.ceil(300 * steps)
    hunter = _Hunter(dim, length)
    k, stride = math.ceil(math.log10(GRID_FLOOR) * steps), BATCH
    while k <= last:
        ks = np.arange(k, min(k + max(1, 2 * BATCH // stride), last + 1))  # fewer bases while jumps are long
        bases = 10.0 ** (ks / steps)
        theta = 1.0 / (bases[:, None] ** hunter.exponents[None, :])  # [G, n], as inv_freq
        columns = list(hunter.witnesses)
        widths = hunter.widths(theta, columns)  # [G, W]
        g = 0
        while g < len(ks):
            j = int(widths[g].argmax()) if columns else 0
            width = float(widths[g, j]) if columns else 0.0
            if width > 0:
                hunter.remember(columns[j])
            else:
                width = float(hunter.hunt(bases[g:g + 1])[0])
                if width == 0.0:
                    value, where = decay_min(float(bases[g]), dim, length)
                    if value >= 0:
                        return GridBase(float(bases[g]), steps, value, where)
                    hunter.remember(where)  # a failure within rounding of 0 that the hunt's direct sum missed
                columns.append(hunter.witnesses[0])  # try it on the rest of the batch too
                column = np.full((len(ks), 1), -1.0)
                column[g + 1:g + 33] = hunter.widths(theta[g + 1:g + 33], columns[-1:])
                widths = np.concatenate([widths, column], axis=1)
            # the next grid index outside [base, base·e^width): every grid base in between fails
            step = max(1, math.ceil((ks[g] / steps + width * (1 - 1e-9) / math.log(10)) * steps) - ks[g])
            g, stride = g + step, step
        k += g
    raise ValueError(f"no base up to 1e300 keeps B(m) ≥ 0 up to m = {length}")


def all_pass_threshold(dim: int, length: int, start: float, *, steps_per_decade: int = 230,
                       span: float = 2.0) -> tuple[GridBase, float]:
    """From `start` (the smallest passing base) up the grid 10^(k/K): the first grid base from which every grid
    base up to `span` times it passes, each checked over every m ≤ length, and the last base checked.

    K = 230 is a 1% grid: failing islands narrower than that between grid bases go unseen, and nothing above the
    last base checked is claimed (see `certified_base` for what is proved)."""
    hunter = _Hunter(dim, length)
    k = math.ceil(math.log10(start) * steps_per_decade)
    run: GridBase | None = None  # the first base of the current run of passing grid bases
    while True:
        base = 10 ** (k / steps_per_decade)
        if run is not None and base > run.base * span:
            return run, 10 ** ((k - 1) / steps_per_decade)
        theta = inv_freq(base, dim)[None, :]
        if hunter.witnesses and (hunter.widths(theta, hunter.witnesses) > 0).any():
            run = None
        else:
            value, where = decay_min(base, dim, length)
            if value < 0:
                hunter.remember(where)
                run = None
            elif run is None:
                run = GridBase(base, steps_per_decade, value, where)
        k += 1
