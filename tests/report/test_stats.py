from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from studylib.report.stats import (
    detectable_effect,
    holm,
    mean_ci,
    paired_difference,
    paired_power,
    paired_test,
)


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


def test_paired_test_matches_scipy_and_a_hand_computation():
    a = {0: 0.61, 1: 0.58, 2: 0.66, 3: 0.60, 4: 0.63}
    b = {0: 0.55, 1: 0.56, 2: 0.57, 3: 0.58, 4: 0.52, 9: 0.1}  # seed 9 has no partner
    test = paired_test(a, b)
    diffs = np.array([0.06, 0.02, 0.09, 0.02, 0.11])
    reference = scipy_stats.ttest_rel([a[s] for s in range(5)], [b[s] for s in range(5)])
    assert test.n == 5
    assert test.p == pytest.approx(reference.pvalue) and test.t == pytest.approx(
        reference.statistic
    )
    # By hand: mean 0.06, sd = sqrt(sum (d - 0.06)^2 / 4) = sqrt(0.0066 / 4) = 0.040620
    assert test.mean == pytest.approx(0.06)
    assert test.sd == pytest.approx(math.sqrt(0.0066 / 4))
    assert test.d_z == pytest.approx(0.06 / math.sqrt(0.0066 / 4))
    assert test.t == pytest.approx(test.d_z * math.sqrt(5))  # t = d_z sqrt(n)
    assert (test.low, test.high) == pytest.approx(
        (diffs.mean() - 2.776445105 * test.sd / math.sqrt(5), 0.06 + 2.776445105 * test.sd / 5**0.5)
    )
    # A null other than 0 (early stopping's margin) is a shift of the differences.
    shifted = paired_test(a, b, null=0.01)
    assert shifted.p == pytest.approx(scipy_stats.ttest_1samp(diffs, 0.01).pvalue)
    assert shifted.d_z == pytest.approx(0.05 / shifted.sd)
    assert (shifted.low, shifted.high) == pytest.approx((test.low, test.high))  # same interval


def test_paired_test_without_spread_or_pairs():
    same = paired_test({0: 0.5, 1: 0.7, 2: 0.6}, {0: 0.5, 1: 0.7, 2: 0.6})
    assert (same.p, same.d_z) == (1.0, 0.0)  # no difference in any seed: no evidence
    shifted = paired_test({0: 0.6, 1: 0.8}, {0: 0.5, 1: 0.7})  # +0.1 in every seed
    assert shifted.d_z == math.inf
    assert shifted.p == 0.5  # the exact sign-flip test: 2 of the 4 sign patterns as extreme
    five = paired_test({s: 0.6 for s in range(5)}, {s: 0.5 for s in range(5)})
    assert five.p == 0.0625  # 2 / 2^5: five identical differences are no certainty
    assert math.isnan(paired_test({0: 1.0}, {0: 0.0}).p)
    assert paired_test({0: 1.0}, {1: 0.0}).n == 0


def test_holm_by_hand_keeps_order_and_is_monotone():
    raw = [0.01, 0.04, 0.03, 0.005]
    # sorted: 0.005 x 4 = 0.02; 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04 -> max 0.06
    assert holm(raw) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, float("nan"), 0.01]) == pytest.approx([0.5, math.nan, 0.02], nan_ok=True)
    assert holm([0.9, 0.8]) == [1.0, 1.0]  # capped at 1
    assert holm([0.02, 0.03]) == pytest.approx([0.04, 0.04])  # 0.03 x 1 < 0.04: step down
    rng = np.random.default_rng(11)
    for _ in range(50):
        p = rng.uniform(0, 0.2, size=rng.integers(1, 9))
        adjusted = np.array(holm(p))
        order = np.argsort(p)
        assert np.all(np.diff(adjusted[order]) >= 0)  # monotone in the raw p-values
        assert np.all(adjusted >= p) and np.all(adjusted <= 1)
        assert adjusted[order[0]] == pytest.approx(min(1, len(p) * p[order[0]]))


def test_power_against_a_published_value_and_a_simulation():
    # G*Power, one-sample / paired t, two-tailed, alpha 0.05, d 0.5: n = 34, power 0.8077775.
    assert paired_power(0.5, 34) == pytest.approx(0.8077775, abs=1e-6)
    n, alpha = 5, 0.05 / 6  # five seeds, Holm's first step in a family of six claims
    d = detectable_effect(n, alpha)
    assert paired_power(d, n, alpha) == pytest.approx(0.8, abs=1e-6)
    assert 2.7 < d < 2.8
    rng = np.random.default_rng(0)
    diffs = rng.normal(d, 1.0, size=(40_000, n))
    p = scipy_stats.ttest_1samp(diffs, 0.0, axis=1).pvalue
    assert np.mean(p < alpha) == pytest.approx(0.8, abs=0.01)
    assert detectable_effect(10) < detectable_effect(5) < detectable_effect(5, 0.01)
    assert math.isnan(detectable_effect(1))
