# ruff: noqa: S608 - the SQL is this module's own constants; values are bound parameters
"""What `tokenmeter reprice` reads and writes: the calls of llm_usage, day by day, and the log of its runs.

llm_usage is a ``ReplacingMergeTree`` ordered by ``(toDate(time), user, time, trace_id, span_id)``: a row
inserted again with the same key replaces the older one (``FINAL`` reads see the newer one at once, merges
keep it). So a call's new cost is written by inserting its whole row again, every column as it was read but
the cost's. Two things make that exact:

- times travel as integer nanoseconds: a Python datetime keeps microseconds, and a row whose time was
  rounded would be a second call, not a replacement;
- each insert carries a deduplication token of its own: llm_usage deduplicates identical blocks (a retried
  span batch), and a reprice that puts back an earlier cost would otherwise be dropped as a repeat.

Rows are read in pages in key order (``PAGE_ROWS`` at a time), never a whole range at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import astuple, dataclass, fields
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

from tokenmeter.store.usage_queries import period_usage

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

PAGE_ROWS: Final = 5_000
LOG_TABLE: Final = "cost_reprices"
# The columns a reprice rewrites; every other column of a row is inserted again as read.
COST_COLUMNS: Final = ("cost", "currency", "virtual", "unpriced", "price_from", "price_tier")
_AS_NANOSECONDS: Final = {"DateTime64*": "int"}

_PAGE_SQL: Final = """
SELECT * FROM llm_usage FINAL
WHERE toDate(time) = {day:Date}
  AND ({first:Bool} OR (user, time, trace_id, span_id)
       > ({user:String}, fromUnixTimestamp64Nano({time_ns:Int64}, 'UTC'), {trace_id:String}, {span_id:String}))
ORDER BY user, time, trace_id, span_id
LIMIT {rows:UInt32}
"""

_DAYS_SQL: Final = """
SELECT toDate(time) AS day, count() FROM llm_usage FINAL
WHERE time >= {start:DateTime64(9, 'UTC')} AND time < {end:DateTime64(9, 'UTC')}
GROUP BY day ORDER BY day
"""

_MISSING_SQL: Final = """
SELECT
    (SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = {log:String}),
    (SELECT count() FROM system.columns WHERE database = currentDatabase() AND table = 'llm_usage'
                                          AND name IN ('price_from', 'price_tier', 'cache_read_input_tokens'))
"""


def days_with_calls(client: Client, first: date, last: date) -> list[tuple[date, int]]:
    """The UTC days from ``first`` to ``last`` (inclusive) that llm_usage has calls on, with how many."""
    start = datetime.combine(first, time.min, UTC)
    end = datetime.combine(last + timedelta(days=1), time.min, UTC)
    rows = client.query(_DAYS_SQL, parameters={"start": start, "end": end}).result_rows
    return [(day, int(count)) for day, count in rows]


def calls_of_day(client: Client, day: date, page_rows: int | None = None) -> Iterator[list[dict[str, Any]]]:
    """The day's rows of ``llm_usage FINAL`` (UTC day), a page (default ``PAGE_ROWS``) at a time in key order;
    ``time`` in nanoseconds."""
    page_rows = page_rows or PAGE_ROWS
    after: dict[str, Any] = {"first": True, "user": "", "time_ns": 0, "trace_id": "", "span_id": ""}
    while True:
        result = client.query(_PAGE_SQL, parameters={**after, "day": day, "rows": page_rows},
                              query_formats=_AS_NANOSECONDS)  # fmt: skip
        names = result.column_names
        page = [dict(zip(names, row, strict=True)) for row in result.result_rows]
        if not page:
            return
        yield page
        if len(page) < page_rows:
            return
        last = page[-1]
        after = {"first": False, "user": last["user"], "time_ns": last["time"], "trace_id": last["trace_id"],
                 "span_id": last["span_id"]}  # fmt: skip


def rewrite_calls(client: Client, rows: Sequence[Mapping[str, Any]], token: str) -> None:
    """Insert ``rows`` (whole rows as :func:`calls_of_day` read them, new cost columns) again: each replaces its
    older self. ``token`` must be unique per batch of rows (see the module doc)."""
    if not rows:
        return
    columns = list(rows[0])
    client.insert("llm_usage", [[row[name] for name in columns] for row in rows], column_names=columns,
                  settings={"insert_deduplication_token": token, "insert_distributed_sync": 1})  # fmt: skip


@dataclass(frozen=True)
class RepriceLogRow:
    """One row of ``cost_reprices`` (migration 0022): a run's day, model and currency whose calls it rewrote."""

    run_id: str
    at: datetime
    range_from: date
    range_to: date  # the last day, inclusive
    model_filter: str
    day: date
    model: str
    currency: str  # '' for calls without a price now
    virtual: bool
    calls: int
    rewritten: int
    became_priced: int
    became_unpriced: int
    old_cost: Decimal
    new_cost: Decimal
    catalog: str


def record_reprices(client: Client, rows: Sequence[RepriceLogRow]) -> None:
    """Add ``rows`` to the log of reprices."""
    if rows:
        names = [item.name for item in fields(RepriceLogRow)]
        client.insert(LOG_TABLE, [astuple(row) for row in rows], column_names=names,
                      settings={"insert_distributed_sync": 1})  # fmt: skip


def logged_reprices(client: Client, run_id: str | None = None) -> list[RepriceLogRow]:
    """The log's rows (of one run when ``run_id`` is given), oldest first."""
    names = [item.name for item in fields(RepriceLogRow)]
    result = client.query(
        f"SELECT {', '.join(names)} FROM {LOG_TABLE} WHERE {{run:String}} = '' OR run_id = {{run:String}} "
        "ORDER BY at, run_id, day, model, currency, virtual",
        parameters={"run": run_id or ""},
    )
    return [RepriceLogRow(**dict(zip(names, row, strict=True))) for row in result.result_rows]


def missing_schema(client: Client, *, writing: bool) -> str | None:
    """What a reprice needs that the store lacks (a migration not applied), or None; the log only for ``writing``."""
    [(log_tables, cost_columns)] = client.query(_MISSING_SQL, parameters={"log": LOG_TABLE}).result_rows
    if int(cost_columns) < 3:
        return "llm_usage has no token-type and price columns (migration 0020)"
    if writing and not int(log_tables):
        return f"the store has no {LOG_TABLE} table (migration 0022)"
    return None


def counted_calls(client: Client, first: date, last: date, model: Callable[[str], bool] | None = None) -> int:
    """The calls sent from ``first`` to ``last`` (UTC days, inclusive) by the usage counters, which see every call
    (sampled traces too); ``model`` narrows them by the counters' model name.

    The counters date a call by its export, llm_usage by its start: a few calls at the range's edges may differ.
    """
    start = datetime.combine(first, time.min, UTC)
    end = datetime.combine(last + timedelta(days=1), time.min, UTC)
    return sum(
        usage.calls for usage in period_usage(client, start, end, "model") if model is None or model(usage.subject)
    )
