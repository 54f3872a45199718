"""The comparison's statistics against known values: t quantiles from the tables, intervals computed by hand."""

from __future__ import annotations

import math

import pytest

from tokenmeter.comparison.statistics import (
    SampleSummary,
    mean_interval,
    regularized_incomplete_beta,
    t_cdf,
    t_quantile,
    welch_interval,
)

SCORES = [70.0, 80.0, 90.0, 60.0, 100.0]


@pytest.mark.parametrize(
    ("df", "table_value"),
    [(1, 12.706), (2, 4.303), (4, 2.776), (10, 2.228), (30, 2.042), (120, 1.980), (1e6, 1.960), (1e9, 1.960)],
)
def test_the_975_quantile_of_t_matches_the_tables(df: float, table_value: float) -> None:
    assert round(t_quantile(0.975, df), 3) == table_value


def test_t_quantiles_are_symmetric_and_invert_the_cdf() -> None:
    assert t_quantile(0.025, 4) == -t_quantile(0.975, 4)
    assert t_quantile(0.5, 7) == 0.0
    assert round(t_quantile(0.995, 9), 3) == 3.250  # the 99 % table
    assert round(t_quantile(0.9995, 1), 2) == 636.62
    for df in (1.0, 3.5, 6.248, 40.0):
        assert t_cdf(t_quantile(0.975, df), df) == pytest.approx(0.975, abs=1e-12)
    assert t_cdf(0.0, 5) == 0.5


def test_the_incomplete_beta_function_at_closed_forms() -> None:
    assert regularized_incomplete_beta(1, 1, 0.3) == pytest.approx(0.3, abs=1e-14)  # uniform
    assert regularized_incomplete_beta(2.5, 1, 0.4) == pytest.approx(0.4**2.5, abs=1e-14)  # I_x(a, 1) = x^a
    assert regularized_incomplete_beta(7, 7, 0.5) == pytest.approx(0.5, abs=1e-14)  # symmetric
    assert (regularized_incomplete_beta(3, 4, 0), regularized_incomplete_beta(3, 4, 1)) == (0.0, 1.0)


def test_a_fixed_sample_and_its_interval_by_hand() -> None:
    # scores 70 80 90 60 100: mean 80; squared deviations 100 0 100 400 400 = 1000; s^2 = 1000/4 = 250,
    # s = 15.8114; t(0.975, 4) = 2.7764; half-width = 2.7764 * 15.8114 / sqrt(5) = 19.632
    sample = SampleSummary.of(SCORES)
    assert (sample.count, sample.mean, sample.variance) == (5, 80.0, 250.0)
    assert round(sample.standard_deviation, 3) == 15.811

    interval = mean_interval(sample)

    assert interval is not None
    assert (interval.estimate, interval.df) == (80.0, 4.0)
    assert round(interval.half_width, 2) == 19.63
    assert (round(interval.low, 2), round(interval.high, 2)) == (60.37, 99.63)


def test_the_sufficient_statistics_give_the_same_sample() -> None:
    from_sums = SampleSummary.from_sums(5, sum(SCORES), sum(v * v for v in SCORES))
    assert from_sums == SampleSummary.of(SCORES)
    assert SampleSummary.from_sums(3, 240.0, 3 * 80.0**2).variance == 0.0  # all equal: never below 0
    assert math.isnan(SampleSummary.from_sums(0, 0.0, 0.0).mean)


def test_the_welch_interval_by_hand() -> None:
    # A = 70 80 90 60 100 (mean 80, s^2 250); B = 60 65 70 75 80 85 (mean 72.5; squared deviations
    # 156.25 56.25 6.25 6.25 56.25 156.25 = 437.5; s^2 = 87.5). d = 72.5 - 80 = -7.5.
    # se^2 = 250/5 + 87.5/6 = 50 + 14.5833 = 64.5833, se = 8.0364
    # df = 64.5833^2 / (50^2/4 + 14.5833^2/5) = 4171.01 / (625 + 42.535) = 6.2484
    # t(0.975, 6.2484) = 2.4235; half-width = 2.4235 * 8.0364 = 19.476 -> [-26.98, 11.98]
    first, second = SampleSummary.of(SCORES), SampleSummary.of([60.0, 65.0, 70.0, 75.0, 80.0, 85.0])

    interval = welch_interval(first, second)

    assert interval is not None
    assert interval.estimate == -7.5
    assert round(interval.df, 4) == 6.2484
    assert round(t_quantile(0.975, interval.df), 4) == 2.4235
    assert (round(interval.low, 2), round(interval.high, 2)) == (-26.98, 11.98)


def test_no_interval_below_two_values_and_none_needed_without_spread() -> None:
    assert mean_interval(SampleSummary.of([90.0])) is None
    assert welch_interval(SampleSummary.of([90.0]), SampleSummary.of(SCORES)) is None
    flat = welch_interval(SampleSummary.of([80.0, 80.0]), SampleSummary.of([70.0, 70.0, 70.0]))
    assert flat is not None and (flat.estimate, flat.low, flat.high) == (-10.0, -10.0, -10.0)


@pytest.mark.parametrize(("probability", "df"), [(0.0, 3), (1.0, 3), (0.9, 0), (0.9, -1)])
def test_quantiles_outside_their_domain_are_refused(probability: float, df: float) -> None:
    with pytest.raises(ValueError, match=r"probability|degrees of freedom"):
        t_quantile(probability, df)
