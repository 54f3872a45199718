"""Exact period usage from the cumulative usage counters (the rule: :mod:`tokenmeter.store.counter_increase`).

Usage is bucketed by export time: a call made in the last export interval before ``start`` but exported
after it counts in the new period (docs/storage.md states the bound).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Final, Literal

from tokenmeter import semconv
from tokenmeter.store.counter_increase import DAILY, MINUTELY, series_increases, table_rows

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

Dimension = Literal["user", "department", "app", "model"]

# Columns of usage_counter_minutely a report may group by. Only these names are ever
# placed into SQL text; everything the caller gives is a bound parameter.
_DIMENSION_COLUMNS: Final[dict[str, str]] = {"user": "user", "department": "department", "app": "app", "model": "model"}

_PERIOD_SQL: Final = """
SELECT subject, metric, token_type, currency, virtual, unpriced, refused, toInt64(sum(used)) AS used
FROM ({increases})
GROUP BY subject, metric, token_type, currency, virtual, unpriced, refused
ORDER BY subject
"""
# Calls of unpriced models carry tokenmeter.cost.unpriced on their series; only reports
# need that (a lookup in usage_counter_series), the enforcer's hot path does not.
_UNPRICED_SERIES: Final = "series_id IN (SELECT series_id FROM usage_counter_series WHERE unpriced)"
# Calls a quota refused were never sent: the quota gate raises its error before the request
# (deny, degrade of a chat call, and "unavailable" when the deployment fails closed), and the
# call's counters carry the error's class name as error.type (instrumentation/metering.py).
# usage_counter_series keeps error.type per series (the aggregate tables do not), so a calls
# series is a refused one when its series_id is there with one of these names; tests check
# that they are the names of the errors the gate raises. Written without ", ": the panels
# pass it as one of a comma-separated list of columns.
REFUSED_ERROR_TYPES: Final = ("QuotaExceeded", "QuotaDegraded", "QuotaUnavailable")
REFUSED_SERIES: Final = (
    "series_id GLOBAL IN (SELECT series_id FROM usage_counter_series WHERE error_type IN ("  # noqa: S608 - constants
    + ",".join(f"'{name}'" for name in REFUSED_ERROR_TYPES)
    + "))"
)
# A call that ran (llm_usage): a refused call has a span and a row, but no model answered it.
CALL_RAN: Final = "error_type NOT IN (" + ",".join(f"'{name}'" for name in REFUSED_ERROR_TYPES) + ")"


@dataclass(frozen=True)
class CostAmount:
    currency: str
    virtual: bool
    amount: Decimal


@dataclass
class PeriodUsage:
    """One subject's usage in a period. Costs are per (currency, virtual) pair."""

    subject: str
    input_tokens: int = 0
    output_tokens: int = 0
    calls: int = 0  # calls sent to a model (answered or failed there)
    refused_calls: int = 0  # calls a quota refused before the request: never sent
    costs: list[CostAmount] = field(default_factory=list)
    unpriced_calls: int = 0  # sent calls of models without a price (0 unless asked for)


def _midnight(value: datetime) -> datetime:
    return value.replace(hour=0, minute=0, second=0, microsecond=0)


def _minute_utc(value: datetime, name: str) -> datetime:
    if value.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware (e.g. datetime(..., tzinfo=UTC))")
    value = value.astimezone(UTC)
    if value.second or value.microsecond:
        raise ValueError(f"{name} must fall on a whole minute (usage is kept per minute), got {value.isoformat()}")
    return value


def period_usage(
    client: Client,
    start: datetime,
    end: datetime,
    by: Dimension,
    subject: str | None = None,
    *,
    with_unpriced: bool = False,
) -> list[PeriodUsage]:
    """Usage per ``by`` value in ``[start, end)``, optionally for one subject only.

    ``start`` and ``end`` are timezone-aware and on whole minutes. ``with_unpriced`` also
    counts the calls of unpriced models (``unpriced_calls``). Calls a quota refused are counted
    apart from the calls sent (``refused_calls``, ``calls``).
    """
    column = _DIMENSION_COLUMNS.get(by)
    if column is None:
        raise ValueError(f"by must be one of {sorted(_DIMENSION_COLUMNS)}, got {by!r}")
    start, end = _minute_utc(start, "start"), _minute_utc(end, "end")
    if end <= start:
        raise ValueError(f"end ({end.isoformat()}) must be after start ({start.isoformat()})")
    parameters: dict[str, object] = {
        "start": start.strftime("%Y-%m-%d %H:%M:%S"),
        "end": end.strftime("%Y-%m-%d %H:%M:%S"),
    }
    condition = "1"
    if subject is not None:
        condition = f"{column} = {{subject:String}}"
        parameters["subject"] = subject
    # Periods from midnight to midnight (days, weeks, months) read the day-level table:
    # the same rule with one row per series and day. Its key leads with department; a
    # user's question stays on the minutely table, whose key leads with user.
    daily = by != "user" and start == _midnight(start) and end == _midnight(end)
    table, bound = (DAILY, "Date") if daily else (MINUTELY, "DateTime('UTC')")
    if daily:
        parameters["start"], parameters["end"] = start.strftime("%Y-%m-%d"), end.strftime("%Y-%m-%d")
    until, since = f"{{end:{bound}}}", f"{{start:{bound}}}"
    unpriced = _UNPRICED_SERIES if with_unpriced else "false"
    increases = series_increases(table_rows(table, until, condition), since, (
        f"{column} AS subject", "metric", "token_type", "currency", "virtual", f"{unpriced} AS unpriced",
        f"{REFUSED_SERIES} AS refused"))  # fmt: skip
    return _collect(client.query(_PERIOD_SQL.format(increases=increases), parameters=parameters).result_rows)


def _collect(rows: list[tuple[object, ...]] | list[list[object]]) -> list[PeriodUsage]:
    usage: dict[str, PeriodUsage] = {}
    costs: dict[str, dict[tuple[str, bool], int]] = defaultdict(lambda: defaultdict(int))
    for subject, metric, token_type, currency, virtual, unpriced, refused, used in rows:
        entry = usage.setdefault(str(subject), PeriodUsage(subject=str(subject)))
        amount = int(used)  # type: ignore[call-overload]
        if metric == semconv.METRIC_USAGE_CALLS and refused:
            entry.refused_calls += amount
            continue
        if metric == semconv.METRIC_USAGE_CALLS and unpriced:
            entry.unpriced_calls += amount
        if metric == semconv.METRIC_USAGE_TOKENS and token_type == semconv.TOKEN_TYPE_INPUT:
            entry.input_tokens += amount
        elif metric == semconv.METRIC_USAGE_TOKENS and token_type == semconv.TOKEN_TYPE_OUTPUT:
            entry.output_tokens += amount
        elif metric == semconv.METRIC_USAGE_CALLS:
            entry.calls += amount
        elif metric == semconv.METRIC_USAGE_COST:
            costs[entry.subject][(str(currency), bool(virtual))] += amount
    for subject, by_currency in costs.items():
        usage[subject].costs = [
            CostAmount(currency, virtual, Decimal(nanos) / semconv.COST_UNITS_PER_CURRENCY_UNIT)
            for (currency, virtual), nanos in sorted(by_currency.items())
        ]
    return list(usage.values())
