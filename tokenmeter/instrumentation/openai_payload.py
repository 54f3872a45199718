"""Read what tokenmeter needs from OpenAI SDK requests, responses and stream chunks.

Pure functions over the SDK's objects (pydantic models in both the 1.x and the
current line) and plain dicts; nothing here does I/O or touches telemetry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from tokenmeter.pricing import TokenCounts


@dataclass(frozen=True, slots=True)
class ServerUsage:
    """Billable counts as the server reported them, with the parts of them it reported.

    A part is ``None`` when the server did not report it (0 when it reported 0). Cache reads and writes
    and audio and image input are parts of ``input_tokens``, reasoning and audio output of
    ``output_tokens`` (the servers count them so); `server_usage` cuts parts that exceed their totals.
    """

    input_tokens: int
    output_tokens: int
    cache_read: int | None = None
    cache_creation: int | None = None
    reasoning: int | None = None
    audio_input: int | None = None
    audio_output: int | None = None
    image_input: int | None = None

    def token_counts(self) -> TokenCounts:
        """The counts by type as they are priced (an unreported part is 0: billed at its total's rate)."""
        return TokenCounts.fitted(
            self.input_tokens,
            self.output_tokens,
            cache_read=self.cache_read or 0,
            cache_creation=self.cache_creation or 0,
            reasoning=self.reasoning or 0,
            audio_input=self.audio_input or 0,
            audio_output=self.audio_output or 0,
        )

    @property
    def cache_split(self) -> bool:
        """The server said how much of the input was read from or written to its cache."""
        return self.cache_read is not None or self.cache_creation is not None

    @property
    def reasoning_split(self) -> bool:
        """The server said how much of the output was reasoning."""
        return self.reasoning is not None


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


# Per type: is it a Mapping? Stream chunks call field_of ~10 times each, and an ABC check per call
# (the SDK's chunks are pydantic models, not Mappings) was a third of the per-chunk cost.
_IS_MAPPING: dict[type, bool] = {}


def field_of(obj: Any, name: str) -> Any:
    """``obj[name]`` of a mapping, else ``obj.name``; None when absent (SDK objects and plain dicts alike)."""
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
    """The `usage` block of a response or final stream chunk, if it has real numbers, with the parts it reports."""
    usage = field_of(obj, "usage")
    if usage is None:
        return None
    prompt = _as_int(field_of(usage, "prompt_tokens"))
    completion = _as_int(field_of(usage, "completion_tokens"))
    if prompt is None and completion is None:
        return None
    input_tokens, output_tokens = max(prompt or 0, 0), max(completion or 0, 0)
    parts = _reported_parts(usage, input_tokens)
    if all(part is None for part in parts.values()):  # most local servers: nothing to fit
        return ServerUsage(input_tokens, output_tokens)
    return _fitted(input_tokens, output_tokens, parts)


# Where the parts of a usage block are, first found wins. In prompt_tokens_details: cache reads under a name of
# their own before `cached_tokens` (proxies that also send `cache_read_input_tokens` there count cache writes in
# `cached_tokens`); cache writes as DashScope, OpenAI and LiteLLM name them.
_CACHE_READ_DETAILS: Final = ("cache_read_input_tokens", "cached_tokens")
_CACHE_WRITE_DETAILS: Final = ("cache_creation_input_tokens", "cache_write_tokens", "cache_creation_tokens")


def _reported_parts(usage: Any, input_tokens: int) -> dict[str, int | None]:
    """The parts of the totals as the servers name them (docs/instrumentation.md "Token types").

    OpenAI: ``prompt_tokens_details`` (cached, cache_write, audio, image) and ``completion_tokens_details``
    (reasoning, audio); DashScope adds ``cache_creation_input_tokens`` to the former; DeepSeek reports
    ``prompt_cache_hit_tokens`` / ``prompt_cache_miss_tokens`` beside them. Anthropic-style names at the top
    of `usage` are read only beside ``prompt_tokens_details``: there ``prompt_tokens`` is OpenAI's total,
    which includes them (LiteLLM's shape); alone they may be Anthropic's, which excludes them.
    """
    details = _extra_orfield_of(usage, "prompt_tokens_details")
    output_details = _extra_orfield_of(usage, "completion_tokens_details")
    beside_details = usage if details is not None else None
    cache_read = _first_count(details, _CACHE_READ_DETAILS)
    if cache_read is None:
        cache_read = _count(usage, "prompt_cache_hit_tokens")
    if cache_read is None:
        miss = _count(usage, "prompt_cache_miss_tokens")
        cache_read = input_tokens - miss if miss is not None else _count(beside_details, "cache_read_input_tokens")
    cache_creation = _first_count(details, _CACHE_WRITE_DETAILS)
    if cache_creation is None:
        cache_creation = _count(beside_details, "cache_creation_input_tokens")
    return {
        "cache_read": cache_read,
        "cache_creation": cache_creation,
        "reasoning": _count(output_details, "reasoning_tokens"),
        "audio_input": _count(details, "audio_tokens"),
        "audio_output": _count(output_details, "audio_tokens"),
        "image_input": _count(details, "image_tokens"),
    }


def _fitted(input_tokens: int, output_tokens: int, parts: dict[str, int | None]) -> ServerUsage:
    """Parts cut to fit their totals (`TokenCounts.fitted`); a part the server did not report stays None."""
    counts = TokenCounts.fitted(
        input_tokens,
        output_tokens,
        cache_read=parts["cache_read"] or 0,
        cache_creation=parts["cache_creation"] or 0,
        reasoning=parts["reasoning"] or 0,
        audio_input=parts["audio_input"] or 0,
        audio_output=parts["audio_output"] or 0,
    )

    def kept(name: str) -> int | None:
        return None if parts[name] is None else getattr(counts, name)

    image = parts["image_input"]
    return ServerUsage(
        input_tokens,
        output_tokens,
        cache_read=kept("cache_read"),
        cache_creation=kept("cache_creation"),
        reasoning=kept("reasoning"),
        audio_input=kept("audio_input"),
        audio_output=kept("audio_output"),
        image_input=None if image is None else min(max(image, 0), input_tokens),
    )


def _count(obj: Any, name: str) -> int | None:
    return _as_int(_extra_orfield_of(obj, name)) if obj is not None else None


def _first_count(obj: Any, names: Sequence[str]) -> int | None:
    """The first of ``names`` that holds a count in ``obj``."""
    for name in names:
        value = _count(obj, name)
        if value is not None:
            return value
    return None


def _tool_call_text(tool_calls: Any) -> str:
    parts: list[str] = []
    for call in tool_calls or []:
        function = field_of(call, "function")
        for piece in (field_of(function, "name"), field_of(function, "arguments")):
            if isinstance(piece, str):
                parts.append(piece)
    return "".join(parts)


# Per type: the fields a pydantic model declares (the rest of what a server sent is in its extras), None for
# anything else. Usage blocks are read through this ~10 times per call, on the caller's thread.
_DECLARED: dict[type, frozenset[str] | None] = {}


def _extra_orfield_of(obj: Any, name: str) -> Any:
    """A field servers add beyond the OpenAI schema (DeepSeek's reasoning_content, prompt_cache_hit_tokens), or a
    declared one."""
    kind = type(obj)
    try:
        declared = _DECLARED[kind]
    except KeyError:
        fields = getattr(kind, "model_fields", None)
        declared = _DECLARED[kind] = frozenset(fields) if isinstance(fields, dict) else None
    if declared is None or name in declared:
        return field_of(obj, name)
    # Straight from the extras: getattr of an absent name raises inside pydantic first (slow per chunk).
    extra = getattr(obj, "__pydantic_extra__", None)
    return extra.get(name) if extra else None


def _extra_text(obj: Any, name: str) -> str:
    value = _extra_orfield_of(obj, name)
    return value if isinstance(value, str) else ""


def response_output_texts(response: Any) -> list[str]:
    """Generated text per choice of a chat or text completion (tool-call arguments included)."""
    texts: list[str] = []
    for choice in field_of(response, "choices") or []:
        message = field_of(choice, "message")
        if message is not None:
            text = field_of(message, "content")
            texts.append(
                _extra_text(message, "reasoning_content")
                + (text if isinstance(text, str) else "")
                + _tool_call_text(field_of(message, "tool_calls"))
            )
        else:
            text = field_of(choice, "text")
            texts.append(text if isinstance(text, str) else "")
    return texts


def has_output_extras(response: Any) -> bool:
    """Whether a choice's message carries more than its text: reasoning, tool calls or a function call."""
    for choice in field_of(response, "choices") or []:
        message = field_of(choice, "message")
        if message is not None and (
            _extra_text(message, "reasoning_content")
            or field_of(message, "tool_calls")
            or field_of(message, "function_call")
        ):
            return True
    return False


def finish_reasons(response: Any) -> list[str]:
    reasons = []
    for choice in field_of(response, "choices") or []:
        reason = field_of(choice, "finish_reason")
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
        self.response_id = self.response_id or field_of(chunk, "id")
        self.response_model = self.response_model or field_of(chunk, "model")
        usage = server_usage(chunk)
        if usage is not None:
            self.usage = usage
        for choice in field_of(chunk, "choices") or []:
            index = _as_int(field_of(choice, "index")) or 0
            delta = field_of(choice, "delta")
            if delta is not None:
                reasoning = _extra_text(delta, "reasoning_content")
                tools = _tool_call_text(field_of(delta, "tool_calls"))
                piece = reasoning + (field_of(delta, "content") or "") + tools
                if reasoning or tools:
                    self.extras = True
            else:
                piece = field_of(choice, "text") or ""
            if piece:
                self.texts.setdefault(index, []).append(piece)
            reason = field_of(choice, "finish_reason")
            if isinstance(reason, str):
                self.reasons[index] = reason

    def output_texts(self) -> list[str]:
        return ["".join(self.texts[i]) for i in sorted(self.texts)]

    def finish_reasons(self) -> list[str]:
        return [self.reasons[i] for i in sorted(self.reasons)]


def is_usage_only_chunk(chunk: Any) -> bool:
    """The final chunk `stream_options.include_usage` adds: usage and no choices."""
    return not (field_of(chunk, "choices") or []) and field_of(chunk, "usage") is not None


def caller_asked_for_usage(kwargs: Mapping[str, Any]) -> bool:
    options = kwargs.get("stream_options")
    return bool(field_of(options, "include_usage")) if options else False


def embedding_inputs(value: Any) -> list[str] | list[list[int]]:
    """Normalise `input` of embeddings (and `prompt` of completions) to a list."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, Sequence) and value and all(isinstance(v, int) for v in value):
        return [list(value)]
    return [v if isinstance(v, str) else list(v) for v in value]
