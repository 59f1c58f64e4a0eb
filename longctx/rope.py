"""Rotary position embedding math: small pure functions, torch only, float64 throughout.

θᵢ = b^(−2i/d) for i = 0 … d/2−1 (d = rotary dimension, b = base). Every scaling method maps
(θ, settings) → (θ', attention scaling), following transformers' `ROPE_INIT_FUNCTIONS` so a patched
config and this module agree; tests check that parity for every method. No I/O, no transformers import.
Which function a config's rope_type uses is decided in `longctx.rope_methods`, the registry of methods
(`rope_methods.inv_freq_for(params, dim, ...)`), which imports this module, never the other way.

Theory helpers live in the torch-free `longctx.rope_bounds` (so `longctx analyze` starts fast) and are re-exported
here: `critical_dim`, `extrapolation_bound`, `critical_base`, … from *Scaling Laws of RoPE-based Extrapolation*
(Liu et al., arXiv 2310.05209); `first_negative_position`, `satisfies_base_bound`, `base_lower_bound` from *Base
of RoPE Bounds Context Length* (Men et al., arXiv 2405.14591): B(m) = Σᵢ cos(m·θᵢ) must stay ≥ 0 for every m ≤ L.
"""

from __future__ import annotations

import math

import torch

from longctx import rope_bounds
from longctx.rope_bounds import (  # noqa: F401 - re-exported: the theory helpers of this module's users
    TWO_PI,
    base_for_extrapolation,
    critical_base,
    critical_dim,
    extrapolation_bound,
    ntk_base,
    small_base_thresholds,
)


# ---------------------------------------------------------------------------------------------- frequencies
def default_inv_freq(base: float, dim: int) -> torch.Tensor:
    """θᵢ = base^(−2i/d): [d/2] float64."""
    exponents = torch.arange(0, dim, 2, dtype=torch.float64) / dim  # [d/2]
    return 1.0 / (float(base) ** exponents)


def linear_inv_freq(base: float, dim: int, factor: float) -> torch.Tensor:
    """Position interpolation: θ'ᵢ = θᵢ / s."""
    return default_inv_freq(base, dim) / float(factor)


def dynamic_inv_freq(base: float, dim: int, factor: float, seq_len: int, max_position_embeddings: int) -> torch.Tensor:
    """Dynamic NTK as transformers computes it: only past `max_position_embeddings` (L) the base grows to
    b·((s·seq_len/L) − (s−1))^(d/(d−2)); at or below L the frequencies are the original ones."""
    seq_len = max(int(seq_len), int(max_position_embeddings))
    scaled = float(base) * ((factor * seq_len / max_position_embeddings) - (factor - 1)) ** (dim / (dim - 2))
    return default_inv_freq(scaled, dim)


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature: 0.1·mscale·ln s + 1 (1 when s ≤ 1)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def yarn_correction_dim(num_rotations: float, dim: int, base: float, original_length: int) -> float:
    """Dimension index whose wavelength fits `num_rotations` times into the original context."""
    return (dim * math.log(original_length / (num_rotations * TWO_PI))) / (2 * math.log(base))


def yarn_correction_range(beta_fast: float, beta_slow: float, dim: int, base: float, original_length: int,
                          truncate: bool = True) -> tuple[float, float]:
    """[low, high] dimension indices of YaRN's ramp: below low extrapolate, above high interpolate."""
    low = yarn_correction_dim(beta_fast, dim, base, original_length)
    high = yarn_correction_dim(beta_slow, dim, base, original_length)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0), min(high, dim - 1)


def yarn_inv_freq(base: float, dim: int, factor: float, original_length: int, *, beta_fast: float = 32.0,
                  beta_slow: float = 1.0, attention_factor: float | None = None, mscale: float | None = None,
                  mscale_all_dim: float | None = None, truncate: bool = True) -> tuple[torch.Tensor, float]:
    """YaRN (arXiv 2309.00071): ramp between θ (fast dims) and θ/s (slow dims), plus attention scaling."""
    if attention_factor is None:
        if mscale and mscale_all_dim:
            attention_factor = yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim)
        else:
            attention_factor = yarn_mscale(factor)
    low, high = yarn_correction_range(beta_fast, beta_slow, dim, base, original_length, truncate)
    if low == high:
        high += 0.001  # as transformers does: avoid a zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)  # [d/2]
    keep = 1.0 - ramp  # γ: 1 keeps θ (extrapolation), 0 uses θ/s (interpolation)
    theta = default_inv_freq(base, dim)
    return (theta / factor) * (1 - keep) + theta * keep, float(attention_factor)


def llama3_inv_freq(base: float, dim: int, factor: float, original_length: int, *, low_freq_factor: float = 1.0,
                    high_freq_factor: float = 4.0) -> torch.Tensor:
    """Llama 3.1: keep short wavelengths, divide long ones by s, blend smoothly in between."""
    theta = default_inv_freq(base, dim)
    wavelength = TWO_PI / theta
    low_freq_wavelength = original_length / low_freq_factor
    high_freq_wavelength = original_length / high_freq_factor
    scaled = torch.where(wavelength > low_freq_wavelength, theta / factor, theta)
    smooth = (original_length / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelength >= high_freq_wavelength) & (wavelength <= low_freq_wavelength)
    return torch.where(medium, blended, scaled)


def periods(inv_freq: torch.Tensor) -> torch.Tensor:
    """Wavelength in tokens of each dimension pair: 2π/θᵢ."""
    return TWO_PI / inv_freq


# ------------------------------------------------------------------- Base of RoPE Bounds Context Length
def long_term_decay(base: float, dim: int, positions: torch.Tensor) -> torch.Tensor:
    """B(m) = Σᵢ cos(m·θᵢ) for each relative distance m in `positions` [M] → [M] float64."""
    theta = default_inv_freq(base, dim)  # [d/2]
    return torch.cos(positions.to(torch.float64)[:, None] * theta[None, :]).sum(-1)


def first_negative_position(base: float, dim: int, length: int) -> int | None:
    """Smallest m ≤ length with B(m) < 0 (every m checked, float64), or None when the base satisfies the bound."""
    return rope_bounds.first_negative(base, dim, length)


def satisfies_base_bound(base: float, dim: int, length: int) -> bool:
    """B(m) ≥ 0 for every integer m = 1 … length."""
    return rope_bounds.first_negative(base, dim, length) is None


def base_lower_bound(dim: int, length: int, *, steps_per_decade: int | None = None) -> float:
    """The smallest base on the grid 10^(k/K) that satisfies the bound (`rope_bounds.smallest_passing_base`: every
    grid base below it is shown to fail). The passing bases are not an interval, so this is not a threshold."""
    return rope_bounds.smallest_passing_base(dim, length, steps_per_decade=steps_per_decade).base
