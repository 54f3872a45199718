"""Read what tokenmeter needs from OpenAI SDK requests, responses and stream chunks.

Pure functions over the SDK's objects (pydantic models in both the 1.x and the
current line) and plain dicts; nothing here does I/O or touches telemetry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class ServerUsage:
    """Billable counts as the server reported them."""

    input_tokens: int
    output_tokens: int


def as_plain(value: Any) -> Any:
    """SDK objects and TypedDict messages as plain JSON-like data."""
    if hasattr(value, "model_dump"):
        return value.model_dump(exclude_none=True)
    if isinstance(value, Mapping):
        return {str(k): as_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [as_plain(v) for v in value]
    return value


def request_messages(kwargs: Mapping[str, Any]) -> list[dict[str, Any]]:
    messages = kwargs.get("messages") or []
    return [as_plain(m) for m in messages if m is not None]


# Per type: is it a Mapping? Stream chunks call _field ~10 times each, and an ABC check per call
# (the SDK's chunks are pydantic models, not Mappings) was a third of the per-chunk cost.
_IS_MAPPING: dict[type, bool] = {}


def _field(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    kind = type(obj)
    is_mapping = _IS_MAPPING.get(kind)
    if is_mapping is None:
        is_mapping = _IS_MAPPING[kind] = isinstance(obj, Mapping)
    if is_mapping:
        return obj.get(name)
    return getattr(obj, name, None)


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def server_usage(obj: Any) -> ServerUsage | None:
    """The `usage` block of a response or final stream chunk, if it has real numbers."""
    usage = _field(obj, "usage")
    if usage is None:
        return None
    prompt = _as_int(_field(usage, "prompt_tokens"))
    completion = _as_int(_field(usage, "completion_tokens"))
    if prompt is None and completion is None:
        return None
    return ServerUsage(input_tokens=prompt or 0, output_tokens=completion or 0)


def _tool_call_text(tool_calls: Any) -> str:
    parts: list[str] = []
    for call in tool_calls or []:
        function = _field(call, "function")
        for piece in (_field(function, "name"), _field(function, "arguments")):
            if isinstance(piece, str):
                parts.append(piece)
    return "".join(parts)


def _extra_text(obj: Any, name: str) -> str:
    """Fields that servers add beyond the OpenAI schema, such as DeepSeek's reasoning_content."""
    extra = getattr(obj, "model_extra", None)  # pydantic v2 models keep undeclared fields here
    if isinstance(extra, dict) and name not in getattr(type(obj), "model_fields", ()):
        # Straight from the extras: getattr of an absent name raises inside pydantic first (slow per chunk).
        value = extra.get(name)
    else:
        value = _field(obj, name)
    return value if isinstance(value, str) else ""


def response_output_texts(response: Any) -> list[str]:
    """Generated text per choice of a chat or text completion (tool-call arguments included)."""
    texts: list[str] = []
    for choice in _field(response, "choices") or []:
        message = _field(choice, "message")
        if message is not None:
            text = _field(message, "content")
            texts.append(
                _extra_text(message, "reasoning_content")
                + (text if isinstance(text, str) else "")
                + _tool_call_text(_field(message, "tool_calls"))
            )
        else:
            text = _field(choice, "text")
            texts.append(text if isinstance(text, str) else "")
    return texts


def has_output_extras(response: Any) -> bool:
    """Whether a choice's message carries more than its text: reasoning, tool calls or a function call."""
    for choice in _field(response, "choices") or []:
        message = _field(choice, "message")
        if message is not None and (
            _extra_text(message, "reasoning_content")
            or _field(message, "tool_calls")
            or _field(message, "function_call")
        ):
            return True
    return False


def finish_reasons(response: Any) -> list[str]:
    reasons = []
    for choice in _field(response, "choices") or []:
        reason = _field(choice, "finish_reason")
        if isinstance(reason, str):
            reasons.append(reason)
    return reasons


@dataclass
class StreamAccumulator:
    """Everything a stream told us, chunk by chunk, for counting at its end."""

    response_id: str | None = None
    response_model: str | None = None
    usage: ServerUsage | None = None
    texts: dict[int, list[str]] = field(default_factory=dict)
    reasons: dict[int, str] = field(default_factory=dict)
    chunks: int = 0
    extras: bool = False  # a delta carried reasoning or tool calls besides the answer's text
    ended: bool = False  # the caller read the stream to its end (the SDK's StopIteration)

    def observe(self, chunk: Any) -> None:
        self.chunks += 1
        self.response_id = self.response_id or _field(chunk, "id")
        self.response_model = self.response_model or _field(chunk, "model")
        usage = server_usage(chunk)
        if usage is not None:
            self.usage = usage
        for choice in _field(chunk, "choices") or []:
            index = _as_int(_field(choice, "index")) or 0
            delta = _field(choice, "delta")
            if delta is not None:
                reasoning = _extra_text(delta, "reasoning_content")
                tools = _tool_call_text(_field(delta, "tool_calls"))
                piece = reasoning + (_field(delta, "content") or "") + tools
                if reasoning or tools:
                    self.extras = True
            else:
                piece = _field(choice, "text") or ""
            if piece:
                self.texts.setdefault(index, []).append(piece)
            reason = _field(choice, "finish_reason")
            if isinstance(reason, str):
                self.reasons[index] = reason

    def output_texts(self) -> list[str]:
        return ["".join(self.texts[i]) for i in sorted(self.texts)]

    def finish_reasons(self) -> list[str]:
        return [self.reasons[i] for i in sorted(self.reasons)]


def is_usage_only_chunk(chunk: Any) -> bool:
    """The final chunk `stream_options.include_usage` adds: usage and no choices."""
    return not (_field(chunk, "choices") or []) and _field(chunk, "usage") is not None


def caller_asked_for_usage(kwargs: Mapping[str, Any]) -> bool:
    options = kwargs.get("stream_options")
    return bool(_field(options, "include_usage")) if options else False


def embedding_inputs(value: Any) -> list[str] | list[list[int]]:
    """Normalise `input` of embeddings (and `prompt` of completions) to a list."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, Sequence) and value and all(isinstance(v, int) for v in value):
        return [list(value)]
    return [v if isinstance(v, str) else list(v) for v in value]
