"""Read DashScope's own SDK (`dashscope.Generation.call`) in chat terms, for metering it like chat completions.

A Generation request is a chat call (GenAI operation ``chat``): its ``messages`` (and a ``prompt``, which the SDK
appends as the last user message, or sends alone) are the chat messages; ``max_tokens`` is the output limit. Its
response (``GenerationResponse``: a dict with attribute access) carries ``request_id``, ``output`` (``text`` and
``finish_reason`` with ``result_format="text"``, ``choices[].message`` with ``"message"``) and ``usage``
(``input_tokens``, ``output_tokens``, ``prompt_tokens_details.cached_tokens`` /
``cache_creation_input_tokens``, ``output_tokens_details.reasoning_tokens``), read as a chat completion's.
The SDK fills an absent usage with zeros: a usage of 0 input tokens is read as none reported.

Streams: every chunk is a whole ``GenerationResponse`` whose usage is the running total (the last one wins: nothing
is added up). With ``incremental_output`` true each chunk's text is the next piece; otherwise (the server's
default, and the SDK's own merging of pieces when the caller asks for false) each chunk holds all the text so far.
A response whose ``status_code`` is not 200 is an error the SDK returns rather than raises (``code`` names it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from tokenmeter.instrumentation.openai_payload import StreamAccumulator, as_plain, server_usage
from tokenmeter.instrumentation.openai_payload import field_of as _field
from tokenmeter.instrumentation.responses_payload import ChatShapedResponse

# Request parameters metering reads (the same names as chat completions').
_PARAMETERS: Final = ("max_tokens", "temperature", "top_p")
# The finish reason of a chunk that is not the last (DashScope sends the string "null").
_NOT_FINISHED: Final = frozenset({"", "null"})


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# --- requests ---------------------------------------------------------------------------------------------------


def request_view(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The request as metering reads a chat completion's: model, stream, messages and parameters."""
    view: dict[str, Any] = {"model": kwargs.get("model"), "stream": kwargs.get("stream") is True}
    view["messages"] = request_messages(kwargs)
    for name in _PARAMETERS:
        value = kwargs.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            view[name] = value
    return view


def request_messages(kwargs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``messages``, else the deprecated ``history`` turns, then ``prompt`` as the user's message (as the SDK sends)."""
    messages = kwargs.get("messages")
    prompt = kwargs.get("prompt")
    result: list[dict[str, Any]] = []
    if messages and isinstance(messages, Sequence):  # never a one-shot iterator: reading it would empty it
        result = [as_plain(m) for m in messages if m is not None]
    elif isinstance(kwargs.get("history"), Sequence):
        for turn in kwargs["history"]:
            for role, name in (("user", "user"), ("assistant", "bot")):
                if isinstance(text := _field(turn, name), str):
                    result.append({"role": role, "content": text})
    if prompt:
        result.append({"role": "user", "content": prompt if isinstance(prompt, str) else as_plain(prompt)})
    return result


# --- responses --------------------------------------------------------------------------------------------------


def is_error(response: Any) -> bool:
    """A response the server refused or failed (the SDK returns it instead of raising)."""
    status = _field(response, "status_code")
    return isinstance(status, int) and status != 200


def error_code(response: Any) -> str:
    """What an error response is: its ``code`` (``InvalidParameter``, ``Throttling``...), else its HTTP status."""
    code = _field(response, "code")
    return code if isinstance(code, str) and code else str(_field(response, "status_code"))


def chat_usage(response: Any) -> dict[str, Any] | None:
    """The response's usage in chat completions' names; None when the server reported none (the SDK's zeros)."""
    usage = _field(response, "usage")
    input_tokens, output_tokens = _int(_field(usage, "input_tokens")), _int(_field(usage, "output_tokens"))
    if not input_tokens:  # absent, or the SDK's 0 for an absent block: every real request has input
        return None
    block: dict[str, Any] = {"prompt_tokens": input_tokens, "completion_tokens": output_tokens or 0}
    details = _field(usage, "prompt_tokens_details") or _field(usage, "input_tokens_details")
    output_details = _field(usage, "output_tokens_details") or _field(usage, "completion_tokens_details")
    if details:
        block["prompt_tokens_details"] = as_plain(details)
    if output_details:
        block["completion_tokens_details"] = as_plain(output_details)
    return block


@dataclass(frozen=True)
class ChoiceOutput:
    index: int
    answer: str
    reasoning: str
    tools: str
    finish_reason: str | None


def choice_outputs(response: Any) -> list[ChoiceOutput]:
    """Each choice's text (answer, reasoning, tool calls) and finish reason; ``output.text`` is choice 0."""
    output = _field(response, "output")
    choices = _field(output, "choices")
    if not choices:
        text = _field(output, "text")
        if not isinstance(text, str) and _reason(_field(output, "finish_reason")) is None:
            return []
        return [ChoiceOutput(0, _text(text), "", "", _reason(_field(output, "finish_reason")))]
    outputs = []
    for position, choice in enumerate(choices):
        message = _field(choice, "message")
        index = _int(_field(choice, "index"))
        outputs.append(
            ChoiceOutput(
                index=position if index is None else index,
                answer=_text(_field(message, "content")),
                reasoning=_text(_field(message, "reasoning_content")),
                tools=_tool_text(_field(message, "tool_calls")),
                finish_reason=_reason(_field(choice, "finish_reason")),
            )
        )
    return outputs


def _text(content: Any) -> str:
    """A message's content: a string, or (multimodal) a list of parts whose ``text`` is read."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(text for part in content if isinstance(text := _field(part, "text"), str))
    return ""


def _tool_text(tool_calls: Any) -> str:
    pieces = []
    for call in tool_calls or []:
        function = _field(call, "function")
        pieces.extend(
            piece for piece in (_field(function, "name"), _field(function, "arguments")) if isinstance(piece, str)
        )
    return "".join(pieces)


def _reason(value: Any) -> str | None:
    return value if isinstance(value, str) and value not in _NOT_FINISHED else None


def chat_view(response: Any) -> ChatShapedResponse:
    """A successful response as `Metering.complete` reads a chat completion: id, usage and its choices."""
    choices = []
    for choice in choice_outputs(response):
        message: dict[str, Any] = {"content": choice.answer}
        if choice.reasoning:
            message["reasoning_content"] = choice.reasoning
        if choice.tools:
            message["tool_calls"] = [{"function": {"name": choice.tools, "arguments": ""}}]
        choices.append({"message": message, "finish_reason": choice.finish_reason})
    request_id = _field(response, "request_id")
    return ChatShapedResponse(
        id=request_id if isinstance(request_id, str) and request_id else None,
        model=None,  # DashScope's response does not name the model: it is priced as requested
        usage=chat_usage(response),
        choices=choices,
    )


@dataclass
class DashScopeStreamAccumulator(StreamAccumulator):
    """A Generation stream's chunks: the running usage, and each choice's text however the chunks carry it.

    ``incremental``: the caller's ``incremental_output``. True: each chunk's text is appended. Otherwise a chunk that
    starts with the text so far replaces it (whole text so far), and any other is appended (a server that streams
    pieces regardless).
    """

    incremental: bool = False
    error_code: str | None = None  # an error chunk (status_code != 200) ended the stream
    answered: bool = False  # a chunk with status 200 arrived
    parts: dict[tuple[int, str], str] = field(default_factory=dict)

    def observe(self, chunk: Any) -> None:
        self.chunks += 1
        if is_error(chunk):
            self.error_code = error_code(chunk)
            return
        self.answered = True
        request_id = _field(chunk, "request_id")
        self.response_id = self.response_id or (request_id if isinstance(request_id, str) and request_id else None)
        usage = chat_usage(chunk)
        if usage is not None:
            self.usage = server_usage({"usage": usage})
        for choice in choice_outputs(chunk):
            for kind, text in (("reasoning", choice.reasoning), ("answer", choice.answer), ("tools", choice.tools)):
                self._merge((choice.index, kind), text)
            if choice.reasoning or choice.tools:
                self.extras = True
            if choice.finish_reason is not None:
                self.reasons[choice.index] = choice.finish_reason

    def _merge(self, key: tuple[int, str], text: str) -> None:
        if not text:
            return
        so_far = self.parts.get(key, "")
        self.parts[key] = so_far + text if self.incremental or not text.startswith(so_far) else text

    def output_texts(self) -> list[str]:
        indexes = sorted({index for index, _ in self.parts})
        return ["".join(self.parts.get((i, kind), "") for kind in ("reasoning", "answer", "tools")) for i in indexes]
