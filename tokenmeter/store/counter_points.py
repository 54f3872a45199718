"""What a point of tokenmeter's own counters may hold: one definition for the receiver and the SQL.

tokenmeter's counters (``tokenmeter.usage.tokens`` / ``.cost`` / ``.calls`` and
``tokenmeter.quota.decisions``) are cumulative running totals of whole numbers: tokens, calls,
or billionths of a currency unit. A point outside these bounds is not a usage figure but a
broken or forged export: one ``+Inf`` made every report of its period fail (``Inf`` cannot
become an integer) and a negative series subtracted from a department's usage.

- The value is finite, not negative, and at most 2**53: the largest integer a Float64 (the
  store's ``Value`` column) holds exactly. That is 9 million currency units per series of one
  process, or 9e15 tokens; sums over many series are taken as integers.
- The point's time lies in [2000-01-01, 2100-01-01): the accounting tables keep minutes as
  ``DateTime`` (up to 2106) and days as ``Date``; a time outside made rows on arbitrary days.

The receiver of ``tokenmeter serve`` refuses other points (``tokenmeter.collector.counter_guard``);
the accounting views keep them out of the accounting tables whatever wrote ``otel_metrics_sum``
(migration 0014: the production collector writes that table directly).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

from tokenmeter import semconv

MAX_COUNTER_VALUE: Final = 2**53
EARLIEST_POINT_TIME: Final = datetime(2000, 1, 1, tzinfo=UTC)
LATEST_POINT_TIME: Final = datetime(2100, 1, 1, tzinfo=UTC)  # exclusive
EARLIEST_POINT_NANOS: Final = int(EARLIEST_POINT_TIME.timestamp()) * 1_000_000_000
LATEST_POINT_NANOS: Final = int(LATEST_POINT_TIME.timestamp()) * 1_000_000_000

# The cumulative counters tokenmeter's instrumentation emits; points of these names are checked.
GUARDED_COUNTERS: Final = frozenset({
    semconv.METRIC_USAGE_TOKENS, semconv.METRIC_USAGE_COST, semconv.METRIC_USAGE_CALLS,
    semconv.METRIC_QUOTA_DECISIONS,
})  # fmt: skip


def sane_value_sql(value: str) -> str:
    """SQL: ``value`` (a Float64 expression) is a counter value tokenmeter accepts."""
    return f"(isFinite({value}) AND {value} >= 0 AND {value} <= {MAX_COUNTER_VALUE})"


def sane_point_sql(value: str, time: str) -> str:
    """SQL: a point with this ``value`` and ``time`` (a DateTime64 expression) is one tokenmeter accepts."""
    earliest = EARLIEST_POINT_TIME.strftime("%Y-%m-%d %H:%M:%S")
    latest = LATEST_POINT_TIME.strftime("%Y-%m-%d %H:%M:%S")
    return (
        f"({sane_value_sql(value)} AND {time} >= toDateTime64('{earliest}', 9, 'UTC')"
        f" AND {time} < toDateTime64('{latest}', 9, 'UTC'))"
    )
