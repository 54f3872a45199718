"""What usage cost, per subject, for the wallets that pay for it: over a range, or per local day.

The costs are the usage counters' (the exact rule of :mod:`tokenmeter.store.counter_increase`), per
currency and real/virtual, so a wallet converts each at its own rate. Days are local days in the
policy's time zone: a wallet is charged once per day that closed there.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Final

from tokenmeter import semconv
from tokenmeter.store.counter_increase import MINUTELY, interval_increases, metric_list, series_increases, table_rows

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

# Only these column names are ever placed into SQL text.
SCOPE_COLUMNS: Final[dict[str, str]] = {"organisation": "''", "department": "department", "user": "user", "app": "app"}
_COLUMNS: Final = ("currency AS currency_name", "virtual AS virtual_cost")
_ROWS_WHERE: Final = f"metric = {metric_list(semconv.METRIC_USAGE_COST)}"
_RANGE_SQL: Final = """
SELECT subject, '' AS day, currency_name, virtual_cost, toInt64(sum(used)) AS used
FROM ({increases})
GROUP BY subject, currency_name, virtual_cost
"""
_DAILY_SQL: Final = """
SELECT subject, formatDateTime(bucket, '%F', {{zone:String}}) AS day, currency_name, virtual_cost,
       toInt64(sum(used)) AS used
FROM ({increases})
GROUP BY subject, day, currency_name, virtual_cost
"""


@dataclass(frozen=True, slots=True)
class SubjectCost:
    """What one subject's usage cost in one currency (real or virtual), in the range or on one day."""

    subject: str
    day: date | None  # the local day (daily reads), None for a range
    currency: str
    virtual: bool
    amount: Decimal


def costs_in_range(client: Client, scope: str, start: datetime, end: datetime) -> list[SubjectCost]:
    """Per subject of ``scope``: the cost of its usage in ``[start, end)`` (whole minutes, aware)."""
    column = SCOPE_COLUMNS[scope]
    rows = table_rows(MINUTELY, "{end:DateTime('UTC')}", _ROWS_WHERE)
    increases = series_increases(rows, "{start:DateTime('UTC')}", (f"{column} AS subject", *_COLUMNS))
    return _query(client, _RANGE_SQL.format(increases=increases), {"start": _utc(start), "end": _utc(end)})


def costs_per_day(client: Client, scope: str, start: datetime, end: datetime, zone: str) -> list[SubjectCost]:
    """Per subject of ``scope`` and local day in ``zone`` (an IANA name): the cost of its usage, for the days
    in ``[start, end)`` (local midnights)."""
    column = SCOPE_COLUMNS[scope]
    rows = table_rows(MINUTELY, "{end:DateTime('UTC')}", _ROWS_WHERE)
    increases = interval_increases(rows, "{start:DateTime('UTC')}", "toStartOfDay(t, {zone:String})",
                                   (f"{column} AS subject", *_COLUMNS))  # fmt: skip
    parameters = {"start": _utc(start), "end": _utc(end), "zone": zone}
    return _query(client, _DAILY_SQL.format(increases=increases), parameters)


def _query(client: Client, sql: str, parameters: dict[str, object]) -> list[SubjectCost]:
    costs = []
    for subject, day, currency, virtual, used in client.query(sql, parameters=parameters).result_rows:
        if not used:
            continue
        amount = Decimal(int(used)) / semconv.COST_UNITS_PER_CURRENCY_UNIT
        costs.append(SubjectCost(str(subject), date.fromisoformat(day) if day else None, str(currency),
                                 bool(virtual), amount))  # fmt: skip
    return costs


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
