"""Read the OpenAI Responses API (`client.responses.create`) in chat terms, for metering it like chat completions.

A Responses request is a chat call (GenAI operation ``chat``): its ``instructions`` are a system message and its
``input`` (a string: one user message; or a list of items) the other messages; ``max_output_tokens`` is the output
limit. Its response's ``output`` items are the answer (message text, reasoning summaries, function calls), its
``status`` / ``incomplete_details`` why generation stopped, and its ``usage`` (``input_tokens``, ``output_tokens``
and their ``*_details``) the same billed counts and parts as a chat completion's. Pure functions over the SDK's
objects and plain dicts; the wrappers (openai_patch) hand `Metering` these chat-shaped views.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from tokenmeter.instrumentation.openai_payload import ServerUsage, StreamAccumulator, as_plain, server_usage
from tokenmeter.instrumentation.openai_payload import field_of as _field

# Content parts whose text the model reads (input) or wrote (an assistant message given back as input).
_TEXT_PARTS: Final = ("input_text", "output_text", "text")
# Request parameters metering reads, by the chat completions name they are recorded under.
_PARAMETERS: Final = (("max_output_tokens", "max_tokens"), ("temperature", "temperature"), ("top_p", "top_p"))
# The events that end a stream with the whole response (usage included).
_FINAL_EVENTS: Final = frozenset({"response.completed", "response.incomplete", "response.failed"})
# Stream events whose ``delta`` is generated text: the answer, reasoning, function-call arguments.
_ANSWER_DELTA: Final = "response.output_text.delta"
_OTHER_DELTAS: Final = frozenset(
    {"response.reasoning_summary_text.delta", "response.reasoning_text.delta", "response.function_call_arguments.delta"}
)


def _given(value: Any) -> bool:
    """A value the caller passed (the SDK's ``NOT_GIVEN`` / ``omit`` defaults are neither of these)."""
    return isinstance(value, str | int | float | list | tuple | Mapping) and not isinstance(value, bool)


def request_view(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The request as metering reads a chat completion's: model, stream, messages and parameters."""
    view: dict[str, Any] = {"model": kwargs.get("model"), "stream": kwargs.get("stream") is True}
    view["messages"] = request_messages(kwargs)
    for name, chat_name in _PARAMETERS:
        value = kwargs.get(name)
        if _given(value) and not isinstance(value, str):
            view[chat_name] = value
    return view


def request_messages(kwargs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``instructions`` and ``input`` as chat messages (what is counted and hashed).

    Text parts keep their text; any other part (an image, a file) or item (a reference to an earlier item,
    a tool's call other than a function's) stays as it was sent, which the tokenizer count rejects: the
    local count of such a request is then a labelled estimate, as for any chat input the tokenizer cannot read.
    """
    messages: list[dict[str, Any]] = []
    instructions = kwargs.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    items = kwargs.get("input")
    if isinstance(items, str):
        messages.append({"role": "user", "content": items})
    elif isinstance(items, Sequence):
        for item in items:
            messages.extend(_input_messages(as_plain(item)))
    return messages


def _input_messages(item: Any) -> list[dict[str, Any]]:
    if not isinstance(item, Mapping):
        return [{"type": type(item).__name__}]
    kind = item.get("type", "message")
    if kind == "message" and isinstance(item.get("role"), str):
        return _message(item)
    if kind == "function_call":
        call = {"type": "function", "function": {"name": item.get("name") or "", "arguments": item.get("arguments")}}
        return [{"role": "assistant", "content": None, "tool_calls": [call]}]
    if kind == "function_call_output":
        output = item.get("output")
        return [{"role": "tool", "content": output, "tool_call_id": item.get("call_id")}]
    return [dict(item)]


def _message(item: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A message item; its parts that are not text follow it as they were sent."""
    content = item.get("content")
    if not isinstance(content, list):
        return [{"role": item["role"], "content": content}]
    texts = [part for part in content if isinstance(part, Mapping) and part.get("type") in _TEXT_PARTS]
    others = [dict(part) if isinstance(part, Mapping) else {"type": "part"} for part in content if part not in texts]
    text = "\n".join(str(part.get("text") or "") for part in texts)
    return [{"role": item["role"], "content": text}, *others]


# --- responses --------------------------------------------------------------------------------------------------


def responses_usage(response: Any) -> ServerUsage | None:
    """The response's ``usage`` with its parts (cached input, reasoning output), read as a chat completion's."""
    block = chat_usage(response)
    return None if block is None else server_usage({"usage": block})


def chat_usage(response: Any) -> dict[str, Any] | None:
    """The response's ``usage`` in chat completions' names: the details have the same names in both APIs
    (``cached_tokens``, ``reasoning_tokens``), only the blocks and the totals are named differently."""
    usage = _field(response, "usage")
    if usage is None:
        return None
    block = {
        "prompt_tokens": _field(usage, "input_tokens"),
        "completion_tokens": _field(usage, "output_tokens"),
        "prompt_tokens_details": as_plain(_field(usage, "input_tokens_details")),
        "completion_tokens_details": as_plain(_field(usage, "output_tokens_details")),
    }
    return {name: value for name, value in block.items() if value is not None}


@dataclass(frozen=True)
class ResponseOutput:
    """What a response generated: reasoning (summaries or text), the answer's text, function calls (name, args)."""

    reasoning: str = ""
    answer: str = ""
    function_calls: tuple[tuple[str, str], ...] = ()
    extras: bool = False  # it had reasoning items or function calls (even without text)

    @property
    def text(self) -> str:
        """All of it as one text, in the order a chat message's is counted: reasoning, answer, function calls."""
        return self.reasoning + self.answer + "".join(name + arguments for name, arguments in self.function_calls)


def response_output(response: Any) -> ResponseOutput:
    """The output items' generated text: reasoning summaries, the answer's text (or refusal), function calls."""
    reasoning: list[str] = []
    answer: list[str] = []
    calls: list[tuple[str, str]] = []
    extras = False
    for item in _field(response, "output") or []:
        kind = _field(item, "type")
        if kind == "message":
            for part in _field(item, "content") or []:
                answer.append(
                    _text(_field(part, "text") if _field(part, "type") == "output_text" else _field(part, "refusal"))
                )
        elif kind == "reasoning":
            extras = True
            reasoning.extend(
                _text(_field(part, "text"))
                for part in [*(_field(item, "summary") or []), *(_field(item, "content") or [])]
            )
        elif kind == "function_call":
            extras = True
            calls.append((_text(_field(item, "name")), _text(_field(item, "arguments"))))
    return ResponseOutput("".join(reasoning), "".join(answer), tuple(calls), extras)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def finish_reason(response: Any) -> str | None:
    """Why generation stopped: the reason it is incomplete (``max_output_tokens``, ``content_filter``), else the
    response's status (``completed``, ``failed``); None while it is still in progress."""
    status = _field(response, "status")
    if status == "incomplete":
        reason = _field(_field(response, "incomplete_details"), "reason")
        return reason if isinstance(reason, str) and reason else status
    return status if isinstance(status, str) and status not in ("in_progress", "queued") else None


@dataclass(frozen=True)
class ChatShapedResponse:
    """A response as `Metering.complete` reads a chat completion: id, model, usage and one choice."""

    id: str | None
    model: str | None
    usage: Mapping[str, Any] | None
    choices: list[Mapping[str, Any]] = field(default_factory=list)


def chat_view(response: Any) -> ChatShapedResponse:
    """The response as one chat choice: reasoning as ``reasoning_content``, function calls as ``tool_calls``."""
    output = response_output(response)
    message: dict[str, Any] = {"content": output.answer}
    if output.reasoning:
        message["reasoning_content"] = output.reasoning
    if output.function_calls:
        message["tool_calls"] = [{"function": {"name": name, "arguments": arguments}}
                                 for name, arguments in output.function_calls]  # fmt: skip
    return ChatShapedResponse(
        id=_str(_field(response, "id")),
        model=_str(_field(response, "model")),
        usage=chat_usage(response),
        choices=[{"message": message, "finish_reason": finish_reason(response)}],
    )


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


class ResponsesStreamAccumulator(StreamAccumulator):
    """A streamed response's events: text deltas as they come, then the whole response from the final event."""

    def observe(self, chunk: Any) -> None:
        self.chunks += 1
        kind = _field(chunk, "type")
        if kind == _ANSWER_DELTA or kind in _OTHER_DELTAS:
            delta = _field(chunk, "delta")
            if isinstance(delta, str) and delta:
                self.texts.setdefault(0, []).append(delta)
                self.extras = self.extras or kind != _ANSWER_DELTA
        elif kind == "response.output_item.added" and _field(_field(chunk, "item"), "type") == "function_call":
            name = _field(_field(chunk, "item"), "name")
            self.texts.setdefault(0, []).append(name if isinstance(name, str) else "")
            self.extras = True
        elif kind in _FINAL_EVENTS or kind == "response.created":
            self._take(_field(chunk, "response"), final=kind in _FINAL_EVENTS)

    def _take(self, response: Any, *, final: bool) -> None:
        self.response_id = self.response_id or _str(_field(response, "id"))
        self.response_model = self.response_model or _str(_field(response, "model"))
        if not final:
            return
        self.usage = responses_usage(response)
        output = response_output(response)
        if output.text:  # the whole output, rather than the deltas it was streamed in
            self.texts = {0: [output.text]}
        self.extras = self.extras or output.extras
        reason = finish_reason(response)
        if reason is not None:
            self.reasons[0] = reason
