"""OTLP/gRPC receiver: the three collector services' ``Export`` methods on grpc.aio.

Requests arrive as raw bytes (no deserializer), are validated once and go to the
store as they are. gRPC handles gzip itself. A full queue answers
RESOURCE_EXHAUSTED with a ``google.rpc.RetryInfo`` in the trailers, which the Python
SDK's exporter reads as its back-off; a failing store answers UNAVAILABLE.
"""

from __future__ import annotations

import logging
from typing import Final

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2

from tokenmeter.collector.counter_guard import CounterGuard
from tokenmeter.collector.ingest_queue import IngestQueue, QueueClosedError, QueueFullError
from tokenmeter.collector.limits import (
    DEFAULT_GRPC_MAX_CONNECTION_AGE_SECONDS,
    DEFAULT_MAX_REQUEST_BYTES,
    RETRY_AFTER_SECONDS,
)
from tokenmeter.collector.payloads import PayloadError, Signal, decode_protobuf
from tokenmeter.server.bearer import BearerToken
from tokenmeter.server.body_deadline import DEFAULT_BODY_TIMEOUT_SECONDS

logger = logging.getLogger(__name__)

TRANSPORT: Final = "grpc"
_SERVICES: Final[dict[Signal, str]] = {
    Signal.TRACES: "opentelemetry.proto.collector.trace.v1.TraceService",
    Signal.METRICS: "opentelemetry.proto.collector.metrics.v1.MetricsService",
    Signal.LOGS: "opentelemetry.proto.collector.logs.v1.LogsService",
}


def otlp_grpc_server(
    queue: IngestQueue,
    *,
    token: str | None = None,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    guard: CounterGuard | None = None,
    max_connection_age: float = DEFAULT_GRPC_MAX_CONNECTION_AGE_SECONDS,
    connection_grace: float = DEFAULT_BODY_TIMEOUT_SECONDS,
) -> grpc.aio.Server:
    """A grpc.aio server with the OTLP services registered; the caller adds ports and starts it.

    ``guard``: share one with the HTTP receiver, so a series is screened alike on both.
    A request whose message never arrives whole is not a call gRPC gives the handler, so no
    deadline of ours applies to it: connections are closed after ``max_connection_age`` seconds
    (clients reconnect; calls in flight get ``connection_grace`` seconds to finish), which bounds
    how long such a request can hold one.
    """
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_request_bytes),
            ("grpc.max_send_message_length", 4 * 1024 * 1024),
            ("grpc.max_connection_age_ms", int(max_connection_age * 1000)),
            ("grpc.max_connection_age_grace_ms", int(connection_grace * 1000)),
        ]
    )
    receiver = _GrpcReceiver(queue, token, guard or CounterGuard())
    for signal, service in _SERVICES.items():
        handler = grpc.unary_unary_rpc_method_handler(receiver.export_method(signal))
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, {"Export": handler}),))
    return server


def _retry_trailer(seconds: float) -> tuple[tuple[str, bytes], ...]:
    delay = duration_pb2.Duration(seconds=int(seconds), nanos=int((seconds % 1) * 1e9))
    return (("google.rpc.retryinfo-bin", error_details_pb2.RetryInfo(retry_delay=delay).SerializeToString()),)


class _GrpcReceiver:
    def __init__(self, queue: IngestQueue, token: str | None, guard: CounterGuard) -> None:
        self._queue = queue
        self._bearer = BearerToken(token)
        self._guard = guard

    def export_method(self, signal: Signal):
        async def export(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return await self._export(signal, request, context)

        return export

    async def _export(self, signal: Signal, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        stats = self._queue.stats
        if not self._bearer.allows(dict(context.invocation_metadata() or ()).get("authorization")):
            stats.count_request(signal.value, TRANSPORT, "unauthorized", 0)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
        try:
            payload = decode_protobuf(signal, request, self._guard)
        except PayloadError as exc:
            logger.warning("refused OTLP/gRPC %s request from %s: %s", signal.value, context.peer(), exc.message)
            stats.count_request(signal.value, TRANSPORT, "rejected", 0)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.message)
        if payload.screening is not None and payload.screening.count:
            logger.warning("OTLP/gRPC metrics from %s: %s", context.peer(), payload.screening.message())
            stats.count_rejected_points(payload.screening.by_reason())
        response = signal.response_type()
        if payload.refused_items:
            response.partial_success.rejected_data_points = payload.refused_items  # type: ignore[attr-defined]
            response.partial_success.error_message = payload.refused_reason  # type: ignore[attr-defined]
        if payload.items == 0:
            stats.count_request(signal.value, TRANSPORT, "refused" if payload.refused_items else "written", 0)
            return response.SerializeToString()
        try:
            result = await self._queue.write(payload)
        except QueueFullError as exc:
            stats.count_request(signal.value, TRANSPORT, "throttled", payload.items)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc), _retry_trailer(exc.retry_after))
        except QueueClosedError as exc:
            stats.count_request(signal.value, TRANSPORT, "unavailable", payload.items)
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc), _retry_trailer(RETRY_AFTER_SECONDS))
        stats.count_request(signal.value, TRANSPORT, result.outcome, payload.items)
        if result.outcome == "rejected":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, result.message)
        if result.outcome == "unavailable":
            await context.abort(grpc.StatusCode.UNAVAILABLE, result.message, _retry_trailer(RETRY_AFTER_SECONDS))
        return response.SerializeToString()
