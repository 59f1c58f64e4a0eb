"""The base lower bound of *Base of RoPE Bounds Context Length*, checked against B(m) summed directly.

B(m) = Σᵢ cos(m·θᵢ); a base passes at context L when B(m) ≥ 0 for every m ≤ L. The reference here is
`brute_min`: one cosine per term and position, written out here, independent of `rope_bounds`.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from longctx.analyze import analyze, format_table
from longctx.cli import main
from longctx.errors import UsageError


@pytest.fixture
def rb():
    """The bound module, imported per test so the tests of public behaviour also run against code without it."""
    from longctx import rope_bounds

    return rope_bounds


def brute_min(base: float, dim: int, length: int) -> float:
    """min over m = 1 … length of B(m), one cosine per (m, i)."""
    theta = 1.0 / float(base) ** (np.arange(0, dim, 2) / dim)
    return min(np.cos(np.arange(lo, min(lo + 8192, length + 1))[:, None] * theta).sum(1).min()
               for lo in range(1, length + 1, 8192))


@pytest.mark.parametrize("base,dim,length", [(2e6, 128, 65_536), (6.5e7, 128, 70_001), (26_960.0, 128, 4096),
                                             (500.0, 16, 1), (3.3, 16, 5), (1e4, 64, 1000)])
def test_decay_min_matches_the_direct_sum_at_every_position(rb, base, dim, length):
    theta = 1.0 / base ** (np.arange(0, dim, 2) / dim)
    direct = np.cos(np.arange(1, length + 1)[:, None] * theta).sum(1)  # B(1) … B(length)
    value, where = rb.decay_min(base, dim, length)
    assert value == pytest.approx(direct.min(), abs=1e-9)
    assert direct[where - 1] == pytest.approx(value, abs=1e-9)
    assert rb.first_negative(base, dim, length) == (int(np.argmax(direct < 0)) + 1 if (direct < 0).any() else None)


@pytest.mark.parametrize("dim,length", [(128, 1024), (128, 4096), (64, 8192), (16, 256)])
def test_smallest_passing_base_passes_and_the_grid_below_it_fails(rb, dim, length):
    found = rb.smallest_passing_base(dim, length)
    assert brute_min(found.base, dim, length) >= 0
    assert found.min_decay == pytest.approx(brute_min(found.base, dim, length), abs=1e-9)
    steps, top = found.steps_per_decade, round(math.log10(found.base) * found.steps_per_decade)
    within_one_percent = range(top - 1, top - math.ceil(steps * math.log10(1.01)) - 1, -1)  # every grid base
    far_below = range(top - 1, round(steps * math.log10(found.base / 30)), -397)  # a sample of the rest
    for k in [*within_one_percent, *far_below]:
        assert brute_min(10 ** (k / steps), dim, length) < 0, f"grid base {10 ** (k / steps):.6g} passes"


def test_islands_below_the_old_coarse_scan_are_found():
    """The old 50-steps-per-decade scan reported 1.4e5 at 8K and 2.8e6 at 64K; 8.38e4 and 2.09e6 pass."""
    at_8k = analyze(128, 1e4, 4096, 8192).base_lower_bound
    assert at_8k == pytest.approx(83_772, rel=1e-3) and brute_min(at_8k, 128, 8192) >= 0
    at_64k = analyze(128, 1e4, 4096, 65_536).base_lower_bound
    assert at_64k == pytest.approx(2.0903e6, rel=1e-3) and brute_min(at_64k, 128, 65_536) >= 0


def test_passing_bases_are_islands(rb):
    """At 4K: 26,960 passes, 27,500 fails, 28,700 passes: not an interval, so no bisection."""
    assert brute_min(26_960, 128, 4096) >= 0 > brute_min(27_500, 128, 4096)
    assert brute_min(28_700, 128, 4096) >= 0
    assert rb.smallest_passing_base(128, 4096).base == pytest.approx(26_952.6, rel=1e-4)


def test_all_pass_threshold_is_followed_by_passing_bases_only(rb):
    smallest = rb.smallest_passing_base(128, 4096)
    threshold, checked_to = rb.all_pass_threshold(128, 4096, smallest.base)
    assert threshold.base == pytest.approx(58_825, rel=0.011)  # the last failing base is ≈58,780
    assert checked_to >= 2 * threshold.base / 1.011
    assert brute_min(threshold.base / 10 ** (1 / threshold.steps_per_decade), 128, 4096) < 0
    for k in range(0, 70, 7):
        assert brute_min(threshold.base * 10 ** (k / threshold.steps_per_decade), 128, 4096) >= 0


def test_certified_base_passes_and_is_above_the_search(rb):
    certified = rb.certified_base(128, 4096)
    assert certified > rb.smallest_passing_base(128, 4096).base
    for factor in (1.0, 1.37, 10.0):
        assert brute_min(certified * factor, 128, 4096) >= 0


def test_small_base_has_no_extrapolation_bound():
    """Base 500 trained at 16K (2310.05209's small-base route): every dimension completes a period in training,
    so d_extra = d and the theory sets no limit; 2π·500 = 3,142 tokens was printed before."""
    result = analyze(128, 500, 16_384, 16_384)
    assert result.d_extra == 128 and result.t_extra_current_base is None
    assert "3,142" not in format_table(result) and "sets no limit" in format_table(result)
    assert analyze(128, 1e4, 4096, 4096).t_extra_current_base == pytest.approx(2 * math.pi * 1e4 ** (92 / 128))


def test_critical_base_is_for_tuning_at_the_target_length():
    result = analyze(128, 1e4, 4096, 16_384)
    expected = 1e4 ** (math.log(16_384 / (2 * math.pi)) / math.log(4096 / (2 * math.pi)))
    assert result.critical_base == pytest.approx(expected) and result.critical_base > 1.5e4
    assert "critical base, tuning at 16384" in format_table(result)


@pytest.mark.parametrize("target,expected", [("1K", 4294.4), ("4096", 26_952.6), ("8192", 83_772.2)])
def test_cli_reports_the_smallest_passing_base(capsys, target, expected):
    code = main(["analyze", "--dim", "128", "--base", "1e4", "--train-length", "4096", "--target-length", target,
                 "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["base_lower_bound"] == pytest.approx(expected, rel=1e-4)
    assert result["base_lower_bound_grid_ratio"] == pytest.approx(10 ** (1 / 10_000))


def test_cli_refuses_a_target_beyond_two_to_the_24(capsys):
    code = main(["analyze", "--head-dim", "128", "--base", "1e4", "--train-length", "4096", "--target-length", "1e12"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "2^24" in err
    with pytest.raises(UsageError):
        analyze(128, 1e4, 4096, (1 << 24) + 1)


def test_analyze_never_imports_torch():
    """torch takes seconds to import on a busy 2-core machine: analyze is numpy only."""
    code = (
        "import sys; from longctx.cli import main; "
        "main(['analyze', '--head-dim', '64', '--base', '1e4', '--train-length', '1024', '--target-length', '2048']); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


# docs/base-bound.md's table: L -> (the paper's Table 1 base, longctx's smallest passing base), d = 128
TABLE_1 = {1024: (4.3e3, 4294.4), 2048: (1.6e4, 11588), 4096: (2.7e4, 26953), 8192: (8.4e4, 83772),
           16384: (3.1e5, 2.3169e5), 32768: (6.4e5, 6.3009e5), 65536: (2.1e6, 2.0903e6), 131072: (7.8e6, 4.8708e6),
           262144: (3.6e7, 3.2434e7), 524288: (6.4e7, 6.2690e7), 1048576: (5.1e8, 6.5433e7)}
PAPER_FAILS = {4096, 16384, 32768, 131072, 262144, 524288, 1048576}


@pytest.mark.parametrize("length", sorted(TABLE_1))
def test_table_1_bases_against_the_strict_test(length):
    """The paper's own values fail B(m) >= 0 at 4K, 16K, 32K and 128K-1M; longctx's pass at every m."""
    from longctx.rope_bounds import decay_min

    paper, ours = TABLE_1[length]
    paper_min, where = decay_min(paper, 128, length)
    assert (paper_min < 0) == (length in PAPER_FAILS), (length, paper_min, where)
    assert decay_min(ours, 128, length)[0] >= 0
