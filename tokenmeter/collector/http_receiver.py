"""OTLP/HTTP receiver: POST /v1/traces, /v1/metrics, /v1/logs (protobuf or JSON, gzip).

Status codes follow the OTLP/HTTP spec, so the SDK exporters do the right thing:
200 stored (with ``partial_success`` when metric points of unstored kinds, or points of
tokenmeter's counters that cannot be usage, were refused), 400 malformed, 401 bad token, 413 too large, 415 unsupported
type/encoding, 429 queue full and 503 store unavailable or shutting down (both with
``Retry-After``; the SDKs retry those).
"""

from __future__ import annotations

import logging
from typing import Final

from google.protobuf import json_format
from google.rpc import status_pb2
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from tokenmeter.collector.counter_guard import CounterGuard
from tokenmeter.collector.ingest_queue import (
    IngestQueue,
    QueueClosedError,
    QueueFullError,
    WriteResult,
)
from tokenmeter.collector.limits import DEFAULT_MAX_REQUEST_BYTES, RETRY_AFTER_SECONDS
from tokenmeter.collector.payloads import (
    JSON_CONTENT_TYPE,
    PROTOBUF_CONTENT_TYPE,
    OtlpPayload,
    PayloadError,
    Signal,
    decode_body,
)
from tokenmeter.server.bearer import BearerToken

logger = logging.getLogger(__name__)

TRANSPORT: Final = "http"


def otlp_http_app(
    queue: IngestQueue,
    *,
    token: str | None = None,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    guard: CounterGuard | None = None,
) -> Starlette:
    """The ASGI app serving the three OTLP/HTTP paths (``guard``: share one with the gRPC receiver)."""
    receiver = _HttpReceiver(queue, token, max_request_bytes, guard or CounterGuard())
    routes = [Route(f"/v1/{signal.value}", receiver.endpoint(signal), methods=["POST"]) for signal in Signal]
    return Starlette(routes=routes)


class _HttpReceiver:
    def __init__(self, queue: IngestQueue, token: str | None, max_request_bytes: int, guard: CounterGuard) -> None:
        self._queue = queue
        self._bearer = BearerToken(token)
        self._max_request_bytes = max_request_bytes
        self._guard = guard

    def endpoint(self, signal: Signal):
        async def receive(request: Request) -> Response:
            return await self._receive(signal, request)

        return receive

    async def _receive(self, signal: Signal, request: Request) -> Response:
        as_json = request.headers.get("content-type", "").split(";", 1)[0].strip().lower() == JSON_CONTENT_TYPE
        if not self._bearer.allows(request.headers.get("authorization")):
            self._queue.stats.count_request(signal.value, TRANSPORT, "unauthorized", 0)
            return _status_response(401, "missing or wrong bearer token", as_json, {"WWW-Authenticate": "Bearer"})
        try:
            body = await self._read_body(request)
            payload = decode_body(
                signal,
                body,
                request.headers.get("content-type", ""),
                request.headers.get("content-encoding", ""),
                self._max_request_bytes,
                guard=self._guard,
            )
        except PayloadError as exc:
            logger.warning("refused OTLP/HTTP %s request from %s: %s", signal.value, _peer(request), exc.message)
            self._queue.stats.count_request(signal.value, TRANSPORT, "rejected", 0)
            return _status_response(exc.http_status, exc.message, as_json)
        except ClientDisconnect:
            return Response(status_code=499)
        if payload.screening is not None and payload.screening.count:
            logger.warning("OTLP/HTTP metrics from %s: %s", _peer(request), payload.screening.message())
            self._queue.stats.count_rejected_points(payload.screening.by_reason())
        return await self._store(signal, payload, as_json)

    async def _store(self, signal: Signal, payload: OtlpPayload, as_json: bool) -> Response:
        stats = self._queue.stats
        if payload.items == 0:
            stats.count_request(signal.value, TRANSPORT, "refused" if payload.refused_items else "written", 0)
            return _export_response(signal, payload, as_json)
        try:
            result: WriteResult = await self._queue.write(payload)
        except QueueFullError as exc:
            stats.count_request(signal.value, TRANSPORT, "throttled", payload.items)
            return _status_response(429, str(exc), as_json, {"Retry-After": _seconds(exc.retry_after)})
        except QueueClosedError as exc:
            stats.count_request(signal.value, TRANSPORT, "unavailable", payload.items)
            return _status_response(503, str(exc), as_json, {"Retry-After": _seconds(RETRY_AFTER_SECONDS)})
        stats.count_request(signal.value, TRANSPORT, result.outcome, payload.items)
        if result.outcome in {"written", "duplicate"}:
            return _export_response(signal, payload, as_json)
        if result.outcome == "rejected":
            return _status_response(400, result.message, as_json)
        return _status_response(503, result.message, as_json, {"Retry-After": _seconds(RETRY_AFTER_SECONDS)})

    async def _read_body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self._max_request_bytes:
            raise PayloadError(413, f"request body of {declared} bytes is over the limit of {self._max_request_bytes}")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self._max_request_bytes:
                raise PayloadError(413, f"request body is over the limit of {self._max_request_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)


def _peer(request: Request) -> str:
    return request.client.host if request.client else "?"


def _export_response(signal: Signal, payload: OtlpPayload, as_json: bool) -> Response:
    response = signal.response_type()
    if payload.refused_items:
        partial = response.partial_success  # type: ignore[attr-defined]
        partial.rejected_data_points = payload.refused_items
        partial.error_message = payload.refused_reason
    return _message_response(200, response, as_json)


def _status_response(code: int, message: str, as_json: bool, headers: dict[str, str] | None = None) -> Response:
    # OTLP/HTTP: error bodies are a google.rpc.Status in the request's encoding.
    return _message_response(code, status_pb2.Status(code=_grpc_code(code), message=message), as_json, headers)


def _message_response(code: int, message: object, as_json: bool, headers: dict[str, str] | None = None) -> Response:
    if as_json:
        body = json_format.MessageToJson(message, indent=None).encode()  # type: ignore[arg-type]
        return Response(body, status_code=code, media_type=JSON_CONTENT_TYPE, headers=headers)
    return Response(
        message.SerializeToString(),  # type: ignore[attr-defined]
        status_code=code,
        media_type=PROTOBUF_CONTENT_TYPE,
        headers=headers,
    )


def _grpc_code(http_status: int) -> int:
    # google.rpc.Code numbers for the statuses this receiver sends.
    return {400: 3, 401: 16, 413: 3, 415: 3, 429: 8, 503: 14}.get(http_status, 2)


def _seconds(value: float) -> str:
    return str(max(1, round(value)))
