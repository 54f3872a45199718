"""Poisoned counter points that reach the store anyway: every reader keeps working, totals stay right.

The production collector writes ``otel_metrics_sum`` directly, without serve's guard, and stores
made before migration 0014 may already hold poisoned rows. Points go in here through the ingest
SQL path without the guard (what any writer of ``otel_metrics_sum`` can do).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from grafana_macros import TimeRange, expand
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from otlp_requests import now_ns, usage_counter_request

from tokenmeter import semconv
from tokenmeter.collector.ingest_queue import IngestSchema, insert_payloads
from tokenmeter.collector.payloads import Signal, decode_protobuf
from tokenmeter.enforcer.policy import parse_policy
from tokenmeter.enforcer.snapshot import read_snapshot
from tokenmeter.store import open_store
from tokenmeter.store.counter_points import MAX_COUNTER_VALUE
from tokenmeter.store.migrations import RenderOptions, load_migrations, migrate
from tokenmeter.store.usage_queries import period_usage

ROOT = Path(__file__).resolve().parents[1]
NOW = now_ns()
START = NOW - 3600 * 10**9
POLICY = parse_policy("budgets:\n  - {name: per-user, scope: user, period: day, limit: {tokens: 100000}}\n")
POISON: list[float | int] = [math.inf, -math.inf, math.nan, -4000, 2**63 - 1, 1e300]


def _send(client: Any, request: ExportMetricsServiceRequest) -> None:
    payload = decode_protobuf(Signal.METRICS, request.SerializeToString())  # no guard: the store's own defence
    insert_payloads(client, Signal.METRICS, [payload], IngestSchema.for_store(embedded=True))


def _poisoned(user: str, value: float | int, instance: str, time_ns: int = NOW) -> ExportMetricsServiceRequest:
    request = usage_counter_request(user, [(time_ns, 1)], START, instance=instance)
    data_point = request.resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points[0]
    data_point.ClearField("as_int")
    if isinstance(value, float):
        data_point.as_double = value
    else:
        data_point.as_int = value
    return request


def _day() -> tuple[datetime, datetime]:
    start = datetime.fromtimestamp(NOW / 1e9, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return start, start + timedelta(days=1)


def _totals(client: Any) -> dict[str, int]:
    return {usage.subject: usage.input_tokens for usage in period_usage(client, *_day(), by="user")}


def _minute_totals(client: Any) -> dict[str, int]:
    start, _ = _day()  # a range on whole minutes but not on days: the minutely table
    usage = period_usage(client, start + timedelta(minutes=1), start + timedelta(days=1, minutes=1), by="user")
    return {row.subject: row.input_tokens for row in usage}


def _fill(client: Any) -> None:
    # Valid usage: alice 3,000 (her series' minute also gets a +Inf point), bob 500.
    _send(client, usage_counter_request("alice", [(NOW - 2 * 10**9, 3000)], START))
    _send(client, usage_counter_request("bob", [(NOW - 2 * 10**9, 500)], START, instance="bob-app"))
    _send(client, _poisoned("alice", math.inf, "instance-1", NOW - 10**9))
    for index, value in enumerate(POISON):
        _send(client, _poisoned(f"victim-{index}", value, f"evil-{index}"))
        # the apps' quota decisions, read raw by the pipeline panels and the failing-open alert
        decisions = _poisoned(f"victim-{index}", value, f"evil-{index}")
        decisions.resource_metrics[0].scope_metrics[0].metrics[0].name = semconv.METRIC_QUOTA_DECISIONS
        _send(client, decisions)


@pytest.fixture
def poisoned_before_0014(tmp_path: Path) -> Iterator[Any]:
    """A store migrated up to 0013, holding poisoned rows as the old views wrote them."""
    client = open_store(f"chdb://{tmp_path / 'chdb'}")
    try:
        migrate(client, RenderOptions(), migrations=[m for m in load_migrations() if m.version < 14])
        _fill(client)
        yield client
    finally:
        client.close()


def test_the_old_views_let_poison_break_reports_and_the_enforcer(poisoned_before_0014: Any) -> None:
    # What 0014 repairs, shown on the store as it was: an Inf cannot become an integer.
    with pytest.raises(Exception, match="inf or nan"):
        _totals(poisoned_before_0014)
    with pytest.raises(Exception, match="inf or nan"):
        read_snapshot(poisoned_before_0014, POLICY, datetime.now(UTC))


def test_0014_repairs_stored_poison_and_keeps_new_poison_out(poisoned_before_0014: Any) -> None:
    client = poisoned_before_0014
    applied = migrate(client, RenderOptions()).applied
    assert applied[0].file_name == "0014_sane_counter_points.sql"
    expected = {"alice": 3000, "bob": 500}
    assert _totals(client) == expected  # alice's poisoned minute derived again from her sane points
    assert _minute_totals(client) == expected
    snapshot = read_snapshot(client, POLICY, datetime.now(UTC))
    assert {key[1]: usage.tokens for key, usage in snapshot.used.items()} == expected
    # new poison through the unguarded path stays out of the accounting tables
    for index, value in enumerate(POISON):
        _send(client, _poisoned("alice", value, "instance-1", NOW))
        _send(client, _poisoned(f"late-{index}", value, f"late-evil-{index}"))
    assert _totals(client) == expected
    assert _minute_totals(client) == expected
    daily = client.query("SELECT user, sum(value) FROM usage_daily WHERE metric = 'tokenmeter.usage.tokens' "
                         "GROUP BY user ORDER BY user").result_rows  # fmt: skip
    assert dict(daily) == expected
    # the raw rows stay as they came (the audit trail), only the accounting skips them
    [(raw,)] = client.query("SELECT count() FROM otel_metrics_sum WHERE NOT isFinite(Value) OR Value < 0").result_rows
    assert raw >= 8


def test_every_dashboard_and_alert_query_runs_on_a_poisoned_store(tmp_path: Path) -> None:
    client = open_store(f"chdb://{tmp_path / 'chdb'}")
    try:
        migrate(client, RenderOptions())
        _fill(client)
        now = datetime.now(UTC)
        span = TimeRange(now - timedelta(hours=2), now + timedelta(minutes=5), interval_seconds=60)
        for path in sorted((ROOT / "dashboards").glob("*.json")):
            board = json.loads(path.read_text(encoding="utf-8"))
            values = {variable["name"]: [str(row[0]) for row in client.query(
                expand(variable["query"], {}, span, {})).result_rows]
                for variable in board["templating"]["list"] if variable["type"] == "query"}  # fmt: skip
            for panel in board["panels"]:
                for target in panel.get("targets", []):
                    rows = client.query(expand(target["rawSql"], {}, span, values)).result_rows
                    numbers = [cell for row in rows for cell in row if isinstance(cell, int | float)]
                    where = (path.name, panel["title"], rows[:5])
                    assert all(math.isfinite(number) and number >= 0 for number in numbers), where
    finally:
        client.close()


def test_the_failing_open_alert_skips_the_same_points() -> None:
    rules = (ROOT / "alert_rules" / "grafana" / "tokenmeter-alerts.yaml").read_text(encoding="utf-8")
    assert f"isFinite(Value) AND Value >= 0 AND Value <= {MAX_COUNTER_VALUE}" in rules
