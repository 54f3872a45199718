"""otlp_ingest.proto (what ClickHouse reads requests with) agrees with the real OTLP messages on the wire."""

from __future__ import annotations

import re
from pathlib import Path

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

import tokenmeter.collector

SCHEMA = Path(tokenmeter.collector.__file__).with_name("otlp_ingest.proto")

# our message -> the OTLP message it reads
COUNTERPARTS: dict[str, Descriptor] = {
    "AnyValueLeaf": common_pb2.AnyValue.DESCRIPTOR,
    "KeyValueLeaf": common_pb2.KeyValue.DESCRIPTOR,
    "ArrayValue": common_pb2.ArrayValue.DESCRIPTOR,
    "KeyValueList": common_pb2.KeyValueList.DESCRIPTOR,
    "AnyValue": common_pb2.AnyValue.DESCRIPTOR,
    "KeyValue": common_pb2.KeyValue.DESCRIPTOR,
    "Resource": resource_pb2.Resource.DESCRIPTOR,
    "InstrumentationScope": common_pb2.InstrumentationScope.DESCRIPTOR,
    "Status": trace_pb2.Status.DESCRIPTOR,
    "SpanEvent": trace_pb2.Span.Event.DESCRIPTOR,
    "SpanLink": trace_pb2.Span.Link.DESCRIPTOR,
    "Span": trace_pb2.Span.DESCRIPTOR,
    "ScopeSpans": trace_pb2.ScopeSpans.DESCRIPTOR,
    "ResourceSpans": trace_pb2.ResourceSpans.DESCRIPTOR,
    "ExportTraceServiceRequest": trace_service_pb2.ExportTraceServiceRequest.DESCRIPTOR,
    "Exemplar": metrics_pb2.Exemplar.DESCRIPTOR,
    "NumberDataPoint": metrics_pb2.NumberDataPoint.DESCRIPTOR,
    "HistogramDataPoint": metrics_pb2.HistogramDataPoint.DESCRIPTOR,
    "Gauge": metrics_pb2.Gauge.DESCRIPTOR,
    "Sum": metrics_pb2.Sum.DESCRIPTOR,
    "Histogram": metrics_pb2.Histogram.DESCRIPTOR,
    "Metric": metrics_pb2.Metric.DESCRIPTOR,
    "ScopeMetrics": metrics_pb2.ScopeMetrics.DESCRIPTOR,
    "ResourceMetrics": metrics_pb2.ResourceMetrics.DESCRIPTOR,
    "ExportMetricsServiceRequest": metrics_service_pb2.ExportMetricsServiceRequest.DESCRIPTOR,
    "LogRecord": logs_pb2.LogRecord.DESCRIPTOR,
    "ScopeLogs": logs_pb2.ScopeLogs.DESCRIPTOR,
    "ResourceLogs": logs_pb2.ResourceLogs.DESCRIPTOR,
    "ExportLogsServiceRequest": logs_service_pb2.ExportLogsServiceRequest.DESCRIPTOR,
}

_VARINT = {"int32", "int64", "uint32", "uint64", "bool", "sint32", "sint64"}
_FIXED64 = {"fixed64", "sfixed64", "double"}
_FIXED32 = {"fixed32", "sfixed32", "float"}
_DESCRIPTOR_WIRE = {
    **dict.fromkeys((FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT32,
                     FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_BOOL, FieldDescriptor.TYPE_ENUM,
                     FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SINT64), 0),
    **dict.fromkeys((FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64, FieldDescriptor.TYPE_DOUBLE), 1),
    **dict.fromkeys((FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES, FieldDescriptor.TYPE_MESSAGE), 2),
    **dict.fromkeys((FieldDescriptor.TYPE_FIXED32, FieldDescriptor.TYPE_SFIXED32, FieldDescriptor.TYPE_FLOAT), 5),
}  # fmt: skip
_FIELD = re.compile(r"^\s*(repeated\s+)?(\w+)\s+(\w+)\s*=\s*(\d+);")


def _our_messages() -> dict[str, dict[int, tuple[str, str, bool]]]:
    """message -> field number -> (name, type, repeated), parsed from the schema text."""
    messages: dict[str, dict[int, tuple[str, str, bool]]] = {}
    current: list[str] = []
    for line in SCHEMA.read_text(encoding="utf-8").splitlines():
        if match := re.match(r"^message (\w+) \{", line):
            current = [match.group(1)]
            messages[current[0]] = {}
        elif current and (field := _FIELD.match(line)):
            repeated, kind, name, number = field.groups()
            messages[current[0]][int(number)] = (name, kind, bool(repeated))
    return messages


def _wire_type(kind: str) -> int:
    if kind in _VARINT:
        return 0
    if kind in _FIXED64:
        return 1
    if kind in _FIXED32:
        return 5
    return 2  # string, bytes, messages


def test_every_schema_message_has_an_otlp_counterpart() -> None:
    assert set(_our_messages()) == set(COUNTERPARTS)


def test_field_numbers_names_and_wire_types_match_otlp() -> None:
    problems = []
    for message, fields in _our_messages().items():
        real = COUNTERPARTS[message]
        for number, (name, kind, repeated) in fields.items():
            counterpart = real.fields_by_number.get(number)
            if counterpart is None:
                problems.append(f"{message}.{name} = {number}: no such field in {real.full_name}")
                continue
            if counterpart.name != name:
                problems.append(f"{message}.{name} = {number}: OTLP calls it {counterpart.name}")
            if _DESCRIPTOR_WIRE[counterpart.type] != _wire_type(kind):
                problems.append(f"{message}.{name}: wire type of {kind} differs from OTLP's")
            if counterpart.is_repeated != repeated:
                problems.append(f"{message}.{name}: repeated differs from OTLP")
    assert not problems, "\n".join(problems)


def test_the_fields_the_views_need_are_declared() -> None:
    ours = _our_messages()
    assert {name for name, _, _ in ours["Span"].values()} >= {
        "trace_id", "span_id", "parent_span_id", "name", "kind", "start_time_unix_nano", "end_time_unix_nano",
        "attributes", "events", "links", "status",
    }  # fmt: skip
    assert {name for name, _, _ in ours["Metric"].values()} == {"name", "description", "unit", "gauge", "sum",
                                                                 "histogram"}  # fmt: skip
