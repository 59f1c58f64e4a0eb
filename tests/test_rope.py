"""Rope math against known values from the papers and FIELD.md."""

from __future__ import annotations

import math

import pytest
import torch

from longctx import rope


def test_critical_dimension_of_llama2():
    assert rope.critical_dim(128, 1e4, 4096) == 92
    assert rope.critical_dim(128, 1e4, 2048) == 82
    assert rope.critical_dim(128, 1e4, 8192) == 100


@pytest.mark.parametrize("base,expected", [(5e5, 7.8e4), (1e6, 1.29e5), (1e7, 6.75e5)])
def test_extrapolation_bound_after_tuning_llama2_at_4k(base, expected):
    assert rope.extrapolation_bound(128, base, 4096, pretrain_base=1e4) == pytest.approx(expected, rel=0.01)


def test_extrapolation_bound_is_infinite_when_every_dimension_completes_a_period():
    """Base 500 trained at 16K: all 128 dimensions complete a period in training (base < T/2π = β₃), no position
    is out of distribution and 2310.05209 sets no limit; 2π·500^(128/128) = 3,142 tokens is not a bound."""
    assert rope.critical_dim(128, 500, 16_384) == 128
    assert rope.extrapolation_bound(128, 500, 16_384) == math.inf
    assert rope.base_for_extrapolation(128, 65_536, 16_384, 500) == 500


def test_base_for_extrapolation_inverts_the_bound():
    base = rope.base_for_extrapolation(128, 100_000, 4096, 1e4)
    assert rope.extrapolation_bound(128, base, 4096, pretrain_base=1e4) == pytest.approx(100_000)


def test_critical_base_is_the_pretraining_base_when_tuning_at_the_training_length():
    assert rope.critical_base(4096, 4096, 1e4) == pytest.approx(1e4)
    assert rope.critical_base(4096, 16384, 1e4) > 1e4


def test_ntk_base_example():
    assert rope.ntk_base(1e4, 4, 128) == pytest.approx(40890, rel=1e-3)


def test_ntk_matches_linear_interpolation_on_the_lowest_frequency():
    ntk = rope.default_inv_freq(rope.ntk_base(1e4, 8, 128), 128)
    linear = rope.linear_inv_freq(1e4, 128, 8)
    assert ntk[-1].item() == pytest.approx(linear[-1].item(), rel=1e-9)
    assert ntk[0].item() == 1.0  # the highest frequency is untouched


def test_yarn_ramp_bounds_for_llama2():
    assert rope.yarn_correction_range(32, 1, 128, 1e4, 4096) == (20, 46)


def test_yarn_keeps_fast_dims_and_interpolates_slow_ones():
    theta = rope.default_inv_freq(1e4, 128)
    scaled, mscale = rope.yarn_inv_freq(1e4, 128, 8, 4096)
    torch.testing.assert_close(scaled[:20], theta[:20])
    torch.testing.assert_close(scaled[47:], theta[47:] / 8)
    assert mscale == pytest.approx(0.1 * math.log(8) + 1)


def test_llama31_frequencies():
    theta = rope.default_inv_freq(5e5, 128)
    scaled = rope.llama3_inv_freq(5e5, 128, 8, 8192, low_freq_factor=1, high_freq_factor=4)
    wavelength = 2 * math.pi / theta
    short, long_ = wavelength < 8192 / 4, wavelength > 8192
    torch.testing.assert_close(scaled[short], theta[short])
    torch.testing.assert_close(scaled[long_], theta[long_] / 8)


def test_long_term_decay_at_zero_is_half_the_dimension():
    assert rope.long_term_decay(1e4, 128, torch.tensor([0.0])).item() == pytest.approx(64)


@pytest.mark.parametrize("dim,length", [(128, 4096), (64, 8192), (128, 32768)])
def test_base_lower_bound_is_the_first_passing_base_of_the_scan(dim, length):
    bound = rope.base_lower_bound(dim, length)
    assert rope.satisfies_base_bound(bound, dim, length)
    assert not rope.satisfies_base_bound(bound / 1.01, dim, length)
    assert rope.first_negative_position(bound / 1.01, dim, length) <= length


def test_base_lower_bound_grows_with_length_and_matches_the_paper_order():
    # Men et al. 2024 report ≈2.7e4 for 4K and ≈6.4e5 for 32K at d = 128.
    assert rope.base_lower_bound(128, 4096) == pytest.approx(2.7e4, rel=0.1)
    assert rope.base_lower_bound(128, 32768) == pytest.approx(6.4e5, rel=0.1)


def test_periods_are_two_pi_over_frequency():
    theta = rope.default_inv_freq(1e4, 8)
    torch.testing.assert_close(rope.periods(theta) * theta, torch.full_like(theta, 2 * math.pi))


def test_small_base_thresholds():
    assert rope.small_base_thresholds(4096) == pytest.approx({"beta1": 2 * 4096 / math.pi, "beta2": 4096 / math.pi,
                                                              "beta3": 4096 / (2 * math.pi)})
