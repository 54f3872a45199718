# ruff: noqa: S608 - SQL built from this module's constants and the callers' SQL expressions; values are bound
"""The accounting rule, once: how much the cumulative usage counters grew in a range.

A counter series is one process's running total for one combination of attributes; it only
grows. Over its points up to the range's end, a series used::

    max(value) - max(value before the range's start)        (0 before its first point)

Maxima are idempotent, so duplicated, overlapping or retried exports cannot change the result;
a restarted process is a new series from 0, so it adds. An interval of a time series is a range
of its own: its largest value minus the largest before it.

Two shapes of the same rule: over a series' rows up to the end (:func:`increase`,
:func:`series_increases`, :func:`interval_increases`: reports, the enforcer, the apps' raw
decision counters), and, for ranges that start anywhere in a long history (the dashboards),
the range's maxima joined to each series' :func:`baselines` (:func:`range_increases`,
:func:`range_interval_increases`), so a day's panel never groups a month of rows.

Every reader builds its SQL from these helpers: the store's reports
(:mod:`tokenmeter.store.usage_queries`), the enforcer's snapshot, the dashboards and the alert
rules. Bounds, buckets and filters are the caller's SQL expressions: bound parameters such as
``{start:DateTime('UTC')}``, or Grafana's macros (``$__fromTime``). Values never enter the text.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from tokenmeter.semconv import METRIC_USAGE_CALLS, METRIC_USAGE_COST, METRIC_USAGE_TOKENS
from tokenmeter.store.counter_points import sane_value_sql

MINUTELY: Final = "usage_counter_minutely"  # one row per series and minute (time column ``minute``)
DAILY: Final = "usage_counter_daily"  # one row per series and UTC day (time column ``day``)
USAGE_METRICS: Final = (METRIC_USAGE_TOKENS, METRIC_USAGE_COST, METRIC_USAGE_CALLS)
_BEFORE: Final = "toDateTime(0, 'UTC')"  # the bucket of a series' points before a range (counters date from 2000 on)


def increase(start: str, time: str = "t", value: str = "value_max") -> str:
    """The rule as one aggregate over a series' points up to the range's end (``GROUP BY series_id``)."""
    return f"max({value}) - maxIf({value}, {time} < {start})"


def metric_list(metrics: str | Iterable[str]) -> str:
    """Metric names as a SQL list (they are tokenmeter's own constants, never user input)."""
    names = (metrics,) if isinstance(metrics, str) else tuple(metrics)
    unknown = [name for name in names if name not in USAGE_METRICS]
    if unknown:
        raise ValueError(f"not a usage counter: {unknown}; the counter tables hold {list(USAGE_METRICS)}")
    return ", ".join(f"'{name}'" for name in names)


def table_rows(table: str, until: str, where: str = "1") -> str:
    """One counter table's rows before ``until`` (exclusive), its time column as ``t``."""
    time = "day" if table == DAILY else "minute"
    return f"SELECT *, {time} AS t FROM {table} WHERE {time} < {until} AND {where}"


def baselines(start: str, where: str = "1") -> str:
    """Per series: its largest value before ``start`` (the "max before start" of the rule), read without the
    whole history of minutes: whole days from the daily table, then the first day's minutes."""
    return f"""
    SELECT series_id, max(value) AS baseline FROM (
        SELECT series_id, max(value_max) AS value FROM {DAILY}
        WHERE day < toDate({start}, 'UTC') AND {where}
        GROUP BY series_id
        UNION ALL
        SELECT series_id, max(value_max) AS value FROM {MINUTELY}
        WHERE minute >= toStartOfDay({start}, 'UTC') AND minute < {start} AND {where}
        GROUP BY series_id
    ) GROUP BY series_id"""


def _range_maxima(in_range: str, where: str, columns: Iterable[str], bucket: str | None) -> str:
    """Per series (and ``bucket``) with minutes in the range: its largest value as ``value``, with ``columns``."""
    per = f", {bucket} AS bucket" if bucket else ""
    return f"""
        SELECT series_id{per}, {_carried(columns)}, max(value_max) AS value
        FROM (SELECT * FROM {MINUTELY} WHERE {in_range} AND {where})
        GROUP BY series_id{", bucket" if bucket else ""}"""


def range_increases(start: str, in_range: str, columns: Iterable[str], where: str = "1") -> str:
    """Per series with minutes in the range (``in_range``, a condition on ``minute`` from ``start``): the rule
    as its largest value in the range minus its baseline, as ``used``, with ``columns``. The range's rows and
    the history are grouped apart and joined, so a short range never groups the whole history."""
    columns = tuple(columns)
    return f"""
    SELECT series_id, {", ".join(_names(columns))}, value - baseline AS used
    FROM ({_range_maxima(in_range, where, columns, None)}) AS totals
    LEFT JOIN ({baselines(start, where)}) AS before USING (series_id)"""


def range_interval_increases(start: str, in_range: str, bucket: str, columns: Iterable[str], where: str = "1") -> str:
    """As :func:`range_increases`, per interval (``bucket``, an expression of ``minute``): the interval's largest
    value minus the largest before it (the series' previous interval, or its baseline for its first)."""
    columns = tuple(columns)
    return f"""
    SELECT bucket, series_id, {", ".join(_names(columns))},
           value - greatest(lagInFrame(value, 1, 0) OVER (PARTITION BY series_id ORDER BY bucket
                                                          ROWS BETWEEN 1 PRECEDING AND CURRENT ROW),
                            baseline) AS used
    FROM ({_range_maxima(in_range, where, columns, bucket)}) AS points
    LEFT JOIN ({baselines(start, where)}) AS before USING (series_id)"""


# One exporting process's series of a counter in otel_metrics_sum (the tables above hash the same identity).
RAW_SERIES: Final = "cityHash64(ServiceName, ResourceAttributes, Attributes, StartTimeUnix)"


def raw_rows(metric: str, columns: Iterable[str], where: str, time: str = "TimeUnix") -> str:
    """A counter without a table of its own (the apps' quota decisions), straight from ``otel_metrics_sum``,
    shaped like the tables' rows (``series_id``, ``t`` = ``time``, ``value_max``) with ``columns``. Points no
    counter can hold (``Inf``, negative, beyond 2**53) are skipped, as the accounting views skip them."""
    return f"""
        SELECT {RAW_SERIES} AS series_id, {time} AS t, Value AS value_max, {", ".join(columns)}
        FROM otel_metrics_sum
        WHERE MetricName = '{metric}' AND {sane_value_sql("Value")} AND {where}"""


def _carried(columns: Iterable[str]) -> str:
    """``any()`` of columns that depend on the series alone; ``expression AS name`` renames."""
    carried = []
    for column in columns:
        expression, _, name = column.partition(" AS ")
        carried.append(f"any({expression}) AS {name or expression}")
    return ", ".join(carried)


def _names(columns: Iterable[str]) -> list[str]:
    return [column.partition(" AS ")[2] or column for column in columns]


def series_increases(rows: str, start: str, columns: Iterable[str], having: str = "used != 0") -> str:
    """Per series of ``rows`` (a query with ``t``): its increase from ``start`` as ``used``, with ``columns``."""
    return f"""
    SELECT series_id, {_carried(columns)}, {increase(start)} AS used
    FROM ({rows})
    GROUP BY series_id
    HAVING {having}"""


def interval_increases(rows: str, start: str, bucket: str, columns: Iterable[str]) -> str:
    """Per (series, interval from ``start`` on): the increase in the interval as ``used``, its start as
    ``bucket``, with ``columns``. Rows before ``start`` form one bucket ahead of the others, so each
    interval's increase is its largest value minus the largest before it (0 for a new series)."""
    columns = tuple(columns)
    return f"""
    SELECT * FROM (
        SELECT bucket, series_id, {", ".join(_names(columns))},
               value - lagInFrame(value, 1, 0) OVER (PARTITION BY series_id ORDER BY bucket
                                                     ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) AS used
        FROM (
            SELECT series_id, if(t < {start}, {_BEFORE}, {bucket}) AS bucket, {_carried(columns)},
                   max(value_max) AS value
            FROM ({rows})
            GROUP BY series_id, bucket
        )
    ) WHERE bucket != {_BEFORE}"""
