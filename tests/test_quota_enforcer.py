"""Usage snapshot from a real chDB store, the reservation ledger, and 100 concurrent checks on one replica."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.metrics.v1 import metrics_pb2
from otlp_requests import attributes, resource

from tokenmeter import semconv
from tokenmeter.collector.ingest_queue import IngestSchema, insert_payloads
from tokenmeter.collector.payloads import Signal, decode_protobuf
from tokenmeter.enforcer.admission import Enforcer
from tokenmeter.enforcer.decision import CheckRequest, Usage
from tokenmeter.enforcer.ledger import ReservationLedger
from tokenmeter.enforcer.policy import parse_policy
from tokenmeter.store import open_store
from tokenmeter.store.migrations import RenderOptions, migrate

NOW = datetime.now(UTC).replace(second=0, microsecond=0)
POLICY = parse_policy("""
timezone: Asia/Shanghai
model_groups:
  remote-paid: ["gpt-*"]
budgets:
  - {name: org-paid, scope: organisation, models: remote-paid, limit: {cost: 100, currency: USD}, action: downgrade}
  - {name: each-dept, scope: department, period: day, limit: {tokens: 100000}}
  - {name: bob-only, scope: user, subject: bob, limit: {tokens: 1000}}
""")


def _counters(user: str, department: str, model: str, tokens: int, cost: Decimal | None) -> list[metrics_pb2.Metric]:
    started = int((NOW - timedelta(minutes=30)).timestamp()) * 10**9
    at = int((NOW - timedelta(minutes=1)).timestamp()) * 10**9
    base = {semconv.ENDUSER_ID: user, semconv.TM_DEPARTMENT: department, semconv.GEN_AI_REQUEST_MODEL: model}

    def series(name: str, extra: dict[str, object], value: int) -> metrics_pb2.Metric:
        point = metrics_pb2.NumberDataPoint(attributes=attributes({**base, **extra}), start_time_unix_nano=started,
                                            time_unix_nano=at, as_int=value)  # fmt: skip
        return metrics_pb2.Metric(name=name, sum=metrics_pb2.Sum(data_points=[point], aggregation_temporality=2,
                                                                 is_monotonic=True))  # fmt: skip

    metrics = [series(semconv.METRIC_USAGE_TOKENS, {semconv.GEN_AI_TOKEN_TYPE: "input"}, tokens)]
    if cost is not None:
        metrics.append(series(semconv.METRIC_USAGE_COST, {semconv.TM_COST_CURRENCY: "USD"},
                              int(cost * semconv.COST_UNITS_PER_CURRENCY_UNIT)))  # fmt: skip
    return metrics


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    client = open_store(f"chdb://{tmp_path_factory.mktemp('enforcer') / 'chdb'}")
    migrate(client, RenderOptions())
    metrics = [
        *_counters("alice", "sales", "gpt-4o", 500, Decimal("2.5")),
        *_counters("bob", "sales", "qwen2.5-7b-instruct", 700, None),
        *_counters("carol", "研发部", "gpt-4o-mini", 300, Decimal("0.75")),
    ]
    request = ExportMetricsServiceRequest(resource_metrics=[metrics_pb2.ResourceMetrics(
        resource=resource("enforcer-test"),
        scope_metrics=[metrics_pb2.ScopeMetrics(scope=InstrumentationScope(name="tokenmeter"), metrics=metrics)],
    )])  # fmt: skip
    payload = decode_protobuf(Signal.METRICS, request.SerializeToString())
    insert_payloads(client, Signal.METRICS, [payload], IngestSchema.for_store(embedded=True))
    yield client
    client.close()


def test_snapshot_counts_each_budget_its_own_way(store) -> None:
    from tokenmeter.enforcer.snapshot import read_snapshot

    snapshot = read_snapshot(store, POLICY, NOW)
    assert snapshot.used[("org-paid", "")] == Usage(tokens=800, cost={"USD": Decimal("3.25")})  # paid models only
    assert snapshot.used[("each-dept", "sales")].tokens == 1200  # every model
    assert snapshot.used[("each-dept", "研发部")].tokens == 300
    assert snapshot.used[("bob-only", "bob")].tokens == 700
    assert ("bob-only", "alice") not in snapshot.used
    assert set(snapshot.period_starts) == {"org-paid", "each-dept", "bob-only"}


def test_a_refreshed_enforcer_decides_from_the_store(store) -> None:
    enforcer = Enforcer(POLICY, now=lambda: NOW)
    enforcer.refresh(store)
    bob = CheckRequest(user="bob", department="sales", app="kb", model="qwen2.5-7b-instruct", input_tokens=100,
                       max_output_tokens=100)  # fmt: skip
    first = enforcer.check(bob)
    assert first.decision.action == "allow" and first.reservation_id is not None  # 700 used: 70 %
    second = enforcer.check(bob)
    assert (second.decision.action, second.decision.used_tokens) == ("warn", 900)  # 700 used + 200 held
    third = enforcer.check(bob)
    assert (third.decision.action, third.decision.budget, third.decision.used_tokens) == ("deny", "bob-only", 1100)
    assert third.reservation_id is None


def test_ledger_holds_until_the_store_can_show_the_usage() -> None:
    now = [100.0]
    ledger = ReservationLedger(settle_seconds=90, timeout_seconds=600, clock=lambda: now[0])
    key = ("b", "u")
    held = ledger.reserve({key: Usage(tokens=50)})
    assert held is not None and ledger.reserve({}) is None
    assert ledger.totals(snapshot_started_at=100.0) == {key: Usage(tokens=50)}
    now[0] = 130.0
    assert ledger.release(held) and not ledger.release(held) and not ledger.release("nope")
    assert ledger.totals(snapshot_started_at=200.0) == {key: Usage(tokens=50)}  # 130 + 90 > 200: not yet exported
    assert ledger.totals(snapshot_started_at=220.0) == {}  # a snapshot from after 220 holds the real usage
    forgotten = ledger.reserve({key: Usage(tokens=7)})
    assert forgotten is not None
    now[0] = 729.0
    assert ledger.totals(snapshot_started_at=0.0) == {key: Usage(tokens=7)}
    now[0] = 731.0
    assert ledger.totals(snapshot_started_at=0.0) == {} and len(ledger) == 0  # never released: timed out


def test_one_hundred_concurrent_checks_at_a_budget_with_room_for_ten() -> None:
    policy = parse_policy("budgets:\n  - {name: tight, scope: user, period: day, limit: {tokens: 1000}}\n")
    enforcer = Enforcer(policy)
    call = CheckRequest(user="u", department="d", app="a", model="m", input_tokens=60, max_output_tokens=40)
    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(lambda _: enforcer.check(call), range(100)))
    allowed = [r for r in results if r.decision.action != "deny"]
    assert len(allowed) == 10  # 10 x 100 tokens fill the budget; overshoot bounded by one estimate (here 0)
    assert all(r.reservation_id for r in allowed)
    assert {r.decision.budget for r in results if r.decision.action == "deny"} == {"tight"}


def test_the_enforcer_uses_the_ledger_it_is_given_even_when_empty() -> None:
    # Regression: an empty ledger is falsy (it has a length); `ledger or default` dropped its settings.
    now = [0.0]
    ledger = ReservationLedger(settle_seconds=5, timeout_seconds=600, clock=lambda: now[0])
    enforcer = Enforcer(parse_policy("budgets: [{name: b, scope: user, limit: {tokens: 1000}}]\n"), ledger,
                        clock=lambda: now[0])  # fmt: skip
    result = enforcer.check(CheckRequest(user="u", department="", app="", model="m", input_tokens=10,
                                         max_output_tokens=0))  # fmt: skip
    assert len(ledger) == 1 and result.reservation_id is not None
    assert enforcer.release(result.reservation_id)
    now[0] = 10.0
    enforcer.update_snapshot(enforcer.snapshot, started_at=6.0)  # 0 + 5 s settle <= 6: the store has it
    assert enforcer.budget_states() == [] and len(ledger) == 0


def test_ledger_totals_stay_exact_over_many_reservations() -> None:
    now = [0.0]
    ledger = ReservationLedger(settle_seconds=1, timeout_seconds=100, clock=lambda: now[0])
    ids = []
    for index in range(1000):
        now[0] = index / 100
        ids.append(ledger.reserve({("b", "u"): Usage(tokens=3, cost={"CNY": Decimal("0.001")})}))
    assert ledger.totals(0.0) == {("b", "u"): Usage(tokens=3000, cost={"CNY": Decimal("1.000")})}
    now[0] = 20.0  # released at t = 20: settled for snapshots started from 21 on
    for reservation_id in ids[:400]:
        assert reservation_id is not None and ledger.release(reservation_id)
    assert ledger.totals(20.5)[("b", "u")].tokens == 3000
    assert ledger.totals(21.0) == {("b", "u"): Usage(tokens=1800, cost={"CNY": Decimal("0.600")})}
    now[0] = 200.0  # everything else times out
    assert ledger.totals(21.0) == {} and len(ledger) == 0
