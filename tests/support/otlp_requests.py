"""Build OTLP export requests with the real opentelemetry-proto classes, and send them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import grpc
import httpx
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1 import trace_pb2

from tokenmeter import semconv

GRPC_METHODS = {
    "traces": "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    "metrics": "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
    "logs": "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
}


def value(raw: Any) -> AnyValue:
    if isinstance(raw, AnyValue):
        return raw
    if isinstance(raw, bool):
        return AnyValue(bool_value=raw)
    if isinstance(raw, int):
        return AnyValue(int_value=raw)
    if isinstance(raw, float):
        return AnyValue(double_value=raw)
    if isinstance(raw, bytes):
        return AnyValue(bytes_value=raw)
    return AnyValue(string_value=raw)


def attributes(items: dict[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=key, value=value(raw)) for key, raw in items.items()]


def resource(service: str, instance: str = "instance-1") -> Resource:
    return Resource(attributes=attributes({"service.name": service, "service.instance.id": instance}))


def now_ns() -> int:
    return int(datetime.now(UTC).timestamp() * 1e9)


def span(name: str, index: int, start_ns: int, span_attributes: dict[str, Any] | None = None) -> trace_pb2.Span:
    return trace_pb2.Span(
        trace_id=index.to_bytes(16, "big"),
        span_id=(index + 1).to_bytes(8, "big"),
        name=name,
        kind=trace_pb2.Span.SPAN_KIND_CLIENT,
        start_time_unix_nano=start_ns,
        end_time_unix_nano=start_ns + 1_000_000,
        attributes=attributes(span_attributes or {}),
    )


# A metered chat call's span attributes, as far as llm_usage needs them (its view also wants
# the span under tokenmeter's scope: traces_request(..., scope=semconv.INSTRUMENTATION_SCOPE)).
CHAT_CALL: dict[str, Any] = {semconv.GEN_AI_OPERATION_NAME: "chat", semconv.ENDUSER_ID: "alice",
                             semconv.GEN_AI_USAGE_INPUT_TOKENS: 10, semconv.GEN_AI_USAGE_OUTPUT_TOKENS: 5}  # fmt: skip


def traces_request(
    spans: list[trace_pb2.Span], service: str = "test-app", scope: str = "test"
) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest(
        resource_spans=[
            trace_pb2.ResourceSpans(
                resource=resource(service),
                scope_spans=[trace_pb2.ScopeSpans(scope=InstrumentationScope(name=scope, version="1"), spans=spans)],
            )
        ]
    )


def usage_counter_request(
    user: str, points: list[tuple[int, int]], start_ns: int, instance: str = "instance-1"
) -> ExportMetricsServiceRequest:
    """A cumulative tokenmeter.usage.tokens series (input tokens) with (time_ns, running total) points."""
    data_points = [
        metrics_pb2.NumberDataPoint(
            attributes=attributes(
                {
                    semconv.ENDUSER_ID: user,
                    semconv.GEN_AI_TOKEN_TYPE: semconv.TOKEN_TYPE_INPUT,
                    semconv.GEN_AI_REQUEST_MODEL: "qwen2.5-7b-instruct",
                }
            ),
            start_time_unix_nano=start_ns,
            time_unix_nano=time_ns,
            as_int=total,
        )
        for time_ns, total in points
    ]
    metric = metrics_pb2.Metric(
        name=semconv.METRIC_USAGE_TOKENS,
        unit="{token}",
        sum=metrics_pb2.Sum(
            data_points=data_points,
            aggregation_temporality=metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE,
            is_monotonic=True,
        ),
    )
    return ExportMetricsServiceRequest(
        resource_metrics=[
            metrics_pb2.ResourceMetrics(
                resource=resource("test-app", instance),
                scope_metrics=[
                    metrics_pb2.ScopeMetrics(scope=InstrumentationScope(name="tokenmeter"), metrics=[metric])
                ],
            )
        ]
    )


def cost_series(department: str, model: str, points: list[tuple[int, int]], start_ns: int, *,
                virtual: bool = False, user: str = "alice") -> metrics_pb2.Metric:  # fmt: skip
    """A cumulative tokenmeter.usage.cost series in CNY (billionths) with (time_ns, running total) points."""
    labels = {semconv.ENDUSER_ID: user, semconv.TM_DEPARTMENT: department, semconv.GEN_AI_REQUEST_MODEL: model,
              semconv.TM_COST_CURRENCY: "CNY", semconv.TM_COST_VIRTUAL: virtual}  # fmt: skip
    data = [metrics_pb2.NumberDataPoint(attributes=attributes(labels), start_time_unix_nano=start_ns,
                                        time_unix_nano=time_ns, as_int=total) for time_ns, total in points]  # fmt: skip
    return metrics_pb2.Metric(name=semconv.METRIC_USAGE_COST, sum=metrics_pb2.Sum(
        data_points=data, aggregation_temporality=metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE,
        is_monotonic=True))  # fmt: skip


def metrics_request(*metrics: metrics_pb2.Metric, service: str = "test-app") -> ExportMetricsServiceRequest:
    scope = metrics_pb2.ScopeMetrics(scope=InstrumentationScope(name="tokenmeter"), metrics=list(metrics))
    return ExportMetricsServiceRequest(
        resource_metrics=[metrics_pb2.ResourceMetrics(resource=resource(service), scope_metrics=[scope])]
    )


def post(
    base_url: str,
    signal: str,
    body: bytes,
    *,
    content_type: str = "application/x-protobuf",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    return httpx.post(
        f"{base_url}/v1/{signal}", content=body, headers={"content-type": content_type, **(headers or {})}, timeout=30
    )


def grpc_export(address: str, signal: str, body: bytes, metadata: tuple[tuple[str, str], ...] = ()) -> bytes:
    """One raw Export call; raises grpc.RpcError on a non-OK status."""
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(GRPC_METHODS[signal])
        return call(body, metadata=metadata, timeout=30)


__all__ = ["ExportLogsServiceRequest", "ExportMetricsServiceRequest", "ExportTraceServiceRequest"]
