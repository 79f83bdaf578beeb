"""Statistics over seeds: t-intervals, paired t-tests, Holm's adjustment, and power.

A seed fixes split, init, batch order and dropout masks, so two arms of one seed differ only
in what the design changed: arms are compared by the per-seed difference (a paired t-test on
n seeds has n - 1 degrees of freedom). Everything that scipy computes is taken from scipy;
Holm's step-down adjustment (not in scipy) is a few lines here, tested by hand.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize
from scipy import stats as scipy_stats

ALPHA = 0.05  # family-wise error rate of every family of claims
POWER = 0.8  # the power at which the report states the detectable effect


@dataclass(frozen=True)
class Estimate:
    mean: float
    low: float  # confidence interval; nan with fewer than two values
    high: float
    n: int

    def __str__(self) -> str:
        if self.n < 2:
            return f"{self.mean:.4g} (n={self.n})"
        return f"{self.mean:.4g} [{self.low:.4g}, {self.high:.4g}] (n={self.n})"


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> Estimate:
    """Mean and Student-t interval: mean +/- t_{(1+c)/2, n-1} * s / sqrt(n)."""
    clean = [float(v) for v in values if not math.isnan(float(v))]
    n = len(clean)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    mean = sum(clean) / n
    if n < 2:
        return Estimate(mean, math.nan, math.nan, n)
    sd = math.sqrt(sum((v - mean) ** 2 for v in clean) / (n - 1))
    half = scipy_stats.t.ppf((1 + confidence) / 2, n - 1) * sd / math.sqrt(n)
    return Estimate(mean, mean - half, mean + half, n)


def paired_difference(
    a: dict[int, float], b: dict[int, float], confidence: float = 0.95
) -> Estimate:
    """Interval of a - b over the seeds both have (a paired comparison removes seed effects)."""
    seeds = sorted(set(a) & set(b))
    return mean_ci([a[s] - b[s] for s in seeds], confidence)


@dataclass(frozen=True)
class PairedTest:
    """A two-sided paired t-test of mean(a - b) = null over the seeds a and b share.

    `low`/`high` is the unadjusted 95% t-interval of the mean difference; `d_z` the effect size
    of a paired design, (mean difference - null) / standard deviation of the differences.
    Differences identical in every seed have no spread, and a t-test has nothing to work with
    (scipy gives nan): p is 1 when they equal `null` (d_z 0); when they differ from it (d_z
    infinite), p is the exact sign-flip permutation test's, 2 / 2^n (all n signs agree: the
    most extreme of the 2^n equally likely sign patterns, two-sided), so five identical
    differences give p = 0.0625, not a certainty.
    """

    n: int
    mean: float  # mean of a - b
    low: float
    high: float
    sd: float
    d_z: float
    t: float
    p: float
    null: float = 0.0

    @property
    def interval(self) -> Estimate:
        return Estimate(self.mean, self.low, self.high, self.n)


def paired_test(
    a: dict[int, float], b: dict[int, float], null: float = 0.0, confidence: float = 0.95
) -> PairedTest:
    seeds = sorted(set(a) & set(b))
    first = np.array([a[s] for s in seeds], dtype=float)
    second = np.array([b[s] for s in seeds], dtype=float)
    diffs = first - second
    n = len(diffs)
    est = mean_ci(list(diffs), confidence)
    if n < 2:
        return PairedTest(
            n, est.mean, est.low, est.high, math.nan, math.nan, math.nan, math.nan, null
        )
    sd = float(np.std(diffs, ddof=1))
    shift = est.mean - null
    # Identical differences (an arm that equals its reference in every seed, bit for bit):
    # scipy's t is 0/0 or x/0 there, and its moment check warns about cancellation.
    if np.ptp(diffs) <= 1e-12 * max(1.0, float(np.max(np.abs(diffs)))):
        if abs(shift) <= 1e-12 * max(1.0, abs(null)):
            return PairedTest(n, est.mean, est.low, est.high, 0.0, 0.0, 0.0, 1.0, null)
        sign = math.copysign(math.inf, shift)
        exact = min(1.0, 2.0 ** (1 - n))
        return PairedTest(n, est.mean, est.low, est.high, 0.0, sign, sign, exact, null)
    result = scipy_stats.ttest_rel(first, second + null)
    # scipy's interval is of a - (b + null): shift it back to the difference a - b.
    ci = result.confidence_interval(confidence)
    return PairedTest(
        n,
        est.mean,
        float(ci.low) + null,
        float(ci.high) + null,
        sd,
        shift / sd,
        float(result.statistic),
        float(result.pvalue),
        null,
    )


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input's order (nan stays nan, not counted).

    Sorted ascending, the k-th smallest of m gets max over j <= k of min(1, (m - j + 1) p_(j)):
    rejecting where the adjusted p < alpha is Holm's procedure, which holds the family-wise
    error rate at alpha for any dependence between the tests.
    """
    values = [float(p) for p in pvalues]
    order = sorted((p, i) for i, p in enumerate(values) if not math.isnan(p))
    m = len(order)
    adjusted = [math.nan] * len(values)
    running = 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def paired_power(d_z: float, n: int, alpha: float = ALPHA) -> float:
    """Power of a two-sided paired t-test at level alpha with n pairs against effect d_z:
    the statistic follows a noncentral t with n - 1 degrees of freedom and noncentrality
    d_z * sqrt(n)."""
    if n < 2:
        return math.nan
    df, nc = n - 1, d_z * math.sqrt(n)
    critical = scipy_stats.t.ppf(1 - alpha / 2, df)
    # The lower tail P(T < -c | nc) is P(T > c | -nc): scipy's nct.cdf returns nan far out there.
    return float(scipy_stats.nct.sf(critical, df, nc) + scipy_stats.nct.sf(critical, df, -nc))


def detectable_effect(n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest d_z a two-sided paired t-test at level alpha with n pairs finds with the
    given power (nan below two pairs)."""
    if n < 2:
        return math.nan
    high = 1.0
    while paired_power(high, n, alpha) < power:
        high *= 2
        if high > 1e6:  # n = 2 at a tiny alpha: no effect size is reachable in practice
            return math.inf
    return float(optimize.brentq(lambda d: paired_power(d, n, alpha) - power, 0.0, high, xtol=1e-8))
