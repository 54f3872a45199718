"""Calls put into a store the way the embedded receiver stores them: OTLP spans and counters, through the ingest.

A call is a span under tokenmeter's scope with the attributes the instrumentation writes (the llm_usage view
turns it into a row); the usage counters are cumulative series. Both go through the collector's own insert.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.metrics.v1 import metrics_pb2
from otlp_requests import attributes, resource, span, traces_request

from tokenmeter import semconv
from tokenmeter.collector.ingest_insert import IngestSchema, insert_payloads
from tokenmeter.collector.payloads import Signal, decode_protobuf


def ns(moment: datetime) -> int:
    """``moment`` (timezone-aware) in integer nanoseconds since the epoch, exactly."""
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 10**9 + delta.microseconds * 1000


def call_attributes(
    model: str,
    input_tokens: int,
    output_tokens: int,
    cost: Decimal | None,
    currency: str = "CNY",
    *,
    user: str = "alice",
    virtual: bool = False,
    **more: Any,
) -> dict[str, Any]:
    """A billed chat call's span attributes as the instrumentation writes them; ``cost`` None: unpriced."""
    found: dict[str, Any] = {
        semconv.GEN_AI_OPERATION_NAME: "chat",
        semconv.GEN_AI_PROVIDER_NAME: "openai",
        semconv.GEN_AI_REQUEST_MODEL: model,
        semconv.GEN_AI_RESPONSE_MODEL: model,
        semconv.ENDUSER_ID: user,
        semconv.TM_DEPARTMENT: "研发部",
        semconv.TM_APP: "kb-chat",
        semconv.GEN_AI_USAGE_INPUT_TOKENS: input_tokens,
        semconv.GEN_AI_USAGE_OUTPUT_TOKENS: output_tokens,
        semconv.TM_USAGE_SOURCE: semconv.SOURCE_SERVER,
        semconv.TM_COST_UNPRICED: cost is None,
    }
    if cost is not None:
        found.update({semconv.TM_COST: str(cost), semconv.TM_COST_CURRENCY: currency, semconv.TM_COST_VIRTUAL: virtual})
    found.update(more)
    return found


Start = datetime | int  # a datetime, or integer nanoseconds since the epoch


def calls_request(calls: list[tuple[Start, dict[str, Any]]], first_index: int = 1) -> ExportTraceServiceRequest:
    """One span per (start, attributes), trace and span ids from ``first_index`` on, under tokenmeter's scope."""
    spans = [
        span(f"chat {attrs.get(semconv.GEN_AI_REQUEST_MODEL, '')}", first_index + 2 * n,
             when if isinstance(when, int) else ns(when), attrs)
        for n, (when, attrs) in enumerate(calls)
    ]  # fmt: skip
    return traces_request(spans, service="kb-chat", scope=semconv.INSTRUMENTATION_SCOPE)


def store_calls(client: Any, calls: list[tuple[Start, dict[str, Any]]], first_index: int = 1) -> None:
    """The calls' spans (:func:`calls_request`) through the embedded receiver's insert: llm_usage rows."""
    request = calls_request(calls, first_index)
    payload = decode_protobuf(Signal.TRACES, request.SerializeToString())
    insert_payloads(client, Signal.TRACES, [payload], IngestSchema.for_store(embedded=True))


def store_call_counters(client: Any, calls_by_model: dict[str, int], started: datetime, exported: datetime) -> None:
    """The tokenmeter.usage.calls series of one process: ``calls_by_model`` calls, exported at ``exported``."""
    metrics = []
    for model, calls in calls_by_model.items():
        point = metrics_pb2.NumberDataPoint(
            attributes=attributes({semconv.ENDUSER_ID: "alice", semconv.GEN_AI_REQUEST_MODEL: model,
                                   semconv.GEN_AI_OPERATION_NAME: "chat"}),
            start_time_unix_nano=ns(started), time_unix_nano=ns(exported), as_int=calls,
        )  # fmt: skip
        metrics.append(metrics_pb2.Metric(name=semconv.METRIC_USAGE_CALLS, unit="{call}", sum=metrics_pb2.Sum(
            data_points=[point], aggregation_temporality=metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE,
            is_monotonic=True)))  # fmt: skip
    request = ExportMetricsServiceRequest(resource_metrics=[metrics_pb2.ResourceMetrics(
        resource=resource("kb-chat"),
        scope_metrics=[metrics_pb2.ScopeMetrics(scope=InstrumentationScope(name="tokenmeter"), metrics=metrics)],
    )])  # fmt: skip
    payload = decode_protobuf(Signal.METRICS, request.SerializeToString())
    insert_payloads(client, Signal.METRICS, [payload], IngestSchema.for_store(embedded=True))
