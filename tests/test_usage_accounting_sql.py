"""The SQL-level exactness of the accounting tables, on chDB, with rows shaped as the exporter writes them."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from tokenmeter import semconv
from tokenmeter.store.client import open_store
from tokenmeter.store.migrations import RenderOptions, migrate
from tokenmeter.store.usage_queries import period_usage

T0 = datetime(2026, 11, 1, 23, 55, tzinfo=UTC)  # the run crosses midnight at minute 5
MINUTES = 10
SUM_COLUMNS = [
    "ResourceAttributes",
    "ResourceSchemaUrl",
    "ScopeName",
    "ScopeVersion",
    "ScopeAttributes",
    "ScopeDroppedAttrCount",
    "ScopeSchemaUrl",
    "ServiceName",
    "MetricName",
    "MetricDescription",
    "MetricUnit",
    "Attributes",
    "StartTimeUnix",
    "TimeUnix",
    "Value",
    "Flags",
    "Exemplars.FilteredAttributes",
    "Exemplars.TimeUnix",
    "Exemplars.Value",
    "Exemplars.SpanId",
    "Exemplars.TraceId",
    "AggregationTemporality",
    "IsMonotonic",
]
USERS = {"alice": "finance", "bob": "eng"}


def calls_for(user: str, minute: int) -> tuple[int, int, int]:
    """(input tokens, output tokens, cost nanos) of the one call `user` makes in `minute`."""
    base = 100 if user == "alice" else 7
    return base + minute, 2 * base + minute, (base + minute) * 1_234_567


def export_batch(instance: str, started: datetime, minute: int, first_minute: int = 0) -> list[list[object]]:
    """One cumulative export (at minute:30) of every series of one process."""
    at = T0 + timedelta(minutes=minute, seconds=30)
    rows: list[list[object]] = []
    for user, department in USERS.items():
        done = range(first_minute, minute + 1)
        totals = [sum(calls_for(user, m)[i] for m in done) for i in range(3)]
        identity = {
            semconv.ENDUSER_ID: user,
            semconv.TM_DEPARTMENT: department,
            semconv.TM_APP: "chatchat",
            semconv.GEN_AI_OPERATION_NAME: "chat",
            semconv.GEN_AI_PROVIDER_NAME: "openai",
            semconv.GEN_AI_REQUEST_MODEL: "qwen2.5-7b",
            semconv.GEN_AI_RESPONSE_MODEL: "qwen2.5-7b",
        }
        points = [
            (
                semconv.METRIC_USAGE_TOKENS,
                {**identity, semconv.GEN_AI_TOKEN_TYPE: "input", semconv.TM_USAGE_SOURCE: "server"},
                totals[0],
            ),
            (
                semconv.METRIC_USAGE_TOKENS,
                {**identity, semconv.GEN_AI_TOKEN_TYPE: "output", semconv.TM_USAGE_SOURCE: "server"},
                totals[1],
            ),
            (
                semconv.METRIC_USAGE_COST,
                {**identity, semconv.TM_COST_CURRENCY: "CNY", semconv.TM_COST_VIRTUAL: "true"},
                totals[2],
            ),
            (
                semconv.METRIC_USAGE_CALLS,
                {**identity, semconv.TM_USAGE_SOURCE: "server", semconv.TM_COST_UNPRICED: "false"},
                len(done),
            ),
        ]
        for name, attributes, value in points:
            rows.append(
                [
                    {"service.name": "chatchat", "service.instance.id": instance},
                    "",
                    semconv.INSTRUMENTATION_SCOPE,
                    "0.1.0",
                    {},
                    0,
                    "",
                    "chatchat",
                    name,
                    "",
                    "",
                    attributes,
                    started,
                    at,
                    float(value),
                    0,
                    [],
                    [],
                    [],
                    [],
                    [],
                    2,
                    True,
                ]
            )
    return rows


def expected(users: list[str], minutes: range) -> tuple[int, int, int, Decimal]:
    got = [calls_for(u, m) for u in users for m in minutes]
    return (sum(c[0] for c in got), sum(c[1] for c in got), len(got), Decimal(sum(c[2] for c in got)) / 1_000_000_000)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    client = open_store(f"chdb://{tmp_path_factory.mktemp('acct') / 'chdb'}")
    migrate(client, RenderOptions())
    yield client
    client.close()


def insert(store, rows: list[list[object]]) -> None:
    store.insert("otel_metrics_sum", rows, column_names=SUM_COLUMNS)


def check(
    store, start_minute: int, end_minute: int, minutes: range, user: str = "alice", restart: range = range(0)
) -> None:
    [row] = period_usage(store, T0 + timedelta(minutes=start_minute), T0 + timedelta(minutes=end_minute), "user", user)
    inp, out, calls, cost = expected([user], minutes)
    rinp, rout, rcalls, rcost = expected([user], restart)
    assert (row.input_tokens, row.output_tokens, row.calls) == (inp + rinp, out + rout, calls + rcalls)
    assert [(c.currency, c.virtual, c.amount) for c in row.costs] == [("CNY", True, cost + rcost)]


def test_exactness(store) -> None:
    started = T0 - timedelta(hours=1)
    batches = [export_batch("a1", started, m) for m in range(MINUTES)]
    for batch in batches:
        insert(store, batch)
    check(store, 0, MINUTES, range(MINUTES))
    check(store, 0, MINUTES, range(MINUTES), user="bob")

    insert(store, batches[3])  # the very same batch again
    insert(store, batches[2] + batches[3] + batches[4])  # overlapping batches
    check(store, 0, MINUTES, range(MINUTES))

    # A period boundary splits exactly: usage before it is not counted after it.
    check(store, 0, 5, range(5))
    check(store, 5, MINUTES, range(5, MINUTES))
    by_department = {r.subject: r for r in period_usage(store, T0, T0 + timedelta(minutes=MINUTES), "department")}
    assert by_department["eng"].input_tokens == expected(["bob"], range(MINUTES))[0]

    # Delta or non-monotonic points are not accounting data.
    delta = export_batch("a1", started, 9)
    for row in delta:
        row[-2], row[SUM_COLUMNS.index("Value")] = 1, 1e9
    insert(store, delta)
    check(store, 0, MINUTES, range(MINUTES))

    # A restart: a new instance, counting from 0 again, adds to the old one.
    restarted = T0 + timedelta(minutes=MINUTES)
    for m in range(MINUTES, MINUTES + 3):
        insert(store, export_batch("a2", restarted, m, first_minute=MINUTES))
    check(store, 0, MINUTES + 3, range(MINUTES), restart=range(MINUTES, MINUTES + 3))

    # The daily rollup follows the same rule (the run crosses midnight at minute 5).
    daily = dict(
        store.query(
            "SELECT day, value FROM usage_daily WHERE user = 'alice' AND metric = {m:String} AND token_type = 'input'",
            parameters={"m": semconv.METRIC_USAGE_TOKENS},
        ).result_rows
    )
    assert sorted(daily.values()) == sorted(
        [expected(["alice"], range(5))[0], expected(["alice"], range(5, MINUTES + 3))[0]]
    )
    recon = store.query("SELECT sum(counter_calls) FROM usage_reconciliation").result_rows
    assert recon == [(2 * (MINUTES + 3),)]  # both users, both processes


def test_llm_usage_from_spans(store) -> None:
    columns = [
        "Timestamp",
        "TraceId",
        "SpanId",
        "ParentSpanId",
        "TraceState",
        "SpanName",
        "SpanKind",
        "ServiceName",
        "ResourceAttributes",
        "ScopeName",
        "ScopeVersion",
        "SpanAttributes",
        "Duration",
        "StatusCode",
        "StatusMessage",
        "Events.Timestamp",
        "Events.Name",
        "Events.Attributes",
        "Links.TraceId",
        "Links.SpanId",
        "Links.TraceState",
        "Links.Attributes",
    ]
    attributes = {
        semconv.GEN_AI_OPERATION_NAME: "chat",
        semconv.GEN_AI_PROVIDER_NAME: "openai",
        semconv.GEN_AI_REQUEST_MODEL: "qwen2.5-7b",
        semconv.GEN_AI_RESPONSE_MODEL: "qwen2.5-7b-0901",
        semconv.GEN_AI_CONVERSATION_ID: "conv-1",
        semconv.GEN_AI_USAGE_INPUT_TOKENS: "120",
        semconv.GEN_AI_USAGE_OUTPUT_TOKENS: "45",
        semconv.ENDUSER_ID: "alice",
        semconv.TM_DEPARTMENT: "finance",
        semconv.TM_APP: "kb",
        semconv.TM_USAGE_SOURCE: "server",
        semconv.TM_LOCAL_INPUT_TOKENS: "118",
        semconv.TM_COST: "0.000186000001",
        semconv.TM_COST_CURRENCY: "CNY",
        semconv.TM_COST_VIRTUAL: "true",
        semconv.TM_COST_UNPRICED: "false",
        semconv.TM_PROMPT_HASH: "ab" * 32,
        semconv.TM_COMPLETION_HASH: "cd" * 32,
    }
    when = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
    span = [
        when,
        "t" * 32,
        "s" * 16,
        "",
        "",
        "chat qwen2.5-7b",
        "Client",
        "chatchat",
        {},
        "tokenmeter",
        "0.1.0",
        attributes,
        1_000_000,
        "Ok",
        "",
        [],
        [],
        [],
        [],
        [],
        [],
        [],
    ]
    http_span = [
        when,
        "t" * 32,
        "h" * 16,
        "s" * 16,
        "",
        "POST",
        "Client",
        "chatchat",
        {},
        "httpx",
        "1",
        {"http.method": "POST"},
        10,
        "Unset",
        "",
        [],
        [],
        [],
        [],
        [],
        [],
        [],
    ]
    # The same GenAI attributes from another instrumentation (e.g. the official OpenAI one)
    # must not add a second audit row for the call.
    other_scope_span = list(span)
    other_scope_span[2] = "o" * 16
    other_scope_span[columns.index("ScopeName")] = "opentelemetry.instrumentation.openai_v2"
    store.insert("otel_traces", [span, http_span, other_scope_span], column_names=columns)
    store.insert("otel_traces", [span], column_names=columns)  # re-sent
    rows = store.query(
        "SELECT user, department, app, conversation, request_model, effective_model, input_tokens, output_tokens, "
        "local_input_tokens, local_output_tokens, cost, currency, virtual, unpriced, usage_source, trace_id "
        "FROM llm_usage FINAL"
    ).result_rows
    assert rows == [
        (
            "alice",
            "finance",
            "kb",
            "conv-1",
            "qwen2.5-7b",
            "qwen2.5-7b-0901",
            120,
            45,
            118,
            0,
            Decimal("0.000186000001"),
            "CNY",
            True,
            False,
            "server",
            "t" * 32,
        )
    ]
