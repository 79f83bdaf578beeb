from __future__ import annotations

import math

import pytest

from studylib.report.stats import mean_ci, paired_difference


def test_confidence_interval_by_hand():
    # values 1, 2, 3, 6: mean 3, s = sqrt(((4 + 1 + 0 + 9) / 3)) = 2.1602, t_{0.975, 3} = 3.1824
    est = mean_ci([1.0, 2.0, 3.0, 6.0])
    half = 3.182446305 * 2.160246899 / 2.0
    assert est.mean == pytest.approx(3.0)
    assert (est.low, est.high) == pytest.approx((3.0 - half, 3.0 + half))
    assert est.n == 4


def test_three_seeds_use_t_with_two_degrees_of_freedom():
    est = mean_ci([0.5, 0.6, 0.7])
    assert est.high - est.mean == pytest.approx(4.302652730 * 0.1 / math.sqrt(3))


def test_degenerate_inputs():
    assert mean_ci([]).n == 0 and math.isnan(mean_ci([]).mean)
    one = mean_ci([2.0])
    assert one.mean == 2.0 and math.isnan(one.low)
    assert mean_ci([1.0, float("nan"), 3.0]).n == 2


def test_paired_difference_uses_common_seeds():
    est = paired_difference({0: 1.0, 1: 2.0, 2: 4.0}, {0: 0.5, 1: 1.0, 3: 9.0})
    assert est.n == 2 and est.mean == pytest.approx(0.75)
