"""Means, their 95 % confidence intervals, and the Welch interval of a difference of two means.

Everything starts from sufficient statistics (count, mean, sample variance), which the store can
aggregate without sending the ratings themselves: a :class:`SampleSummary` is built from a count, a sum
and a sum of squares. The Student t quantile is computed here, exactly to float precision, from the
regularized incomplete beta function (a continued fraction, Numerical Recipes' ``betacf``) and
bisection on the t distribution's CDF: scipy is not a dependency.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Final

CONFIDENCE: Final = 0.95
# Above this many degrees of freedom t equals the normal quantile to better than 1e-6.
_NORMAL_BEYOND_DF: Final = 1e7
_BETA_ITERATIONS: Final = 20_000
_BETA_EPSILON: Final = 1e-15
_TINY: Final = 1e-300
_BISECTIONS: Final = 200


@dataclass(frozen=True)
class SampleSummary:
    """A sample as count, mean and sample variance (divisor n - 1; 0 below two values)."""

    count: int
    mean: float
    variance: float

    @classmethod
    def from_sums(cls, count: int, total: float, total_of_squares: float) -> SampleSummary:
        """From n, the sum and the sum of squares (as the store aggregates them)."""
        if count < 0:
            raise ValueError(f"count must not be negative, got {count}")
        if count == 0:
            return cls(0, math.nan, 0.0)
        mean = total / count
        if count == 1:
            return cls(1, mean, 0.0)
        # Sum of squared deviations; rounding can push an all-equal sample a hair below 0.
        squares = max(0.0, total_of_squares - count * mean * mean)
        return cls(count, mean, squares / (count - 1))

    @classmethod
    def of(cls, values: list[float]) -> SampleSummary:
        """From the values themselves (two-pass, for tests and small samples)."""
        count = len(values)
        if count == 0:
            return cls(0, math.nan, 0.0)
        mean = math.fsum(values) / count
        variance = math.fsum((v - mean) ** 2 for v in values) / (count - 1) if count > 1 else 0.0
        return cls(count, mean, variance)

    @property
    def standard_deviation(self) -> float:
        return math.sqrt(self.variance)


@dataclass(frozen=True)
class Interval:
    """``estimate`` with its confidence interval ``[low, high]`` at ``confidence``, on ``df`` degrees of freedom."""

    estimate: float
    low: float
    high: float
    df: float
    confidence: float = CONFIDENCE

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def mean_interval(sample: SampleSummary, confidence: float = CONFIDENCE) -> Interval | None:
    """The mean with its Student t interval (n - 1 degrees of freedom); None below two values."""
    if sample.count < 2:
        return None
    df = float(sample.count - 1)
    half = t_quantile(_upper_tail_point(confidence), df) * math.sqrt(sample.variance / sample.count)
    return Interval(sample.mean, sample.mean - half, sample.mean + half, df, confidence)


def welch_interval(first: SampleSummary, second: SampleSummary, confidence: float = CONFIDENCE) -> Interval | None:
    """``second.mean - first.mean`` with Welch's interval (Welch-Satterthwaite degrees of freedom).

    None when either sample has fewer than two values. Two samples without spread give a zero-width
    interval (every value equal on both sides: the difference is known).
    """
    if first.count < 2 or second.count < 2:
        return None
    difference = second.mean - first.mean
    share_first, share_second = first.variance / first.count, second.variance / second.count
    squared_error = share_first + share_second
    if squared_error == 0:
        return Interval(difference, difference, difference, float(first.count + second.count - 2), confidence)
    df = squared_error**2 / (share_first**2 / (first.count - 1) + share_second**2 / (second.count - 1))
    half = t_quantile(_upper_tail_point(confidence), df) * math.sqrt(squared_error)
    return Interval(difference, difference - half, difference + half, df, confidence)


def _upper_tail_point(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    return (1 + confidence) / 2


def t_quantile(probability: float, df: float) -> float:
    """The ``probability`` quantile of Student's t with ``df`` (> 0, not necessarily whole) degrees of freedom."""
    if not 0 < probability < 1:
        raise ValueError(f"probability must be between 0 and 1, got {probability}")
    if not df > 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    if probability < 0.5:
        return -t_quantile(1 - probability, df)
    if probability == 0.5:
        return 0.0
    if df > _NORMAL_BEYOND_DF:
        return NormalDist().inv_cdf(probability)
    high = 1.0
    while t_cdf(high, df) < probability:
        high *= 2
    low = 0.0
    for _ in range(_BISECTIONS):  # the CDF is increasing: halve [low, high] until it is as narrow as a float allows
        middle = (low + high) / 2
        if middle in (low, high):
            break
        if t_cdf(middle, df) < probability:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * regularized_incomplete_beta(df / 2, 0.5, df / (df + t * t))
    return 1 - tail if t > 0 else tail


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), by the continued fraction on whichever side converges fast."""
    if not 0 <= x <= 1:
        raise ValueError(f"x must be in [0, 1], got {x}")
    if x in (0, 1):
        return float(x)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(log_front)
    if x < (a + 1) / (a + b + 2):
        return front * _beta_continued_fraction(a, b, x) / a
    return 1 - front * _beta_continued_fraction(b, a, 1 - x) / b


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b) by the modified Lentz method."""
    c, d = 1.0, 1 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > _TINY else _TINY)
    fraction = d
    for m in range(1, _BETA_ITERATIONS + 1):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1 + numerator * d
            d = 1 / (d if abs(d) > _TINY else _TINY)
            c = 1 + numerator / c
            c = c if abs(c) > _TINY else _TINY
            fraction *= c * d
        if abs(c * d - 1) < _BETA_EPSILON:
            return fraction
    raise ArithmeticError(f"the incomplete beta fraction did not converge for a={a}, b={b}, x={x}")
