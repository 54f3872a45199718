"""Dashboard usage panels over ranges that start in the middle of the data: series measured from their baseline.

The store gets three days of counter points through the real ingest path (rows into
otel_metrics_sum; the materialized views fill the minutely and daily tables): per user one
process that lives all three days and one new process per day, so a range that starts on day
2 or 3 cuts through series whose earlier values sit in whole days before it (the daily table)
and earlier the same day (the minutely table). Each panel's usage must equal the same
question answered from the raw points: per series, the last value in the range minus the last
value before it.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tokenmeter.dashboards.macros import TimeRange, bind
from tokenmeter.dashboards.panels import departments_and_users, overview
from tokenmeter.store import open_store
from tokenmeter.store.migrations import RenderOptions, migrate

DAY0 = datetime(2026, 10, 5, tzinfo=UTC)
USERS = 12

# Point n: (user, metric, step). Process "long" started on day 0 and reports every 17 minutes for
# three days; process "day-d" starts on day d and reports every 7 minutes for 10 hours. Values are
# cumulative per process.
_INSERT = """
INSERT INTO otel_metrics_sum (ResourceAttributes, ServiceName, MetricName, MetricUnit, Attributes,
                              StartTimeUnix, TimeUnix, Value, AggregationTemporality, IsMonotonic)
SELECT map('service.name', 'chatchat', 'service.instance.id', concat({process:String}, '-', toString(user))),
       'chatchat',
       ['tokenmeter.usage.tokens', 'tokenmeter.usage.calls'][metric + 1], '',
       map('enduser.id', concat('user-', toString(user)), 'tokenmeter.department', concat('dept-', toString(user % 3)),
           'gen_ai.request.model', ['qwen-max', 'deepseek-chat'][user % 2 + 1], 'tokenmeter.app', 'kb',
           'gen_ai.token.type', if(metric = 0, 'input', '')),
       toDateTime64({start:DateTime('UTC')}, 9, 'UTC'),
       toDateTime64({start:DateTime('UTC')} + step * {every:UInt32} * 60 + user * 13, 9, 'UTC'),
       toFloat64((step + 1) * (user + 1) * if(metric = 0, 37, 1)),
       2, true
FROM (SELECT number % {users:UInt32} AS user, intDiv(number, {users:UInt32}) % 2 AS metric,
             intDiv(number, {users:UInt32} * 2) AS step
      FROM numbers({users:UInt32} * 2 * {steps:UInt32}))
"""

_RAW_USAGE = """
SELECT Attributes['enduser.id'] AS user, Attributes['gen_ai.request.model'] AS model, MetricName,
       maxIf(Value, minute >= toDateTime({start:Int64}) AND minute <= toDateTime({end:Int64}))
       - maxIf(Value, minute < toDateTime({start:Int64})) AS used
FROM (SELECT *, toStartOfMinute(TimeUnix) AS minute FROM otel_metrics_sum)
GROUP BY ServiceName, ResourceAttributes, Attributes, StartTimeUnix, MetricName
HAVING countIf(minute >= toDateTime({start:Int64}) AND minute <= toDateTime({end:Int64})) > 0
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    path: Path = tmp_path_factory.mktemp("history") / "chdb"
    client = open_store(f"chdb://{path}")
    migrate(client, RenderOptions(raw_ttl_days=0))
    processes = [("long", DAY0, 17, 3 * 24 * 60 // 17)] + [
        (f"day-{day}", DAY0 + timedelta(days=day, hours=6), 7, 10 * 60 // 7) for day in range(3)
    ]
    for process, start, every, steps in processes:
        client.command(_INSERT, parameters={"users": USERS, "process": process, "every": every, "steps": steps,
                                            "start": start.strftime("%Y-%m-%d %H:%M:%S")})  # fmt: skip
    try:
        yield client
    finally:
        client.close()


def _raw(client: Any, span: TimeRange) -> list[tuple[str, str, str, float]]:
    return client.query(_RAW_USAGE, parameters={"start": span.from_s, "end": span.to_s}).result_rows


def _panel_rows(client: Any, sql: str, span: TimeRange, selection: dict[str, list[str]] | None = None
                ) -> list[tuple[Any, ...]]:  # fmt: skip
    bound, parameters = bind(sql, selection or {}, span)
    return client.query(bound, parameters=parameters).result_rows


RANGES = {
    "day 2 from mid-morning to day 3 noon": (timedelta(days=1, hours=9, minutes=30), timedelta(days=2, hours=12)),
    "day 2 from midnight": (timedelta(days=1), timedelta(days=2)),
    "an hour inside day 3": (timedelta(days=2, hours=7, minutes=3, seconds=20), timedelta(days=2, hours=8, seconds=5)),
    "everything": (timedelta(hours=-1), timedelta(days=4)),
    "before any data": (timedelta(days=-3), timedelta(days=-2)),
}


@pytest.mark.parametrize("name", sorted(RANGES))
def test_usage_panels_equal_the_raw_points(store: Any, name: str) -> None:
    start, end = RANGES[name]
    span = TimeRange.with_auto_interval(DAY0 + start, DAY0 + end)
    raw = _raw(store, span)
    tokens_by_user: dict[str, float] = {}
    calls_by_user: dict[str, float] = {}
    tokens_by_model: dict[str, float] = {}
    for user, model, metric, used in raw:
        if metric == "tokenmeter.usage.tokens":
            tokens_by_user[user] = tokens_by_user.get(user, 0) + used
            tokens_by_model[model] = tokens_by_model.get(model, 0) + used
        else:
            calls_by_user[user] = calls_by_user.get(user, 0) + used
    if name == "before any data":
        assert not raw
    else:
        assert len(tokens_by_user) == USERS and all(value > 0 for value in tokens_by_user.values())

    board = overview()
    top_users = _panel_rows(store, board.panel(4).sql, span)
    assert {user: tokens for user, _dept, tokens, _calls, _refused in top_users} == tokens_by_user
    assert {user: calls for user, _dept, _tokens, calls, _refused in top_users} == calls_by_user
    assert all(refused == 0 for *_, refused in top_users)  # no quota here: every call was sent
    per_user = _panel_rows(store, departments_and_users().panel(4).sql, span)
    assert {user: (calls, tokens) for user, _dept, calls, _refused, tokens, _per_call in per_user} == {
        user: (calls_by_user[user], tokens_by_user[user]) for user in tokens_by_user
    }

    by_model: dict[str, float] = {}
    for _time, model, tokens in _panel_rows(store, board.panel(1).sql, span):
        assert tokens >= 0
        by_model[model] = by_model.get(model, 0) + tokens
    assert by_model == tokens_by_model  # the per-interval increments add up to the same

    one = "user-5"
    filtered = _panel_rows(store, board.panel(4).sql, span, {"user": [one]})
    assert [(user, tokens) for user, _dept, tokens, _calls, _refused in filtered] == (
        [(one, tokens_by_user[one])] if one in tokens_by_user else []
    )


def test_per_minute_increments_follow_each_point(store: Any) -> None:
    """One long-lived series, an hour cut out of day 2: every bar is that minute's growth of the counter."""
    span = TimeRange(DAY0 + timedelta(days=1, hours=3), DAY0 + timedelta(days=1, hours=4), 60)
    sql = overview().panel(1).sql
    bars = _panel_rows(store, sql, span, {"user": ["user-0"]})
    points = store.query(
        "SELECT toStartOfMinute(TimeUnix) AS minute, Value FROM otel_metrics_sum "
        "WHERE Attributes['enduser.id'] = 'user-0' AND MetricName = 'tokenmeter.usage.tokens' "
        "AND ResourceAttributes['service.instance.id'] = 'long-0' ORDER BY TimeUnix"
    ).result_rows
    before = max(value for minute, value in points if _utc(minute) < span.start)
    expected = []
    for minute, value in points:
        if span.start <= _utc(minute) <= span.end:
            expected.append((_utc(minute), value - before))
            before = value
    assert len(expected) >= 3  # every 17 minutes
    assert [(_utc(time), tokens) for time, _model, tokens in bars] == expected


def test_hourly_bars_are_each_hours_growth(store: Any) -> None:
    """Hour-long intervals across day 2's morning, all of user-3's processes (the long one and day 2's)."""
    span = TimeRange(DAY0 + timedelta(days=1, hours=4, minutes=30), DAY0 + timedelta(days=1, hours=11), 3600)
    bars = {_utc(time): tokens for time, _model, tokens in
            _panel_rows(store, overview().panel(1).sql, span, {"user": ["user-3"]})}  # fmt: skip
    points = store.query(
        "SELECT ResourceAttributes['service.instance.id'], toStartOfMinute(TimeUnix), Value FROM otel_metrics_sum "
        "WHERE Attributes['enduser.id'] = 'user-3' AND MetricName = 'tokenmeter.usage.tokens' ORDER BY TimeUnix"
    ).result_rows
    expected: dict[datetime, float] = {}
    for process in {process for process, _minute, _value in points}:
        series = [(_utc(minute), value) for name, minute, value in points if name == process]
        before = max((value for minute, value in series if minute < span.start), default=0.0)
        for minute, value in series:  # in time order: each hour's last value minus the one before
            if span.start <= minute <= span.end:
                hour = minute.replace(minute=0)
                expected[hour] = expected.get(hour, 0.0) + value - before
                before = value
    assert len(expected) == 7 and len({process for process, _m, _v in points}) == 4  # 04:00 .. 10:00
    assert bars == expected


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
