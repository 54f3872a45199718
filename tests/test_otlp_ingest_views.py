"""The ingest views turn OTLP requests into otel_traces rows span by span, whatever the request's shape.

otlp_traces_in holds one column per span field (parallel arrays, migration 0013); these tests
check that every span still gets its own resource, scope, events, links and status when
messages are missing or empty at any level, and when one insert carries several requests.
"""

from __future__ import annotations

from types import SimpleNamespace

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue
from opentelemetry.proto.trace.v1 import trace_pb2
from otlp_requests import CHAT_CALL, attributes, now_ns, resource, span, traces_request

from tokenmeter import semconv
from tokenmeter.collector.ingest_queue import IngestSchema, insert_payloads, without_block_deduplication
from tokenmeter.collector.payloads import OtlpPayload, Signal, decode_protobuf


def _ragged_request(start: int, offset: int) -> ExportTraceServiceRequest:
    """Resources, scopes and spans of uneven counts, with messages left out at every level."""
    request = ExportTraceServiceRequest()
    first = request.resource_spans.add(resource=resource("svc-a"))
    named = first.scope_spans.add()
    named.scope.name, named.scope.version = "scope-1", "1.0"
    tags = AnyValue(array_value=ArrayValue(values=[AnyValue(string_value="x"), AnyValue(string_value="y")]))
    busy = span(f"a1-{offset}", offset + 1, start, {"i": 1, "tags": tags})
    busy.events.add(time_unix_nano=start + 1, name="e1", attributes=attributes({"k": "v"}))
    busy.events.add(time_unix_nano=start + 2, name="e2")
    busy.links.add(trace_id=b"\x05" * 16, span_id=b"\x06" * 8, attributes=attributes({"l": 2}))
    busy.status.code = trace_pb2.Status.STATUS_CODE_ERROR
    busy.status.message = "boom"
    quiet = span(f"a2-{offset}", offset + 2, start, {"i": 2})
    quiet.ClearField("status")
    named.spans.extend([busy, quiet])
    unnamed = first.scope_spans.add()  # no scope message
    unnamed.spans.append(span(f"a3-{offset}", offset + 3, start, {"i": 3}))
    second = request.resource_spans.add()  # no resource message
    second.scope_spans.add()  # a scope without spans
    other = second.scope_spans.add()
    other.scope.name = "scope-2"
    other.spans.append(span(f"b1-{offset}", offset + 4, start))
    request.resource_spans.add(resource=resource("svc-c"))  # a resource without scopes
    third = request.resource_spans.add(resource=resource("svc-d"))
    third.scope_spans.add().spans.append(span(f"d1-{offset}", offset + 5, start, {"i": 5}))
    return request


def _expected_rows(request: ExportTraceServiceRequest) -> list[tuple[object, ...]]:
    rows = []
    for resource_spans in request.resource_spans:
        service = next((kv.value.string_value for kv in resource_spans.resource.attributes
                        if kv.key == "service.name"), "")  # fmt: skip
        for scope_spans in resource_spans.scope_spans:
            for one in scope_spans.spans:
                rows.append((
                    one.name, one.span_id.hex(), service, scope_spans.scope.name, scope_spans.scope.version,
                    {kv.key: str(kv.value.int_value) for kv in one.attributes if kv.key == "i"},
                    [event.name for event in one.events], [link.trace_id.hex() for link in one.links],
                    trace_pb2.Status.StatusCode.Name(one.status.code), one.status.message,
                ))  # fmt: skip
    return sorted(rows, key=lambda row: str(row[0]))


def test_every_span_keeps_its_own_resource_scope_events_and_status(migrated_store) -> None:
    start = now_ns()
    requests = [_ragged_request(start, offset) for offset in (0, 100)]
    payloads = [decode_protobuf(Signal.TRACES, request.SerializeToString()) for request in requests]
    # two requests, one insert
    insert_payloads(migrated_store, Signal.TRACES, payloads, IngestSchema.for_store(embedded=True))

    rows = migrated_store.query(
        "SELECT SpanName, SpanId, ServiceName, ScopeName, ScopeVersion, mapFilter((k, v) -> k = 'i', SpanAttributes),"
        " Events.Name, Links.TraceId, StatusCode, StatusMessage FROM otel_traces ORDER BY SpanName"
    ).result_rows
    expected = [row for request in requests for row in _expected_rows(request)]
    assert [tuple(row) for row in rows] == sorted(expected, key=lambda row: str(row[0]))
    assert len(rows) == 10
    [(tags, event_attributes, link_attributes)] = migrated_store.query(
        "SELECT SpanAttributes['tags'], Events.Attributes, Links.Attributes FROM otel_traces WHERE SpanName = 'a1-0'"
    ).result_rows
    assert (tags, event_attributes, link_attributes) == ('["x","y"]', [{"k": "v"}, {}], [{"l": "2"}])


def _llm_call_request(span_index: int) -> OtlpPayload:
    request = traces_request([span("chat", span_index, now_ns(), CHAT_CALL)], scope=semconv.INSTRUMENTATION_SCOPE)
    return decode_protobuf(Signal.TRACES, request.SerializeToString())


def test_block_deduplication_is_kept_for_lone_requests_and_skipped_for_batches(migrated_store) -> None:
    """A lone request can come again byte for byte and is stored once; batches skip the hashing.

    Either way llm_usage counts each span once: it folds a span stored twice.
    """
    schema = IngestSchema.for_store(embedded=True)
    lone = _llm_call_request(1)
    batch = [_llm_call_request(11), _llm_call_request(21)]
    for _ in range(2):  # e.g. an SDK retry after the receiver restarted and forgot its digests
        insert_payloads(migrated_store, Signal.TRACES, [lone], schema)
        insert_payloads(migrated_store, Signal.TRACES, batch, schema)

    copies = migrated_store.query("SELECT SpanId, count() FROM otel_traces GROUP BY SpanId ORDER BY SpanId").result_rows
    assert copies == [((2).to_bytes(8, "big").hex(), 1), ((12).to_bytes(8, "big").hex(), 2),
                      ((22).to_bytes(8, "big").hex(), 2)]  # fmt: skip
    [(calls, tokens)] = migrated_store.query(
        "SELECT count(), sum(input_tokens + output_tokens) FROM llm_usage FINAL"
    ).result_rows
    assert (calls, tokens) == (3, 45)


def test_older_servers_get_the_setting_they_know(migrated_store) -> None:
    assert without_block_deduplication(migrated_store) == {"deduplicate_insert": "disable"}
    older_server = SimpleNamespace(server_settings={"insert_deduplicate": "1"})  # no deduplicate_insert yet
    assert without_block_deduplication(older_server) == {"insert_deduplicate": "0"}  # type: ignore[arg-type]
