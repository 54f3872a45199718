"""Read the OpenAI Batch API's JSONL files: the requests of an input file, the results of an output file.

An input line is ``{"custom_id", "method", "url", "body"}``: ``body`` is the request as the endpoint takes it.
A result line (output or error file) is ``{"id", "custom_id", "response": {"status_code", "request_id", "body"},
"error"}``: ``body`` is what the endpoint answered (a chat completion, a text completion, a list of embeddings, a
response). Pure functions over bytes and plain JSON data; nothing here does I/O or touches telemetry.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from tokenmeter import semconv
from tokenmeter.instrumentation import responses_payload
from tokenmeter.instrumentation.openai_payload import embedding_inputs, request_messages
from tokenmeter.instrumentation.responses_payload import ChatShapedResponse

# The endpoints a batch may run, by the GenAI operation each call is metered as.
ENDPOINT_OPERATIONS: Final = {
    "/v1/chat/completions": semconv.OPERATION_CHAT,
    "/v1/completions": semconv.OPERATION_TEXT_COMPLETION,
    "/v1/embeddings": semconv.OPERATION_EMBEDDINGS,
    "/v1/responses": semconv.OPERATION_CHAT,
}
# A result body's ``object``, by the operation it answered.
_OBJECT_OPERATIONS: Final = {
    "chat.completion": semconv.OPERATION_CHAT,
    "text_completion": semconv.OPERATION_TEXT_COMPLETION,
    "list": semconv.OPERATION_EMBEDDINGS,
    "response": semconv.OPERATION_CHAT,
}
# The request fields that limit the output, chat completions' names first, then the Responses API's.
_OUTPUT_LIMITS: Final = ("max_completion_tokens", "max_tokens", "max_output_tokens")


def _json_lines(data: bytes) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSONL file, in order; blank lines and lines that are not objects are skipped."""
    for raw in data.splitlines():
        if not raw.strip():
            continue
        try:
            item = json.loads(raw)
        except ValueError:
            continue
        if isinstance(item, dict):
            yield item


# --- input files ------------------------------------------------------------------------------------------------


def request_bodies(data: bytes) -> list[dict[str, Any]]:
    """The request bodies of an input file (lines without a ``body`` mapping are not requests)."""
    return [line["body"] for line in _json_lines(data) if isinstance(line.get("body"), dict)]


def request_input(operation: str, body: Mapping[str, Any], responses: bool) -> Any:
    """What one request sends the model, as the quota check estimates it: chat messages, or the inputs."""
    if responses:
        return responses_payload.request_messages(body)
    if operation == semconv.OPERATION_CHAT:
        return request_messages(body)
    return embedding_inputs(body.get("input" if operation == semconv.OPERATION_EMBEDDINGS else "prompt"))


def output_limit(body: Mapping[str, Any]) -> int | None:
    """The request's output limit (max_completion_tokens, max_tokens or max_output_tokens), if it gives one."""
    for name in _OUTPUT_LIMITS:
        limit = body.get(name)
        if isinstance(limit, int) and not isinstance(limit, bool) and limit >= 0:
            return limit
    return None


def with_models_swapped(data: bytes, swaps: Mapping[str, str]) -> bytes:
    """The input file with every request of a model in ``swaps`` sent to the model it maps to (a downgrade);
    other lines, and lines that are not requests, stay byte for byte."""
    out: list[bytes] = []
    for raw in data.splitlines(keepends=True):
        try:
            line = json.loads(raw) if raw.strip() else None
        except ValueError:
            line = None
        body = line.get("body") if isinstance(line, dict) else None
        if isinstance(body, dict) and body.get("model") in swaps:
            body["model"] = swaps[body["model"]]
            ending = raw[len(raw.rstrip(b"\r\n")) :]
            out.append(json.dumps(line, ensure_ascii=False).encode() + ending)
        else:
            out.append(raw)
    return b"".join(out)


# --- result files -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchResult:
    """One line of a batch's output or error file: one call the Batch API ran, or failed to."""

    custom_id: str
    status_code: int | None  # None: the request was not run (an ``error`` line)
    body: Mapping[str, Any] | None
    error_code: str | None  # error.type: a failed response's HTTP status, else the line's error code; None: success

    @property
    def succeeded(self) -> bool:
        return self.status_code == 200 and self.error_code is None and self.body is not None


def looks_like_results(data: bytes) -> bool:
    """Cheap test on the first line, before a whole file is parsed: is it a batch's output or error file?"""
    first = data.lstrip()[:4096].split(b"\n", 1)[0]
    if not first.startswith(b"{") or b'"custom_id"' not in first:
        return False
    return _result_line(next(_json_lines(first), None)) is not None


def batch_results(data: bytes) -> list[BatchResult] | None:
    """The results of an output or error file; None when ``data`` is not one (any other file)."""
    if not looks_like_results(data):
        return None
    return [result for line in _json_lines(data) if (result := _result_line(line)) is not None]


def _result_line(line: Mapping[str, Any] | None) -> BatchResult | None:
    if line is None or not isinstance(line.get("custom_id"), str) or "response" not in line:
        return None
    response = line.get("response")
    status = response.get("status_code") if isinstance(response, Mapping) else None
    body = response.get("body") if isinstance(response, Mapping) else None
    body = body if isinstance(body, Mapping) else None
    status = status if isinstance(status, int) and not isinstance(status, bool) else None
    # As the chat path names a failure: the HTTP status of a response that failed, else the line's error code.
    error = str(status) if status is not None and status != 200 else _error_code(line.get("error"))
    if error is None and status is None:
        error = "error"  # neither a response nor an error: nothing ran
    return BatchResult(line["custom_id"], status, body, error)


def _error_code(error: Any) -> str | None:
    if not isinstance(error, Mapping):
        return None
    for name in ("code", "type"):
        value = error.get(name)
        if isinstance(value, str) and value:
            return value
    return "error"


def result_operation(result: BatchResult, endpoint: str | None) -> str:
    """The GenAI operation of a result: by its body's ``object``, else by the batch's endpoint, else chat."""
    kind = result.body.get("object") if result.body is not None else None
    if isinstance(kind, str) and kind in _OBJECT_OPERATIONS:
        return _OBJECT_OPERATIONS[kind]
    return ENDPOINT_OPERATIONS.get(endpoint or "", semconv.OPERATION_CHAT)


def result_model(result: BatchResult) -> str:
    model = result.body.get("model") if result.body is not None else None
    return model if isinstance(model, str) else ""


def result_response(result: BatchResult) -> ChatShapedResponse:
    """A successful result's body as `Metering.complete` reads a chat completion (a response: in chat terms)."""
    body = result.body or {}
    if body.get("object") == "response":
        return responses_payload.chat_view(body)
    choices = body.get("choices")
    return ChatShapedResponse(
        id=_text(body.get("id")),
        model=_text(body.get("model")),
        usage=body.get("usage") if isinstance(body.get("usage"), Mapping) else None,
        choices=[choice for choice in choices if isinstance(choice, Mapping)] if isinstance(choices, list) else [],
    )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
