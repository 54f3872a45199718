"""Read the Anthropic SDK's Messages API (`client.messages.create` / `.stream`) in chat terms, for metering it.

A Messages request is a chat call: its top-level ``system`` (a string or text blocks) is a system message and its
``messages`` the others, their content blocks read as chat completions' (text as content, ``tool_use`` as tool calls,
``tool_result`` as tool messages); ``max_tokens`` is the output limit. A block that is not text (an image, a
document) stays as it was sent, which the tokenizer count rejects: the local count is then a labelled estimate, as it
is anyway for Claude, whose tokenizer is not published. A base64 payload is replaced by its digest first, so the
quota check's estimate does not count an image's bytes as text.

A response's text blocks are the answer, its ``thinking`` and ``tool_use`` blocks output besides it, ``stop_reason``
the finish reason. Its ``usage`` bills the call, with one difference from the chat shape: Anthropic's
``input_tokens`` EXCLUDES the prompt-cache reads and writes, which tokenmeter's input count includes, so the input is
``input_tokens + cache_read_input_tokens + cache_creation_input_tokens``, with the two as its cache parts.

A stream's events: ``message_start`` (id, model, the input's usage), ``content_block_start`` / ``_delta`` / ``_stop``
(text, thinking and tool input as they come), ``message_delta`` (the stop reason and the usage so far, cumulative)
and ``message_stop``; the SDK consumes ``ping`` and raises an ``error`` event. The usage is the bill only once a
``message_delta`` gave the output count: a stream cut before it is counted locally, as any stream without usage.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from tokenmeter.instrumentation.openai_payload import StreamAccumulator, as_plain, server_usage
from tokenmeter.instrumentation.openai_payload import field_of as _field
from tokenmeter.instrumentation.responses_payload import ChatShapedResponse

# Request parameters metering reads (the same names as chat completions').
_PARAMETERS: Final = ("max_tokens", "temperature", "top_p")
# Blocks given back in a conversation that are not read as text: earlier thinking, which the server drops from the
# context (a signature, not the text, carries it).
_DROPPED_BLOCKS: Final = frozenset({"thinking", "redacted_thinking"})
# Generated blocks whose name and input are output besides the answer: the client's tools and the server's.
_TOOL_BLOCKS: Final = frozenset({"tool_use", "server_tool_use"})
# The usage fields a stream's message_start and message_delta carry.
_USAGE_FIELDS: Final = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens",
                        "output_tokens_details")  # fmt: skip


def _given(value: Any) -> bool:
    """A number the caller passed (the SDK's ``omit`` / ``NOT_GIVEN`` defaults are not numbers)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


# --- requests ---------------------------------------------------------------------------------------------------


def request_view(arguments: Mapping[str, Any], streamed: bool) -> dict[str, Any]:
    """The request as metering reads a chat completion's: model, stream, messages and parameters.

    ``streamed``: the call streams whatever its ``stream`` argument says (`messages.stream`).
    """
    view: dict[str, Any] = {"model": arguments.get("model"), "stream": streamed or arguments.get("stream") is True}
    view["messages"] = request_messages(arguments)
    for name in _PARAMETERS:
        if _given(value := arguments.get(name)):
            view[name] = value
    return view


def request_messages(arguments: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``system`` and ``messages`` as chat messages (what is counted and hashed)."""
    messages: list[dict[str, Any]] = []
    system = arguments.get("system")
    if isinstance(system, str) and system:
        messages.append({"role": "system", "content": system})
    elif isinstance(system, Iterable) and not isinstance(system, str | bytes | Mapping):
        blocks = [as_plain(block) for block in system]
        messages.append({"role": "system", "content": "\n".join(_text(_field(block, "text")) for block in blocks)})
    for message in arguments.get("messages") or []:
        messages.extend(chat_messages(as_plain(message)))
    return messages


def chat_messages(message: Any) -> list[dict[str, Any]]:
    """One Anthropic message as chat messages: tool results first (as tool messages), then the message with its text
    and tool calls, then its blocks that are not text as they were sent."""
    if not isinstance(message, Mapping):
        return [{"type": type(message).__name__}]
    role, content = message.get("role"), message.get("content")
    if not isinstance(content, list):
        return [{"role": role, "content": content}]
    results: list[dict[str, Any]] = []
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    others: list[dict[str, Any]] = []
    for block in content:
        kind = block.get("type") if isinstance(block, Mapping) else None
        if kind == "text":
            texts.append(_text(block.get("text")))
        elif kind in _TOOL_BLOCKS:
            calls.append(_tool_call(block.get("name"), block.get("input"), block.get("id")))
        elif kind == "tool_result":
            results.append({"role": "tool", "tool_call_id": block.get("tool_use_id"),
                            "content": _result_text(block.get("content"))})  # fmt: skip
        elif kind not in _DROPPED_BLOCKS:
            others.append(_without_payload(block) if isinstance(block, Mapping) else {"type": type(block).__name__})
    if texts or calls or not results:  # a user turn of tool results only is those results
        results.append({"role": role, "content": "\n".join(texts), **({"tool_calls": calls} if calls else {})})
    return [*results, *others]


def _tool_call(name: Any, arguments: Any, call_id: Any = None) -> dict[str, Any]:
    """A tool call in the chat completions shape: its input as JSON text."""
    text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False, sort_keys=True)
    call: dict[str, Any] = {"type": "function", "function": {"name": _text(name), "arguments": text}}
    if isinstance(call_id, str):
        call["id"] = call_id
    return call


def _result_text(content: Any) -> str:
    """A tool result's content: a string, or blocks whose text is read."""
    if isinstance(content, str):
        return content
    return "\n".join(_text(_field(block, "text")) for block in content or [] if _field(block, "type") == "text")


def _without_payload(block: Mapping[str, Any]) -> dict[str, Any]:
    """The block with a base64 ``source.data`` replaced by its SHA-256 (distinct images stay distinct when hashed);
    a plain-text document's data is text the model reads, and stays."""
    source = block.get("source")
    if not (
        isinstance(source, Mapping) and source.get("type") == "base64" and isinstance(data := source.get("data"), str)
    ):
        return dict(block)
    digest = hashlib.sha256(data.encode()).hexdigest()
    return {**block, "source": {**source, "data": f"sha256:{digest}"}}


# --- responses --------------------------------------------------------------------------------------------------


def chat_usage(usage: Any) -> dict[str, Any] | None:
    """A ``usage`` block in chat completions' names, the input inclusive of its cache parts; None without counts."""
    input_tokens, output_tokens = _field(usage, "input_tokens"), _field(usage, "output_tokens")
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in (input_tokens, output_tokens)):
        return None
    read, written = _field(usage, "cache_read_input_tokens"), _field(usage, "cache_creation_input_tokens")
    parts = {name: count for name, count in (("cache_read_input_tokens", read), ("cache_creation_input_tokens",
             written)) if isinstance(count, int) and not isinstance(count, bool)}  # fmt: skip
    block: dict[str, Any] = {"prompt_tokens": input_tokens + sum(parts.values()), "completion_tokens": output_tokens}
    if parts:
        block["prompt_tokens_details"] = parts
    thinking = _field(_field(usage, "output_tokens_details"), "thinking_tokens")
    if isinstance(thinking, int) and not isinstance(thinking, bool):
        block["completion_tokens_details"] = {"reasoning_tokens": thinking}
    return block


@dataclass(frozen=True)
class GeneratedOutput:
    """What a response generated: its thinking, the answer's text, and tool calls (chat completions' shape)."""

    thinking: str
    text: str
    calls: tuple[dict[str, Any], ...]


def generated(content: Any) -> GeneratedOutput:
    thinking: list[str] = []
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in content or []:
        kind = _field(block, "type")
        if kind == "text":
            texts.append(_text(_field(block, "text")))
        elif kind == "thinking":
            thinking.append(_text(_field(block, "thinking")))
        elif kind in _TOOL_BLOCKS:
            calls.append(_tool_call(_field(block, "name"), as_plain(_field(block, "input"))))
    return GeneratedOutput("".join(thinking), "".join(texts), tuple(calls))


def chat_view(response: Any) -> ChatShapedResponse:
    """A Message as `Metering.complete` reads a chat completion: one choice, thinking as ``reasoning_content``."""
    output = generated(_field(response, "content"))
    message: dict[str, Any] = {"content": output.text}
    if output.thinking:
        message["reasoning_content"] = output.thinking
    if output.calls:
        message["tool_calls"] = list(output.calls)
    return ChatShapedResponse(
        id=_str(_field(response, "id")),
        model=_str(_field(response, "model")),
        usage=chat_usage(_field(response, "usage")),
        choices=[{"message": message, "finish_reason": _str(_field(response, "stop_reason"))}],
    )


@dataclass
class AnthropicStreamAccumulator(StreamAccumulator):
    """A streamed message's events: generated text as it comes, the usage once ``message_delta`` completes it."""

    started_usage: Any = None  # message_start's usage: the input's counts, the output's first

    def observe(self, chunk: Any) -> None:
        self.chunks += 1
        kind = _field(chunk, "type")
        if kind == "content_block_delta":
            self._delta(_field(chunk, "delta"))
        elif kind == "content_block_start":
            block = _field(chunk, "content_block")
            if _field(block, "type") in _TOOL_BLOCKS:
                self._add(_text(_field(block, "name")), extra=True)
            elif _field(block, "type") == "text":  # a text block may start with text
                self._add(_text(_field(block, "text")), extra=False)
        elif kind == "message_start":
            message = _field(chunk, "message")
            self.response_id = _str(_field(message, "id"))
            self.response_model = _str(_field(message, "model"))
            self.started_usage = _field(message, "usage")
        elif kind == "message_delta":
            self._finish(_field(chunk, "delta"), _field(chunk, "usage"))

    def _delta(self, delta: Any) -> None:
        kind = _field(delta, "type")
        if kind == "text_delta":
            self._add(_text(_field(delta, "text")), extra=False)
        elif kind == "thinking_delta":
            self._add(_text(_field(delta, "thinking")), extra=True)
        elif kind == "input_json_delta":
            self._add(_text(_field(delta, "partial_json")), extra=True)

    def _add(self, piece: str, *, extra: bool) -> None:
        self.extras = self.extras or extra
        if piece:
            self.texts.setdefault(0, []).append(piece)

    def _finish(self, delta: Any, usage: Any) -> None:
        reason = _str(_field(delta, "stop_reason"))
        if reason is not None:
            self.reasons[0] = reason
        merged: dict[str, Any] = {}
        for name in _USAGE_FIELDS:  # cumulative counts; one message_delta leaves out (or nulls) keeps message_start's
            value = _field(usage, name)
            value = _field(self.started_usage, name) if value is None else value
            if value is not None:
                merged[name] = value
        block = chat_usage(merged)
        if block is not None:
            self.usage = server_usage({"usage": block})
