"""Intervals stay inside their quantity's range (src.intervals): the cases the verdict meets."""
import math

import pytest

from src.intervals import binomial_interval, detectable_difference, interval, pooled_spread


def _within(result, low, high):
    assert result.low is not None and low <= result.low <= result.centre <= result.high <= high


def test_a_diverged_seed_gives_a_wide_interval_inside_plus_minus_100_points():
    # One seed at chance (-88 points), two matched: the plain t interval was -50.7 [-540.5, +439.1].
    result = interval([-88.0, 0.1, 0.2], "difference", 0.95)
    _within(result, -100, 100)
    assert result.high - result.low > 150  # honest: three seeds with one failure say little


def test_a_bimodal_arm_stays_within_the_percent_range():
    result = interval([10.0, 11.0, 97.0, 98.0], "percent", 0.95)
    _within(result, 0, 100)


def test_small_differences_keep_the_plain_t_interval():
    values = [0.3, -0.2, 0.1, 0.4, -0.1, 0.0, 0.2, 0.3]
    result = interval(values, "difference", 0.95)
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    half = 2.364624 * sd / math.sqrt(len(values))  # t(0.975, 7)
    assert result.low == pytest.approx(mean - half, abs=1e-3)
    assert result.high == pytest.approx(mean + half, abs=1e-3)


def test_identical_pairs_give_no_zero_width_interval():
    alone = interval([-0.06, -0.06, -0.06], "difference", 0.95)
    assert alone.low is None and alone.high is None  # no spread to measure: no interval, not [x, x]
    pooled = interval([-0.06] * 3, "difference", 0.95, pooled_spread([[0.1, 0.3, -0.2], [0.0, 0.0]], "difference"))
    assert pooled.pooled and pooled.width > 0.1


def test_a_wide_time_spread_keeps_ratios_positive():
    result = interval([0.2, 1.9, 0.5], "ratio", 0.95)
    assert result.low > 0 and result.low < result.centre < result.high
    # the centre of a ratio is its geometric mean
    assert result.centre == pytest.approx((0.2 * 1.9 * 0.5) ** (1 / 3))


def test_power_and_binomial():
    # more seeds, smaller detectable difference; none from one seed
    assert detectable_difference(0.5, 8, 0.95, 0.8) < detectable_difference(0.5, 3, 0.95, 0.8)
    assert detectable_difference(0.5, 1, 0.95, 0.8) is None
    low, high = binomial_interval(1, 3, 0.95)
    assert 0 < low < 1 / 3 < high < 1
    assert binomial_interval(0, 8, 0.95)[0] == 0 and binomial_interval(8, 8, 0.95)[1] == 1
