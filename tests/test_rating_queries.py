"""The comparison's one query on chDB, with spans and rating records put through the real OTLP ingest.

The spans and log records are built with the real opentelemetry-proto classes and inserted the way serve's
receiver inserts them (``insert_payloads``), so the ingest views fill llm_usage and answer_ratings.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.logs.v1 import logs_pb2
from otlp_requests import attributes, resource, span, traces_request

from tokenmeter import semconv
from tokenmeter.collector.ingest_queue import IngestSchema, insert_payloads
from tokenmeter.collector.payloads import Signal, decode_protobuf
from tokenmeter.comparison.answer_rows import PricedCost
from tokenmeter.store.rating_queries import answer_rows

NOVEMBER = (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))
_SCHEMA = IngestSchema.for_store(embedded=True)


def nanos(moment: datetime) -> int:
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000


@dataclass
class Call:
    """One LLM call's span, as the instrumentation writes it (only what llm_usage reads)."""

    model: str
    at: datetime
    input_tokens: int = 100
    output_tokens: int = 20
    cost: str | None = "0.5"  # None: unpriced
    currency: str = "CNY"
    virtual: bool = False
    message_id: str = ""
    response_id: str = ""
    app: str = "kb-assistant"
    operation: str = "chat"
    trace: int = 0  # the answer's trace (0: a trace of its own)
    experiment: str = ""
    arm: str = ""
    error_type: str = ""  # e.g. QuotaExceeded: the gate refused the call, no model ran

    def span_attributes(self) -> dict[str, Any]:
        found: dict[str, Any] = {
            semconv.GEN_AI_OPERATION_NAME: self.operation, semconv.TM_APP: self.app, semconv.ENDUSER_ID: "alice",
            semconv.GEN_AI_REQUEST_MODEL: self.model, semconv.GEN_AI_USAGE_INPUT_TOKENS: self.input_tokens,
            semconv.GEN_AI_USAGE_OUTPUT_TOKENS: self.output_tokens, semconv.TM_COST_UNPRICED: self.cost is None,
        }  # fmt: skip
        if self.cost is not None:
            found |= {semconv.TM_COST: self.cost, semconv.TM_COST_CURRENCY: self.currency,
                      semconv.TM_COST_VIRTUAL: self.virtual}  # fmt: skip
        optional = {semconv.TM_MESSAGE_ID: self.message_id, semconv.GEN_AI_RESPONSE_ID: self.response_id,
                    semconv.TM_EXPERIMENT: self.experiment, semconv.TM_EXPERIMENT_ARM: self.arm,
                    semconv.ERROR_TYPE: self.error_type}  # fmt: skip
        return found | {key: value for key, value in optional.items() if value}


def call_request(call: Call, number: int) -> ExportTraceServiceRequest:
    """The call's span in an export request (span id from ``number``; its trace its own unless the call names one)."""
    one = span(f"{call.operation} {call.model}", number * 2, nanos(call.at), call.span_attributes())
    one.trace_id = (call.trace or 10_000 + number).to_bytes(16, "big")
    return traces_request([one], service=call.app, scope=semconv.INSTRUMENTATION_SCOPE)


def store_calls(client: Any, calls: list[Call]) -> None:
    """The calls' spans, one export request each, in one insert."""
    requests = [call_request(call, number) for number, call in enumerate(calls, start=1)]
    payloads = [decode_protobuf(Signal.TRACES, request.SerializeToString()) for request in requests]
    insert_payloads(client, Signal.TRACES, payloads, _SCHEMA)


def rating_request(score: float, at: datetime, *, message_id: str = "", response_id: str = "",
                   user: str = "bob") -> ExportLogsServiceRequest:  # fmt: skip
    """A rating as the app side records it: one log record, event tokenmeter.feedback, scope tokenmeter."""
    keyed = {semconv.TM_MESSAGE_ID: message_id} if message_id else {semconv.GEN_AI_RESPONSE_ID: response_id}
    record = logs_pb2.LogRecord(
        time_unix_nano=nanos(at), observed_time_unix_nano=nanos(at), severity_number=9, severity_text="INFO",
        event_name=semconv.EVENT_FEEDBACK,
        attributes=attributes({semconv.EVENT_NAME: semconv.EVENT_FEEDBACK, semconv.TM_FEEDBACK_SCORE: float(score),
                               semconv.ENDUSER_ID: user, **keyed}),
    )  # fmt: skip
    scope = logs_pb2.ScopeLogs(scope=InstrumentationScope(name=semconv.INSTRUMENTATION_SCOPE), log_records=[record])
    return ExportLogsServiceRequest(
        resource_logs=[logs_pb2.ResourceLogs(resource=resource("kb-assistant"), scope_logs=[scope])]
    )


def store_ratings(client: Any, *requests: ExportLogsServiceRequest) -> None:
    """In one insert (several requests: ClickHouse's block deduplication is off, as for the receiver's batches)."""
    payloads = [decode_protobuf(Signal.LOGS, request.SerializeToString()) for request in requests]
    insert_payloads(client, Signal.LOGS, payloads, _SCHEMA)


def day(number: int, hour: int = 12) -> datetime:
    return datetime(2026, 11, number, hour, tzinfo=UTC)


def _month_of_kb_assistant(client: Any) -> None:
    store_calls(client, [
        # m1: retrieval (embeddings, not counted) and two chat calls
        Call("bge-m3", day(2), 40, 0, "0.01", message_id="m1", operation="embeddings", trace=1),
        Call("qwen-7b", day(2), 100, 20, "0.5", message_id="m1", trace=1),
        Call("qwen-7b", day(2), 50, 10, "0.25", message_id="m1", trace=1),
        Call("qwen-7b", day(3), 80, 40, "0.4", message_id="m2"),
        Call("qwen-7b", day(4), 60, 30, "0.3", response_id="resp-3"),  # an app without message ids
        Call("qwen-7b", day(5), 70, 35, None, message_id="m4"),  # unpriced
        Call("baichuan2-7b", day(6), 90, 45, "0.01", currency="USD", message_id="m5"),
        Call("baichuan2-7b", day(7), 30, 15, "0.02", currency="USD", message_id="m6"),
        # m8 used both models: once under each
        Call("qwen-7b", day(8), 10, 5, "0.05", message_id="m8", trace=8),
        Call("baichuan2-7b", day(8), 20, 10, "0.004", currency="USD", message_id="m8", trace=8),
        # an answer without a message id that used both models, rated by the response id of baichuan's call
        Call("qwen-7b", day(9), 10, 5, None, response_id="r-q", trace=20),
        Call("baichuan2-7b", day(9), 20, 10, "0.006", currency="USD", response_id="r-b", trace=20),
        # outside November: the end is not in it
        Call("qwen-7b", datetime(2026, 12, 1, tzinfo=UTC), 999, 999, "9", message_id="m-dec"),
        Call("qwen-7b", datetime(2026, 10, 31, 23, 59, 59, tzinfo=UTC), 999, 999, "9", message_id="m-oct"),
        Call("qwen-7b", day(9), 11, 7, "0.07", message_id="h1", app="hr-bot"),
    ])  # fmt: skip
    # A record re-sent, in two inserts (one insert folds its own copies): stored twice, counted once.
    twice = rating_request(80, day(2, 13), message_id="m1")
    store_ratings(client, twice, rating_request(30, day(3, 13), message_id="m2"))
    store_ratings(
        client,
        twice,
        rating_request(90, day(4, 13), message_id="m2"),  # later: replaces the 30
        rating_request(60, day(4, 14), response_id="resp-3"),
        rating_request(70, day(6, 13), message_id="m5"),
        rating_request(50, day(8, 13), message_id="m8"),
        rating_request(40, day(9, 13), response_id="r-b"),
        rating_request(10, day(30), message_id="m-dec"),
        rating_request(100, day(9, 13), message_id="h1"),
    )  # fmt: skip


def test_answers_ratings_tokens_and_costs_per_app_and_model(migrated_store) -> None:
    _month_of_kb_assistant(migrated_store)
    stored_twice = migrated_store.query("SELECT count() FROM answer_ratings WHERE message_key = 'm1'").result_rows
    assert stored_twice == [(2,)]  # the re-sent record did land twice: the query must fold it

    rows = {(row.app, row.model): row for row in answer_rows(migrated_store, *NOVEMBER)}

    assert set(rows) == {("kb-assistant", "qwen-7b"), ("kb-assistant", "baichuan2-7b"), ("hr-bot", "qwen-7b")}
    qwen = rows["kb-assistant", "qwen-7b"]
    # answers m1 (2 chat calls), m2, the trace of resp-3, m4, m8, trace 20
    assert (qwen.answers, qwen.calls) == (6, 7)
    # m1 80 (once), m2 90 (the later), resp-3 60 (by response id), m8 50; m4 and trace 20 (r-b is not qwen's) unrated
    assert (qwen.rated_answers, qwen.rating_sum, qwen.rating_sum_of_squares) == (4, 280.0, 6400 + 8100 + 3600 + 2500)
    assert (qwen.input_tokens, qwen.output_tokens) == (
        100 + 50 + 80 + 60 + 70 + 10 + 10,
        20 + 10 + 40 + 30 + 35 + 5 + 5,
    )
    assert qwen.unpriced_answers == 2
    # 0.5 + 0.25 + 0.4 + 0.3 + 0.05 for the 4 answers with priced calls; m4's and trace 20's calls have no price
    assert qwen.costs == (PricedCost("CNY", False, Decimal("1.5"), 4),)
    baichuan = rows["kb-assistant", "baichuan2-7b"]
    # m5 70, m6 unrated, m8 50, trace 20 40 (by its call's response id)
    assert (baichuan.answers, baichuan.rated_answers, baichuan.rating_sum) == (4, 3, 160.0)
    assert baichuan.costs == (PricedCost("USD", False, Decimal("0.04"), 4),)
    assert (baichuan.unpriced_answers, baichuan.experiment, baichuan.arm) == (0, "", "")


def test_app_and_model_filters(migrated_store) -> None:
    _month_of_kb_assistant(migrated_store)

    only_hr = answer_rows(migrated_store, *NOVEMBER, app="hr-bot")
    assert [(r.app, r.model, r.answers, r.rated_answers, r.rating_sum) for r in only_hr] == [
        ("hr-bot", "qwen-7b", 1, 1, 100.0)
    ]
    only_baichuan = answer_rows(migrated_store, *NOVEMBER, models=["baichuan2-7b"])
    assert [(r.app, r.model, r.answers, r.rated_answers) for r in only_baichuan] == [
        ("kb-assistant", "baichuan2-7b", 4, 3)
    ]
    december = answer_rows(migrated_store, datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
    assert [(r.model, r.answers, r.rated_answers, r.rating_sum) for r in december] == [("qwen-7b", 1, 1, 10.0)]


def test_calls_a_quota_refused_are_not_answers(migrated_store) -> None:
    refused = [Call("qwen-7b", day(3), 0, 0, None, message_id=f"refused-{n}", error_type=kind)
               for n, kind in enumerate(("QuotaExceeded", "QuotaDegraded", "QuotaUnavailable"))]  # fmt: skip
    store_calls(migrated_store, [Call("qwen-7b", day(3), message_id="ran"), *refused])

    [row] = answer_rows(migrated_store, *NOVEMBER)
    assert (row.answers, row.calls, row.unpriced_answers) == (1, 1, 0)


def test_an_experiment_has_one_row_per_arm_and_leaves_other_calls_out(migrated_store) -> None:
    store_calls(migrated_store, [
        Call("qwen-7b", day(10), message_id="x1", experiment="cheaper-kb", arm=semconv.ARM_CONTROL),
        Call("qwen-7b", day(10), message_id="x2", experiment="cheaper-kb", arm=semconv.ARM_CONTROL),
        Call("baichuan2-7b", day(10), message_id="x3", cost="0.2", virtual=True, experiment="cheaper-kb",
             arm=semconv.ARM_CANDIDATE),
        Call("qwen-7b", day(10), message_id="plain"),  # not in the experiment
        Call("qwen-7b", day(10), message_id="y1", experiment="another", arm=semconv.ARM_CANDIDATE),
    ])  # fmt: skip
    store_ratings(
        migrated_store,
        rating_request(75, day(11), message_id="x1"),
        rating_request(40, day(11), message_id="x3"),
        rating_request(99, day(11), message_id="plain"),
    )

    rows = answer_rows(migrated_store, *NOVEMBER, experiment="cheaper-kb")

    found = [(r.model, r.experiment, r.arm, r.answers, r.rated_answers, r.rating_sum, r.costs) for r in rows]
    assert found == [
        ("baichuan2-7b", "cheaper-kb", "candidate", 1, 1, 40.0, (PricedCost("CNY", True, Decimal("0.2"), 1),)),
        ("qwen-7b", "cheaper-kb", "control", 2, 1, 75.0, (PricedCost("CNY", False, Decimal("1.0"), 2),)),
    ]
    without = {(r.model, r.answers) for r in answer_rows(migrated_store, *NOVEMBER)}
    assert without == {("qwen-7b", 4), ("baichuan2-7b", 1)}  # no experiment asked: one row per model, arms folded


def test_an_empty_store_has_no_rows_and_bad_ranges_are_refused(migrated_store) -> None:
    assert answer_rows(migrated_store, *NOVEMBER) == []
    for start, end in ((NOVEMBER[1], NOVEMBER[0]), (datetime(2026, 11, 1), NOVEMBER[1])):
        try:
            answer_rows(migrated_store, start, end)
        except ValueError as exc:
            assert "start" in str(exc) or "end" in str(exc)
        else:
            raise AssertionError(f"{start} .. {end} was accepted")
