"""The Prometheus text pieces: label escaping and histogram lines."""

from __future__ import annotations

from tokenmeter.server.prometheus_text import Histogram, label_value


def test_label_values_escape_what_would_end_or_break_the_label() -> None:
    assert label_value('o"brien\\x\nnext') == 'o\\"brien\\\\x\\nnext'
    assert label_value("研发部") == "研发部"


def test_histogram_lines_are_cumulative_with_sum_and_count() -> None:
    histogram = Histogram("t_seconds", (0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 7.0):
        histogram.observe(value)
    assert histogram.lines() == [
        't_seconds_bucket{le="0.1"} 2',
        't_seconds_bucket{le="1.0"} 3',
        't_seconds_bucket{le="+Inf"} 4',
        "t_seconds_sum 7.65",
        "t_seconds_count 4",
    ]
