# ruff: noqa: S608 - SQL built from this module's constants and the callers' SQL expressions; values are bound
"""The accounting rule, once: how much the cumulative usage counters grew in a range.

A counter series is one process's running total for one combination of attributes; it only
grows. Over its points up to the range's end, a series used::

    max(value) - max(value before the range's start)        (0 before its first point)

Maxima are idempotent, so duplicated, overlapping or retried exports cannot change the result;
a restarted process is a new series from 0, so it adds. An interval of a time series is a range
of its own: its largest value minus the largest before it.

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


def history_rows(start: str, through: str, where: str = "1") -> str:
    """The rows that decide increases in a range from ``start`` to a condition on ``minute``
    (``through``), read cheaply: a series' whole days before the start's UTC day from the daily
    table, then its minutes from that midnight on. Column ``t`` is the row's time."""
    columns = "department, user, series_id, metric, app, model, token_type, currency, virtual, value_max"
    return f"""
        SELECT {columns}, toDateTime(day, 'UTC') AS t FROM {DAILY}
        WHERE day < toDate({start}, 'UTC') AND {where}
        UNION ALL
        SELECT {columns}, minute AS t FROM {MINUTELY}
        WHERE minute >= toStartOfDay({start}, 'UTC') AND {through} AND {where}"""


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
    names = [column.partition(" AS ")[2] or column for column in columns]
    return f"""
    SELECT * FROM (
        SELECT bucket, series_id, {", ".join(names)},
               value - lagInFrame(value, 1, 0) OVER (PARTITION BY series_id ORDER BY bucket
                                                     ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) AS used
        FROM (
            SELECT series_id, if(t < {start}, {_BEFORE}, {bucket}) AS bucket, {_carried(columns)},
                   max(value_max) AS value
            FROM ({rows})
            GROUP BY series_id, bucket
        )
    ) WHERE bucket != {_BEFORE}"""
