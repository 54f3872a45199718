"""``POST /v1/feedback``: a rating of an answer, for apps that do not send it themselves (docs/compare.md).

Body (JSON): ``{"score": 0..100, "message_id" | "response_id", "reason"?, "user"?, "department"?, "app"?}``:
the answer rated is the app's message id or a call's response id (one of the two); who rated it, optionally.
It becomes ONE OTLP log record, the event ``tokenmeter.feedback`` under the instrumentation scope
``tokenmeter``, exactly as the app side records a rating (docs/instrumentation.md, "Ratings"), and goes into
the embedded receiver's ingest queue: the same path into ``otel_logs`` and ``answer_ratings`` as an app's
export. The reason is never stored as text unless content capture is on
(``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT``); its keyed hash is (TOKENMETER_HASH_KEY), the
same hash as the prompts'.

Behind the API token (it changes what the store holds). 202 with what was recorded once it is stored; 400
names the bad field and stores nothing; 429 / 503 (with Retry-After) when the queue is full or the store
unavailable: send it again (a rating sent twice counts once, the later one of an answer replaces the earlier).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tokenmeter import __version__, semconv
from tokenmeter.collector.ingest_queue import IngestQueue, QueueClosedError, QueueFullError
from tokenmeter.collector.limits import RETRY_AFTER_SECONDS
from tokenmeter.collector.payloads import Signal, to_payload
from tokenmeter.log_once import LogOnce
from tokenmeter.settings import capture_message_content, get_settings, hash_key_bytes
from tokenmeter.text_digest import text_digest
from tokenmeter.web.routes import Handler

logger = logging.getLogger(__name__)
_log_once = LogOnce(logger)

MAX_BODY_BYTES: Final = 64 * 1024
# The resource of the records serve makes: a rating without "app" shows this as its app.
SERVICE_NAME: Final = "tokenmeter-serve"
_SEVERITY_INFO: Final = 9
_NAME: Final = 256


class FeedbackBody(BaseModel):
    """A rating as ``POST /v1/feedback`` takes it."""

    model_config = ConfigDict(extra="forbid")

    score: float = Field(ge=0, le=100, strict=True, allow_inf_nan=False)
    message_id: str | None = Field(default=None, min_length=1, max_length=_NAME)
    response_id: str | None = Field(default=None, min_length=1, max_length=_NAME)
    reason: str | None = Field(default=None, max_length=8000)
    user: str | None = Field(default=None, max_length=_NAME)
    department: str | None = Field(default=None, max_length=_NAME)
    app: str | None = Field(default=None, max_length=_NAME)

    @field_validator("message_id", "user", "department", "app")
    @classmethod
    def _stripped(cls, value: str | None, info: ValidationInfo) -> str | None:
        """Spaces around a name dropped, as the app side's attribution drops them (so a message id still matches)."""
        if value is None:
            return None
        if not value.strip() and info.field_name == "message_id":
            raise ValueError("is empty")
        return value.strip() or None

    @field_validator("response_id")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():  # kept as sent otherwise: it is compared with the server's id
            raise ValueError("is empty")
        return value

    @model_validator(mode="after")
    def _one_answer(self) -> FeedbackBody:
        if (self.message_id is None) == (self.response_id is None):
            raise ValueError("name the answer rated with message_id (the app's id) or response_id (a call's "
                             "gen_ai.response.id), one of the two")  # fmt: skip
        return self


def feedback_routes(queue: IngestQueue, guard: Callable[[Handler], Handler]) -> list[Route]:
    endpoint = FeedbackEndpoint(queue, hash_key_bytes(get_settings()), capture_message_content())
    return [Route("/v1/feedback", guard(endpoint.feedback), methods=["POST"])]


class FeedbackEndpoint:
    def __init__(self, queue: IngestQueue, hash_key: bytes | None, capture_content: bool) -> None:
        self._queue = queue
        self._hash_key = hash_key
        self._capture_content = capture_content

    async def feedback(self, request: Request) -> Response:
        try:
            body = FeedbackBody.model_validate_json(await _read_body(request))
        except ValidationError as exc:
            return _error(400, _validation_message(exc))
        except _BodyError as exc:
            return _error(exc.status, str(exc))
        if body.reason and body.reason.strip() and not self._hash_key:
            _log_once.warning("feedback-unkeyed", "TOKENMETER_HASH_KEY is not set: rating reasons are hashed with "
                              "plain SHA-256, and short reasons can be recovered by guessing")  # fmt: skip
        rated_at = time.time_ns()
        attributes = feedback_attributes(body, self._hash_key, self._capture_content)
        refusal = await self._store(feedback_request(attributes, rated_at))
        if refusal is not None:
            return refusal
        when = datetime.fromtimestamp(rated_at / 1e9, UTC).isoformat()
        recorded = {"event_name": semconv.EVENT_FEEDBACK, "scope": semconv.INSTRUMENTATION_SCOPE, "rated_at": when,
                    "attributes": attributes}  # fmt: skip
        return JSONResponse({"recorded": recorded}, status_code=202)

    async def _store(self, request: ExportLogsServiceRequest) -> Response | None:
        """None once the record is stored; else the answer that says to send it again."""
        retry = {"Retry-After": str(max(1, round(RETRY_AFTER_SECONDS)))}
        try:
            result = await self._queue.write(to_payload(Signal.LOGS, request))
        except QueueFullError as exc:
            return _error(429, str(exc), {"Retry-After": str(max(1, round(exc.retry_after)))})
        except QueueClosedError as exc:
            return _error(503, str(exc), retry)
        if result.outcome in {"written", "duplicate"}:
            return None
        logger.warning("a rating was not stored: %s", result.message)
        return _error(503, f"the rating was not stored ({result.message}); send it again", retry)


def feedback_attributes(body: FeedbackBody, hash_key: bytes | None, capture_content: bool) -> dict[str, Any]:
    """The record's attributes (docs/instrumentation.md, "Ratings"): only what was given."""
    attributes: dict[str, Any] = {semconv.EVENT_NAME: semconv.EVENT_FEEDBACK, semconv.TM_FEEDBACK_SCORE: body.score}
    named = {
        semconv.TM_MESSAGE_ID: body.message_id, semconv.GEN_AI_RESPONSE_ID: body.response_id,
        semconv.ENDUSER_ID: body.user, semconv.TM_DEPARTMENT: body.department, semconv.TM_APP: body.app,
    }  # fmt: skip
    attributes |= {name: value for name, value in named.items() if value}
    if body.reason and body.reason.strip():  # the text as written: its hash matches the app side's
        attributes[semconv.TM_FEEDBACK_REASON_HASH] = text_digest(body.reason, hash_key)
        if capture_content:
            attributes[semconv.TM_FEEDBACK_REASON] = body.reason
    return attributes


def feedback_request(attributes: dict[str, Any], rated_at_ns: int) -> ExportLogsServiceRequest:
    """One log record, the event ``tokenmeter.feedback`` under the scope ``tokenmeter``, at ``rated_at_ns``."""
    record = logs_pb2.LogRecord(
        time_unix_nano=rated_at_ns, observed_time_unix_nano=rated_at_ns, severity_number=_SEVERITY_INFO,
        severity_text="INFO", event_name=semconv.EVENT_FEEDBACK,
        attributes=[KeyValue(key=name, value=_any_value(value)) for name, value in attributes.items()],
    )  # fmt: skip
    scope = InstrumentationScope(name=semconv.INSTRUMENTATION_SCOPE, version=__version__)
    service = Resource(attributes=[KeyValue(key=semconv.SERVICE_NAME, value=AnyValue(string_value=SERVICE_NAME))])
    return ExportLogsServiceRequest(resource_logs=[logs_pb2.ResourceLogs(
        resource=service, scope_logs=[logs_pb2.ScopeLogs(scope=scope, log_records=[record])])])  # fmt: skip


def _any_value(value: Any) -> AnyValue:
    return AnyValue(double_value=value) if isinstance(value, float) else AnyValue(string_value=str(value))


class _BodyError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _BodyError(413, f"the body of {declared} bytes is over the limit of {MAX_BODY_BYTES}")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise _BodyError(413, f"the body is over the limit of {MAX_BODY_BYTES} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise _BodyError(400, "the client went away before the body was complete") from None
    return b"".join(chunks)


def _validation_message(exc: ValidationError) -> str:
    """E.g. ``score: Input should be less than or equal to 100``; one line per problem, ``;``-joined."""
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "body"
        message = str(error["msg"]).removeprefix("Value error, ")
        problems.append(f"{where}: {message}")
    hint = ' (a JSON object such as {"score": 80, "message_id": "..."})'
    return "; ".join(problems) + (
        hint if any(e["type"] in {"json_invalid", "model_type"} for e in exc.errors()) else ""
    )


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": message}, status_code=status, headers=headers)
