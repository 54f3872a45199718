"""OTLP request payloads: decompress, decode (protobuf or JSON), validate, count.

The receiver never builds rows in Python: a validated request's protobuf bytes go to
ClickHouse as they are (see tokenmeter/store/sql/0006_otlp_ingest.sql). Validation
here is what keeps one bad request from failing a whole batch: it must parse as the
OTLP message (upb checks wire format and UTF-8), and metric kinds the store has no
table for are counted so the response can say how many points were refused. Points of
tokenmeter's own counters that cannot be usage are removed by the receiver's
:class:`~tokenmeter.collector.counter_guard.CounterGuard` (the request is then
serialized again without them).
"""

from __future__ import annotations

import base64
import enum
import hashlib
import json
import logging
import zlib
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Final

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from tokenmeter.collector.counter_guard import CounterGuard, Screening
from tokenmeter.collector.limits import DEFAULT_MAX_REQUEST_BYTES
from tokenmeter.errors import TokenmeterError

logger = logging.getLogger(__name__)

PROTOBUF_CONTENT_TYPE: Final = "application/x-protobuf"
JSON_CONTENT_TYPE: Final = "application/json"
# Metric kinds with an otel_* table; the exporter's summary and exponential histogram
# tables are not part of tokenmeter's schema (nothing tokenmeter emits uses them).
_STORED_METRIC_KINDS: Final = frozenset({"gauge", "sum", "histogram"})
# OTLP/JSON spells ids as hex; protobuf's JSON mapping expects base64 for bytes.
_ID_FIELDS: Final = frozenset({"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"})


class Signal(enum.Enum):
    TRACES = "traces"
    METRICS = "metrics"
    LOGS = "logs"

    @property
    def request_type(self) -> type[Message]:
        return _REQUEST_TYPES[self]

    @property
    def response_type(self) -> type[Message]:
        return _RESPONSE_TYPES[self]

    @property
    def input_table(self) -> str:
        """The Null-engine table whose views flatten this signal into otel_* tables."""
        return f"otlp_{self.value}_in"

    @property
    def schema_message(self) -> str:
        """The message name in otlp_ingest.proto that one request is."""
        return self.request_type.DESCRIPTOR.name


_REQUEST_TYPES: Final[dict[Signal, type[Message]]] = {
    Signal.TRACES: trace_service_pb2.ExportTraceServiceRequest,
    Signal.METRICS: metrics_service_pb2.ExportMetricsServiceRequest,
    Signal.LOGS: logs_service_pb2.ExportLogsServiceRequest,
}
_RESPONSE_TYPES: Final[dict[Signal, type[Message]]] = {
    Signal.TRACES: trace_service_pb2.ExportTraceServiceResponse,
    Signal.METRICS: metrics_service_pb2.ExportMetricsServiceResponse,
    Signal.LOGS: logs_service_pb2.ExportLogsServiceResponse,
}


class PayloadError(TokenmeterError):
    """A request the receiver refuses; ``http_status`` is 400, 413 or 415."""

    def __init__(self, http_status: int, message: str) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.message = message


@dataclass(frozen=True)
class OtlpPayload:
    """One validated export request, ready for the store."""

    signal: Signal
    protobuf: bytes
    items: int  # spans / data points / log records that will be stored
    refused_items: int = 0  # data points not stored: metric kinds without a table, counter points refused
    refused_reason: str = ""
    screening: Screening | None = None  # what the counter guard refused, if it screened the request

    @cached_property  # hashing a large request twice (queue and finish) showed in profiles
    def digest(self) -> bytes:
        """Identity of the request's content: an SDK retry re-sends the same bytes."""
        return hashlib.blake2b(self.protobuf, digest_size=16, person=self.signal.value.encode()).digest()


def decompress(body: bytes, content_encoding: str, max_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> bytes:
    """The request body without its Content-Encoding, refusing more than ``max_bytes``."""
    encoding = content_encoding.strip().lower()
    if encoding in {"", "identity"}:
        if len(body) > max_bytes:
            raise PayloadError(413, f"request body of {len(body)} bytes is over the limit of {max_bytes}")
        return body
    if encoding not in {"gzip", "deflate"}:
        raise PayloadError(415, f"Content-Encoding {content_encoding!r} is not supported; use gzip or none")
    # wbits: gzip header for gzip, zlib header for deflate; bounded output so a
    # compression bomb cannot take the process's memory.
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    try:
        data = inflater.decompress(body, max_bytes + 1)
    except zlib.error as exc:
        raise PayloadError(400, f"body is not valid {encoding} data: {exc}") from None
    if len(data) > max_bytes:
        raise PayloadError(413, f"decompressed request is over the limit of {max_bytes} bytes")
    if not inflater.eof:
        raise PayloadError(400, f"{encoding} body is truncated")
    return data


def parse_protobuf(signal: Signal, data: bytes) -> Message:
    try:
        return signal.request_type.FromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise PayloadError(400, f"body is not a valid OTLP {signal.value} protobuf request: {exc}") from None


def parse_json(signal: Signal, data: bytes) -> Message:
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadError(400, f"body is not valid JSON: {exc}") from None
    except RecursionError:  # the parser recurses per nesting level: 100k nested arrays end here
        raise PayloadError(400, "body is not valid OTLP/JSON: nested too deeply") from None
    if not isinstance(document, dict):
        raise PayloadError(400, f"OTLP/JSON {signal.value} request must be a JSON object")
    try:
        _hex_ids_to_base64(document)
        return json_format.ParseDict(document, signal.request_type(), ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        raise PayloadError(400, f"body is not a valid OTLP/JSON {signal.value} request: {exc}") from None


def to_payload(
    signal: Signal, message: Message, protobuf: bytes | None = None, guard: CounterGuard | None = None
) -> OtlpPayload:
    """Count what a parsed request holds; ``protobuf`` is its wire form (serialized when not given).

    Refused metric kinds stay in the bytes: the store's schema does not declare them, so
    ClickHouse skips them like any unknown field. Counter points the ``guard`` refuses are
    removed from the message, which is then serialized again.
    """
    if signal is not Signal.METRICS:
        return OtlpPayload(signal, protobuf if protobuf is not None else message.SerializeToString(),
                           _count_items(signal, message))  # fmt: skip
    screening = _screen(guard, message)
    if protobuf is None or (screening is not None and screening.count):
        protobuf = message.SerializeToString()
    stored, refused, kinds = _count_metric_points(message)
    reasons = []
    if refused:
        reasons.append(
            f"{refused} data points of kind {', '.join(sorted(kinds))} were not stored: tokenmeter keeps gauge, "
            "sum and histogram metrics"
        )
    if screening is not None and screening.count:
        refused += screening.count
        reasons.append(screening.message())
    return OtlpPayload(signal, protobuf, stored, refused, "; ".join(reasons), screening)


def _screen(guard: CounterGuard | None, message: Message) -> Screening | None:
    if guard is None:
        return None
    try:
        return guard.screen(message)
    except Exception:  # a bug here must not refuse usage: the store's views keep bad points out too
        logger.exception("the counter guard failed; this request is stored unscreened")
        return None


def decode_protobuf(signal: Signal, data: bytes, guard: CounterGuard | None = None) -> OtlpPayload:
    """Validate raw protobuf bytes; the bytes themselves go to the store (unless the guard removed points)."""
    return to_payload(signal, parse_protobuf(signal, data), data, guard)


def decode_body(
    signal: Signal,
    body: bytes,
    content_type: str,
    content_encoding: str,
    max_bytes: int,
    *,
    guard: CounterGuard | None = None,
) -> OtlpPayload:
    """One OTLP/HTTP request body as a payload; raises PayloadError (400/413/415)."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    data = decompress(body, content_encoding, max_bytes)
    if media_type == PROTOBUF_CONTENT_TYPE:
        return decode_protobuf(signal, data, guard)
    if media_type == JSON_CONTENT_TYPE:
        return to_payload(signal, parse_json(signal, data), guard=guard)
    raise PayloadError(
        415, f"Content-Type {content_type!r} is not supported; use {PROTOBUF_CONTENT_TYPE} or {JSON_CONTENT_TYPE}"
    )


def _count_items(signal: Signal, message: Any) -> int:
    if signal is Signal.TRACES:
        return sum(len(scope.spans) for resource in message.resource_spans for scope in resource.scope_spans)
    return sum(len(scope.log_records) for resource in message.resource_logs for scope in resource.scope_logs)


def _count_metric_points(message: Any) -> tuple[int, int, set[str]]:
    stored = refused = 0
    refused_kinds: set[str] = set()
    for resource in message.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                kind = metric.WhichOneof("data")
                if kind is None:
                    continue
                points = len(getattr(metric, kind).data_points)
                if kind in _STORED_METRIC_KINDS:
                    stored += points
                else:
                    refused += points
                    refused_kinds.add(kind)
    return stored, refused, refused_kinds


def _hex_ids_to_base64(node: object, depth: int = 0) -> None:
    """OTLP/JSON writes trace and span ids as hex strings; protobuf JSON wants base64."""
    if depth > 64:
        raise ValueError("JSON nesting deeper than 64 levels")
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_FIELDS and isinstance(value, str) and value:
                try:
                    node[key] = base64.b64encode(bytes.fromhex(value)).decode("ascii")
                except ValueError:
                    raise ValueError(f"{key} {value!r} is not a hex id") from None
            else:
                _hex_ids_to_base64(value, depth + 1)
    elif isinstance(node, list):
        for item in node:
            _hex_ids_to_base64(item, depth + 1)
