"""Grafana-managed alert rules, contact points and notification policy, checked and evaluated offline.

The rules' queries run on chDB against the real schema, filled through tokenmeter's own
code (the enforcer's quota event writer, the OTLP ingest path); Grafana's math condition is
evaluated here the way Grafana does per row, so "which subjects fire" is tested exactly.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from grafana_alert_rules import fires as _fires
from grafana_alert_rules import instances as _instances
from otlp_requests import attributes, usage_counter_request

from tokenmeter import semconv
from tokenmeter.collector.ingest_queue import IngestSchema, insert_payloads
from tokenmeter.collector.payloads import Signal, decode_protobuf
from tokenmeter.dashboards.alert_queries import write_queries
from tokenmeter.enforcer.decision import Usage, UsageSnapshot, period_bounds
from tokenmeter.enforcer.policy import parse_policy
from tokenmeter.enforcer.quota_events import QuotaEventLog

ROOT = Path(__file__).resolve().parents[1]
TEXT = (ROOT / "alert_rules" / "grafana" / "tokenmeter-alerts.yaml").read_text(encoding="utf-8")
ALERTING: dict[str, Any] = yaml.safe_load(TEXT)
RULES = {rule["uid"]: rule for group in ALERTING["groups"] for rule in group["rules"]}
DATASOURCE_UID = yaml.safe_load((ROOT / "grafana" / "provisioning" / "datasources" / "clickhouse.yaml").read_text(
    encoding="utf-8"))["datasources"][0]["uid"]  # fmt: skip


def test_rules_contact_points_and_policy_are_consistent() -> None:
    assert len(RULES) == sum(len(group["rules"]) for group in ALERTING["groups"])  # unique uids
    for uid, rule in RULES.items():
        refs = {query["refId"]: query for query in rule["data"]}
        assert rule["condition"] in refs, uid
        for query in refs.values():
            if query["datasourceUid"] != "__expr__":
                assert query["datasourceUid"] == DATASOURCE_UID
                assert query["model"]["format"] == 1 and query["model"]["editorType"] == "sql"
        assert rule["labels"]["severity"] in {"warning", "critical"}
    receivers = {point["name"] for point in ALERTING["contactPoints"]}
    types = {receiver["type"] for point in ALERTING["contactPoints"] for receiver in point["receivers"]}
    assert types == {"slack", "dingding", "wecom", "pagerduty", "email", "webhook"}
    policy = ALERTING["policies"][0]
    assert policy["receiver"] in receivers
    assert {route["receiver"] for route in policy["routes"]} <= receivers
    assert {"severity"} <= {matcher[0] for route in policy["routes"] for matcher in route["object_matchers"]}


def test_the_rules_queries_are_what_the_builder_writes() -> None:
    assert write_queries(TEXT) == TEXT, "alert_rules/grafana/tokenmeter-alerts.yaml is stale: run dashboards/build.py"


def test_dollars_are_escaped_and_secrets_come_from_documented_variables() -> None:
    unescaped = re.findall(r"(?<!\$)\$(?!\$|\{TOKENMETER_ALERT_)\w*", TEXT.replace("$$", ""))
    assert not unescaped, unescaped  # Grafana would expand them as environment variables
    placeholders = set(re.findall(r"\$\{(TOKENMETER_ALERT_[A-Z_]+)\}", TEXT))
    assert len(placeholders) == 6
    alerting_doc = (ROOT / "docs" / "alerting.md").read_text(encoding="utf-8")
    assert all(f"`{name}`" in alerting_doc for name in placeholders), placeholders


def test_quota_alerts_fire_for_exactly_the_subjects_past_their_thresholds(migrated_store: Any) -> None:
    policy = parse_policy("""
budgets:
  - {name: per-user, scope: user, period: day, limit: {tokens: 1000}}
  - {name: research, scope: department, subject: 研发部, period: month, limit: {tokens: 10000}}
""")
    now = datetime.now(UTC)
    events = QuotaEventLog("replica-1")
    starts = {b.name: period_bounds(b.period, now, policy.zone)[0] for b in policy.budgets}
    used = {("per-user", "alice"): 850, ("per-user", "bob"): 1200, ("per-user", "carol"): 500,
            ("research", "研发部"): 9000}  # fmt: skip
    events.on_snapshot(policy, UsageSnapshot({k: Usage(v) for k, v in used.items()}, starts), now)
    # dave passed his budget yesterday: that period is over, nothing fires for it today.
    yesterday = now - timedelta(days=1)
    old_starts = {"per-user": period_bounds("day", yesterday, policy.zone)[0], "research": starts["research"]}
    events.on_snapshot(policy, UsageSnapshot({("per-user", "dave"): Usage(5000)}, old_starts), yesterday)
    assert events.flush(migrated_store) > 0

    levels = _instances(migrated_store, "tokenmeter-quota-warning")
    warning = {labels for labels, value in levels.items() if _fires("tokenmeter-quota-warning", value)}
    critical = {labels for labels, value in _instances(migrated_store, "tokenmeter-quota-exceeded").items()
                if _fires("tokenmeter-quota-exceeded", value)}  # fmt: skip
    assert warning == {("per-user", "user", "alice"), ("research", "department", "研发部")}
    assert critical == {("per-user", "user", "bob")}
    assert not any("carol" in labels or "dave" in labels for labels in levels)


def _insert_metric(client: Any, name: str, extra: dict[str, object], total: int, when_ns: int,
                   start_ns: int | None = None) -> None:  # fmt: skip
    start_ns = when_ns - 60 * 10**9 if start_ns is None else start_ns
    request = usage_counter_request("alice", [(when_ns, total)], start_ns=start_ns)
    metric = request.resource_metrics[0].scope_metrics[0].metrics[0]
    metric.name = name
    point = metric.sum.data_points[0]
    point.ClearField("attributes")
    point.attributes.extend(attributes({semconv.ENDUSER_ID: "alice", **extra}))
    payload = decode_protobuf(Signal.METRICS, request.SerializeToString())
    insert_payloads(client, Signal.METRICS, [payload], IngestSchema.for_store(embedded=True))


def test_no_data_fires_until_usage_arrives(migrated_store: Any) -> None:
    (((), before),) = _instances(migrated_store, "tokenmeter-no-data").items()
    assert _fires("tokenmeter-no-data", before)  # nothing ever arrived
    _insert_metric(migrated_store, semconv.METRIC_USAGE_CALLS, {}, 3, time.time_ns())
    (((), after),) = _instances(migrated_store, "tokenmeter-no-data").items()
    assert not _fires("tokenmeter-no-data", after)


def test_failing_open_fires_for_the_app_that_let_calls_through(migrated_store: Any) -> None:
    assert _instances(migrated_store, "tokenmeter-failing-open") == {}
    now_ns = time.time_ns()
    fail_open = {semconv.TM_QUOTA_DECISION: "unavailable", semconv.TM_QUOTA_FAIL_OPEN: True}
    # One process's running total (one start time): 2 long ago, 5 more just now.
    started_ns = now_ns - 31 * 60 * 10**9
    _insert_metric(migrated_store, semconv.METRIC_QUOTA_DECISIONS, fail_open, 2, now_ns - 30 * 60 * 10**9, started_ns)
    _insert_metric(migrated_store, semconv.METRIC_QUOTA_DECISIONS, fail_open, 7, now_ns, started_ns)
    instances = _instances(migrated_store, "tokenmeter-failing-open")
    assert instances == {("test-app",): 5.0}
    assert _fires("tokenmeter-failing-open", 5.0)


def test_failing_open_counts_a_restarted_process_from_zero(migrated_store: Any) -> None:
    """A process that let 2 calls through long ago and then stopped takes nothing off its successor's 7."""
    now_ns = time.time_ns()
    before = _instances(migrated_store, "tokenmeter-failing-open").get(("test-app",), 0.0)  # the store is shared
    fail_open = {semconv.TM_QUOTA_DECISION: "unavailable", semconv.TM_QUOTA_FAIL_OPEN: True, "restart": "yes"}
    _insert_metric(migrated_store, semconv.METRIC_QUOTA_DECISIONS, fail_open, 2, now_ns - 30 * 60 * 10**9)
    _insert_metric(migrated_store, semconv.METRIC_QUOTA_DECISIONS, fail_open, 7, now_ns)
    after = _instances(migrated_store, "tokenmeter-failing-open")[("test-app",)]
    assert after - before == 7.0


def test_spend_spike_query_runs_with_one_number_per_department(migrated_store: Any) -> None:
    assert _instances(migrated_store, "tokenmeter-spend-spike") == {}  # no history yet: nothing to compare with


def _token_totals(client: Any, department: str, instance: str, totals: list[tuple[datetime, int]]) -> None:
    """One app process's token counter for one department: its running total at each moment."""
    start = totals[0][0] - timedelta(minutes=1)
    request = usage_counter_request("u-" + department, [(int(when.timestamp() * 1e9), total) for when, total in totals],
                                    start_ns=int(start.timestamp() * 1e9), instance=instance)  # fmt: skip
    for point in request.resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points:
        point.attributes.extend(attributes({semconv.TM_DEPARTMENT: department}))
    payload = decode_protobuf(Signal.METRICS, request.SerializeToString())
    insert_payloads(client, Signal.METRICS, [payload], IngestSchema.for_store(embedded=True))


def test_spend_spike_compares_today_with_the_week_before_for_long_running_processes(migrated_store: Any) -> None:
    """Processes that have run for weeks count only what they added in the window, whenever they last exported."""
    seconds_left_today = 86400 - time.time() % 86400
    if seconds_left_today < 30:  # the alert's "today" must be the day the points were written for
        time.sleep(seconds_left_today + 1)
    [(today,)] = migrated_store.query("SELECT toDate(now(), 'UTC')").result_rows
    noon = datetime(today.year, today.month, today.day, 12, tzinfo=UTC)
    now = datetime.now(UTC)

    def steady(days: int, per_day: int, today_adds: int) -> list[tuple[datetime, int]]:
        """Running for ``days`` days before today at ``per_day`` tokens a day, then ``today_adds`` today."""
        history = [(noon - timedelta(days=ago), per_day * (days - ago + 1)) for ago in range(days, 0, -1)]
        return [*history, (now, history[-1][1] + today_adds)]

    _token_totals(migrated_store, "research", "r-1", steady(20, 100, 500))  # 5x its usual day
    _token_totals(migrated_store, "sales", "s-1", steady(20, 100, 100))  # a usual day
    _token_totals(migrated_store, "legal", "l-1", steady(20, 100, 100))
    # a legal process that exported 1,000 tokens three weeks ago, then nothing until 50 more today
    _token_totals(migrated_store, "legal", "l-2", [(noon - timedelta(days=21), 1000), (now, 1050)])
    # and one that started three days ago: 350 in the week, 75 today
    started = [(noon - timedelta(days=3), 100), (noon - timedelta(days=2), 200), (noon - timedelta(days=1), 350)]
    _token_totals(migrated_store, "legal", "l-3", [*started, (now, 425)])

    instances = _instances(migrated_store, "tokenmeter-spend-spike")
    assert instances == {("research",): 5.0, ("sales",): 1.0, ("legal",): 1.5}  # legal: 225 against 1,050 / 7
    assert {labels for labels, ratio in instances.items() if _fires("tokenmeter-spend-spike", ratio)} == {("research",)}
