"""The embedded OTLP receiver of `tokenmeter serve`: values, exactness, bad input, back-pressure, shutdown."""

from __future__ import annotations

import gzip
import json
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import httpx
import pytest
from google.rpc import status_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValueList
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from otlp_requests import (
    attributes,
    grpc_export,
    now_ns,
    post,
    span,
    traces_request,
    usage_counter_request,
)
from serve_process import ServeProcess, running_serve

from tokenmeter.store.usage_queries import period_usage


def _day() -> tuple[datetime, datetime]:
    start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return start, start + timedelta(days=1)


def _metric(serve: ServeProcess, name: str) -> dict[str, float]:
    text = httpx.get(f"{serve.api}/metrics", headers={"authorization": f"Bearer {serve.api_token}"}, timeout=10).text
    values = {}
    for line in text.splitlines():
        if line.startswith(name):
            key, number = line.rsplit(" ", 1)
            values[key] = float(number)
    return values


def test_values_land_as_the_collector_exporter_writes_them(tmp_path: Path) -> None:
    start = now_ns()
    attrs = {
        "s": "x", "zero": 0, "neg": -5, "f": False, "t": True, "d": 0.5, "b": b"\x00\x01", "empty": "",
        "arr": AnyValue(array_value=ArrayValue(values=[AnyValue(string_value="a"), AnyValue(int_value=1),
                                                       AnyValue(bool_value=True)])),
        "kv": AnyValue(kvlist_value=KeyValueList(values=attributes({"k": "v", "n": 2}))),
    }  # fmt: skip
    the_span = span("chat m", 7, start, attrs)
    the_span.kind = trace_pb2.Span.SPAN_KIND_SERVER
    the_span.status.code = trace_pb2.Status.STATUS_CODE_ERROR
    the_span.status.message = "boom"
    the_span.events.add(time_unix_nano=start + 5, name="evt", attributes=attributes({"e": 1}))
    the_span.links.add(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, attributes=attributes({"l": "x"}))

    histogram = metrics_pb2.Metric(
        name="latency", unit="s",
        histogram=metrics_pb2.Histogram(aggregation_temporality=2, data_points=[metrics_pb2.HistogramDataPoint(
            attributes=attributes({"route": "/chat"}), start_time_unix_nano=start, time_unix_nano=start + 10,
            count=3, sum=1.5, bucket_counts=[1, 2, 0], explicit_bounds=[0.1, 1.0], min=0.05, max=0.9,
            exemplars=[metrics_pb2.Exemplar(time_unix_nano=start + 1, as_double=0.9, span_id=b"\x03" * 8,
                                            trace_id=b"\x04" * 16)],
        )]),
    )  # fmt: skip
    gauge = metrics_pb2.Metric(name="queue", gauge=metrics_pb2.Gauge(data_points=[
        metrics_pb2.NumberDataPoint(time_unix_nano=start, as_double=2.25)]))  # fmt: skip
    summary = metrics_pb2.Metric(name="old", summary=metrics_pb2.Summary(data_points=[
        metrics_pb2.SummaryDataPoint(time_unix_nano=start, count=1, sum=1.0)]))  # fmt: skip
    metrics_request = usage_counter_request("metric-user", [(start, 10)], start)
    metrics_request.resource_metrics[0].scope_metrics[0].metrics.extend([histogram, gauge, summary])
    service = [{"key": "service.name", "value": {"stringValue": "json-app"}}]
    logs_json = {"resourceLogs": [{"resource": {"attributes": service},
        "scopeLogs": [{"scope": {"name": "s"}, "logRecords": [{
            "timeUnixNano": str(start), "severityNumber": 9, "severityText": "INFO", "body": {"stringValue": "hello"},
            "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
            "attributes": [{"key": "n", "value": {"intValue": "3"}}]}]}]}]}  # fmt: skip

    with running_serve(tmp_path / "serve") as serve:
        assert post(serve.otlp_http, "traces", traces_request([the_span]).SerializeToString()).status_code == 200
        reply = ExportMetricsServiceResponse.FromString(
            grpc_export(serve.otlp_grpc, "metrics", metrics_request.SerializeToString())
        )
        assert reply.partial_success.rejected_data_points == 1  # the summary: refused, and said so
        assert "summary" in reply.partial_success.error_message
        response = post(serve.otlp_http, "logs", json.dumps(logs_json).encode(), content_type="application/json")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
    with serve.store() as client:
        [row] = client.query(
            "SELECT TraceId, SpanId, SpanKind, StatusCode, StatusMessage, ServiceName, ScopeName, ScopeVersion,"
            " SpanAttributes, Duration, Events.Name, Events.Attributes, Links.TraceId, Links.Attributes"
            " FROM otel_traces"
        ).result_rows
        assert row[:8] == ((7).to_bytes(16, "big").hex(), (8).to_bytes(8, "big").hex(), "SPAN_KIND_SERVER",
                           "STATUS_CODE_ERROR", "boom", "test-app", "test", "1")  # fmt: skip
        assert row[8] == {
            "s": "x", "zero": "0", "neg": "-5", "f": "false", "t": "true", "d": "0.5", "b": "AAE=", "empty": "",
            "arr": '["a",1,true]', "kv": '{"k":"v","n":2}',
        }  # fmt: skip
        assert row[9:] == (1_000_000, ["evt"], [{"e": "1"}], ["01" * 16], [{"l": "x"}])
        [hist] = client.query(
            "SELECT MetricName, Attributes, Count, Sum, BucketCounts, ExplicitBounds, Min, Max, AggregationTemporality,"
            " Exemplars.Value, Exemplars.SpanId, Exemplars.TraceId FROM otel_metrics_histogram"
        ).result_rows
        assert hist == ("latency", {"route": "/chat"}, 3, 1.5, [1, 2, 0], [0.1, 1.0], 0.05, 0.9, 2, [0.9],
                        ["03" * 8], ["04" * 16])  # fmt: skip
        assert client.query("SELECT MetricName, Value FROM otel_metrics_gauge").result_rows == [("queue", 2.25)]
        assert client.query(
            "SELECT Value, IsMonotonic, AggregationTemporality, ResourceAttributes['service.instance.id']"
            " FROM otel_metrics_sum"
        ).result_rows == [(10.0, True, 2, "instance-1")]
        assert client.query(
            "SELECT ServiceName, Body, SeverityText, SeverityNumber, TraceId, SpanId, LogAttributes FROM otel_logs"
        ).result_rows == [("json-app", "hello", "INFO", 9, "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174",
                           {"n": "3"})]  # fmt: skip


def test_duplicate_and_overlapping_exports_count_once(tmp_path: Path) -> None:
    start = now_ns() - 5 * 60 * 10**9
    minute = 60 * 10**9
    first = usage_counter_request("dup-user", [(start + minute, 100)], start)
    overlapping = usage_counter_request("dup-user", [(start + minute, 100), (start + 2 * minute, 150)], start)
    later = usage_counter_request("dup-user", [(start + 2 * minute, 150), (start + 3 * minute, 180)], start)
    with running_serve(tmp_path / "serve") as serve:
        body = first.SerializeToString()
        assert post(serve.otlp_http, "metrics", body).status_code == 200
        assert post(serve.otlp_http, "metrics", body).status_code == 200  # a retry: same bytes
        grpc_export(serve.otlp_grpc, "metrics", body)  # the same request over gRPC
        for request in (overlapping, later, overlapping):
            assert post(serve.otlp_http, "metrics", request.SerializeToString()).status_code == 200
        requests = _metric(serve, "tokenmeter_receiver_requests_total")
        duplicate = 'tokenmeter_receiver_requests_total{{signal="metrics",transport="{}",outcome="duplicate"}}'
        assert (requests[duplicate.format("http")], requests[duplicate.format("grpc")]) == (2, 1)
    with serve.store() as client:
        [usage] = period_usage(client, *_day(), by="user", subject="dup-user")
        assert usage.input_tokens == 180
        # the raw table holds the overlaps; only the accounting rule makes them count once
        [(rows,)] = client.query("SELECT count() FROM otel_metrics_sum").result_rows
        assert rows == 5


def test_bad_input_is_refused_and_the_receiver_keeps_going(tmp_path: Path) -> None:
    good = traces_request([span("ok", 1, now_ns())]).SerializeToString()
    auth = {"authorization": "Bearer s3cret"}
    with running_serve(tmp_path / "serve", "--max-request-bytes", "100000",
                       env={"TOKENMETER_OTLP_TOKEN": "s3cret"}) as serve:  # fmt: skip
        assert post(serve.otlp_http, "traces", good).status_code == 401
        assert post(serve.otlp_http, "traces", good, headers={"authorization": "Bearer wrong"}).status_code == 401
        bad = post(serve.otlp_http, "traces", b"\xff\x00garbage", headers=auth)
        assert bad.status_code == 400
        assert "not a valid OTLP traces protobuf" in status_pb2.Status.FromString(bad.content).message
        assert post(serve.otlp_http, "traces", b"{not json", content_type="application/json",
                    headers=auth).status_code == 400  # fmt: skip
        bad_id = b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}'
        assert post(serve.otlp_http, "traces", bad_id, content_type="application/json", headers=auth).status_code == 400
        assert post(serve.otlp_http, "traces", good, content_type="text/plain", headers=auth).status_code == 415
        assert post(serve.otlp_http, "traces", good, headers={**auth, "content-encoding": "br"}).status_code == 415
        assert post(serve.otlp_http, "traces", b"\x00" * 200_000, headers=auth).status_code == 413
        bomb = gzip.compress(b"\x00" * 5_000_000)  # 5 KB on the wire, 5 MB inflated
        assert post(serve.otlp_http, "traces", bomb, headers={**auth, "content-encoding": "gzip"}).status_code == 413
        assert post(serve.otlp_http, "traces", b"\x1f\x8b\x08garbage",
                    headers={**auth, "content-encoding": "gzip"}).status_code == 400  # fmt: skip
        with pytest.raises(grpc.RpcError) as unauthenticated:
            grpc_export(serve.otlp_grpc, "traces", good)
        assert unauthenticated.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as invalid:
            grpc_export(serve.otlp_grpc, "traces", b"\xff\x00garbage", metadata=(("authorization", "Bearer s3cret"),))
        assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # still serving, and good requests still land
        gzipped = post(serve.otlp_http, "traces", gzip.compress(good), headers={**auth, "content-encoding": "gzip"})
        assert gzipped.status_code == 200
        grpc_export(serve.otlp_grpc, "traces", traces_request([span("ok", 3, now_ns())]).SerializeToString(),
                    metadata=(("authorization", "Bearer s3cret"),))  # fmt: skip
        assert httpx.get(f"{serve.api}/healthz", timeout=10).json()["status"] == "ok"
    assert any("refused OTLP/HTTP traces request" in line for line in serve.stderr_lines)
    with serve.store() as client:
        assert client.query("SELECT count() FROM otel_traces").result_rows == [(2,)]


@pytest.fixture(scope="module")
def fuzz_serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    with running_serve(tmp_path_factory.mktemp("fuzz") / "serve") as serve:
        yield serve


_VALID = traces_request([span("fuzz", 11, now_ns(), {"enduser.id": "u", "n": 1})]).SerializeToString()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.one_of(
        st.binary(max_size=512),
        st.lists(st.tuples(st.integers(0, len(_VALID) - 1), st.integers(0, 255)), min_size=1, max_size=8).map(
            lambda flips: bytes(dict(flips).get(i, b) for i, b in enumerate(_VALID))
        ),
    ),
    signal_name=st.sampled_from(["traces", "metrics", "logs"]),
)
def test_fuzzed_payloads_never_crash_the_receiver(fuzz_serve: ServeProcess, data: bytes, signal_name: str) -> None:
    response = post(fuzz_serve.otlp_http, signal_name, data)
    assert response.status_code in {200, 400}, response.content
    try:
        grpc_export(fuzz_serve.otlp_grpc, signal_name, data)
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert httpx.get(f"{fuzz_serve.api}/healthz", timeout=10).status_code == 200


def test_fuzz_serve_still_writes_after_fuzzing(fuzz_serve: ServeProcess) -> None:
    assert post(fuzz_serve.otlp_http, "traces", _VALID).status_code == 200


def _sdk_spans(count: int, service: str) -> list:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    for index in range(count):
        with tracer.start_as_current_span(f"call {index}"):
            pass
    return list(exporter.get_finished_spans())


def test_full_queue_answers_429_and_the_sdk_retries(tmp_path: Path) -> None:
    # room for one request at a time, written after a second: everyone else is told to come back
    with running_serve(tmp_path / "serve", "--max-queue-bytes", "1", "--flush-interval", "1.0") as serve:
        bodies = [traces_request([span("b", 100 + i * 2, now_ns())]).SerializeToString() for i in range(6)]
        with ThreadPoolExecutor(6) as pool:
            responses = list(pool.map(lambda body: post(serve.otlp_http, "traces", body), bodies))
        throttled = [r for r in responses if r.status_code == 429]
        assert throttled and all(r.headers["retry-after"] == "1" for r in throttled)
        assert "queue is full" in status_pb2.Status.FromString(throttled[0].content).message
        # the SDK's own exporter backs off on 429 and gets through
        exporters = [OTLPSpanExporter(endpoint=f"{serve.otlp_http}/v1/traces") for _ in range(3)]
        batches = [_sdk_spans(50, f"sdk-{i}") for i in range(3)]
        with ThreadPoolExecutor(3) as pool:
            results = list(pool.map(lambda pair: pair[0].export(pair[1]), zip(exporters, batches, strict=True)))
        assert results == [SpanExportResult.SUCCESS] * 3
        assert (
            _metric(serve, "tokenmeter_receiver_requests_total").get(
                'tokenmeter_receiver_requests_total{signal="traces",transport="http",outcome="throttled"}', 0
            )
            >= 1
        )
    with serve.store() as client:
        [(sdk_spans,)] = client.query("SELECT count() FROM otel_traces WHERE ServiceName LIKE 'sdk-%'").result_rows
        assert sdk_spans == 150  # each exactly once


def test_sigterm_writes_what_is_queued_before_exit(tmp_path: Path) -> None:
    serve = ServeProcess(tmp_path / "serve", ["--flush-interval", "30"]).start()  # nothing flushes on time
    body = traces_request([span("late", 500 + i * 2, now_ns()) for i in range(10)]).SerializeToString()
    result: dict[str, int] = {}
    sender = threading.Thread(target=lambda: result.update(status=post(serve.otlp_http, "traces", body).status_code))
    sender.start()
    time.sleep(1.0)  # the request is queued, waiting for its write
    started = time.monotonic()
    assert serve.stop(signal.SIGTERM) == 0
    sender.join(30)
    assert result == {"status": 200}  # acknowledged only once written
    assert time.monotonic() - started < 20
    with serve.store() as client:
        assert client.query("SELECT count() FROM otel_traces").result_rows == [(10,)]
