"""Read the Ollama Python client's calls (`Client.chat` / `generate` / `embed`) in chat terms, for metering them.

``chat`` is a chat call (its ``messages``); ``generate`` a text completion whose prompts are its ``system``, ``prompt``
and ``suffix``; ``embed`` (and the deprecated ``embeddings``) an embeddings call of its ``input`` (``prompt``).
``options.num_predict`` is the output limit (negative: no limit), ``options.temperature`` / ``top_p`` the sampling
parameters. A response (or a stream's final chunk, ``done`` true) reports ``prompt_eval_count`` and ``eval_count``:
the billed input and output tokens (an embed response: ``prompt_eval_count`` only). A server that leaves either out
(older versions, a prompt served from its cache, the ``embeddings`` endpoint) is billed by the model's tokenizer, as
any call without server usage. Pure functions over the client's objects (pydantic models) and plain dicts; the
wrappers (ollama_patch) hand `Metering` these chat-shaped views.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from tokenmeter import semconv
from tokenmeter.instrumentation.openai_payload import StreamAccumulator, as_plain, server_usage
from tokenmeter.instrumentation.openai_payload import field_of as _field
from tokenmeter.instrumentation.responses_payload import ChatShapedResponse

PROVIDER_OLLAMA: Final = semconv.PROVIDER_OLLAMA  # not in the GenAI registry's list: the provider's own name
# Sampling options metering reads, by the chat completions name they are recorded under.
_OPTIONS: Final = (("num_predict", "max_tokens"), ("temperature", "temperature"), ("top_p", "top_p"))


def _number(value: Any) -> int | float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def request_view(operation: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The request as metering reads a chat or text completion's: model, stream, messages or prompts, parameters."""
    view: dict[str, Any] = {"model": kwargs.get("model") or "", "stream": kwargs.get("stream") is True}
    if operation == semconv.OPERATION_EMBEDDINGS:  # embed's `input` (a text or a list), embeddings' `prompt`
        view["input"] = kwargs.get("input", kwargs.get("prompt")) or ""
        return view
    if operation == semconv.OPERATION_CHAT:
        view["messages"] = [chat_message(message) for message in kwargs.get("messages") or [] if message is not None]
    else:
        view["prompt"] = [text for name in ("system", "prompt", "suffix") if isinstance(text := kwargs.get(name), str)
                          and text]  # fmt: skip
    options = kwargs.get("options")
    for name, chat_name in _OPTIONS:
        value = _number(_field(options, name))
        if value is not None and not (name == "num_predict" and value < 0):  # -1: no limit, -2: fill the context
            view[chat_name] = value
    return view


def chat_message(message: Any) -> dict[str, Any]:
    """An Ollama message as an OpenAI-style one: tool calls' arguments (a mapping in Ollama) as JSON text."""
    plain = as_plain(message)
    if not isinstance(plain, dict):
        return {"type": type(message).__name__}
    calls = plain.get("tool_calls")
    if isinstance(calls, list):
        plain["tool_calls"] = [_tool_call(call) for call in calls]
    return plain


def _tool_call(call: Any) -> dict[str, Any]:
    function = _field(call, "function")
    name, arguments = _field(function, "name"), _field(function, "arguments")
    if not isinstance(arguments, str):
        arguments = json.dumps(as_plain(arguments), ensure_ascii=False) if arguments is not None else ""
    return {"type": "function", "function": {"name": name if isinstance(name, str) else "", "arguments": arguments}}


def chat_usage(response: Any) -> dict[str, int] | None:
    """``prompt_eval_count`` / ``eval_count`` as a chat completion's usage block; None unless both were reported."""
    prompt, completion = _field(response, "prompt_eval_count"), _field(response, "eval_count")
    if not all(isinstance(count, int) and not isinstance(count, bool) for count in (prompt, completion)):
        return None
    return {"prompt_tokens": prompt, "completion_tokens": completion}


def generated(response: Any) -> tuple[str, str, list[dict[str, Any]]]:
    """What a response (or a chunk) generated: thinking, the answer's text, the tool calls (OpenAI-style)."""
    message = _field(response, "message")
    source = message if message is not None else response  # chat: the message; generate: the response itself
    thinking, text = _field(source, "thinking"), _field(source, "content" if message is not None else "response")
    calls = [_tool_call(call) for call in _field(message, "tool_calls") or []] if message is not None else []
    return (thinking if isinstance(thinking, str) else ""), (text if isinstance(text, str) else ""), calls


def chat_view(response: Any) -> ChatShapedResponse:
    """A chat or generate response as one chat choice (generate's: a text choice), with its usage."""
    thinking, text, calls = generated(response)
    reason = _field(response, "done_reason")
    choice: dict[str, Any] = {"finish_reason": reason if isinstance(reason, str) and reason else None}
    if _field(response, "message") is not None:
        message: dict[str, Any] = {"content": text}
        if thinking:
            message["reasoning_content"] = thinking
        if calls:
            message["tool_calls"] = calls
        choice["message"] = message
    else:
        choice["text"] = thinking + text
    model = _field(response, "model")
    return ChatShapedResponse(id=None, model=model if isinstance(model, str) and model else None,
                              usage=chat_usage(response), choices=[choice])  # fmt: skip


def embeddings_view(response: Any) -> ChatShapedResponse:
    """An embed response: its ``prompt_eval_count`` is the billed input (the deprecated ``embeddings`` endpoint
    reports none: its input is billed by the model's tokenizer)."""
    count, model = _field(response, "prompt_eval_count"), _field(response, "model")
    usage = {"prompt_tokens": count, "total_tokens": count} if isinstance(count, int) and count >= 0 else None
    return ChatShapedResponse(id=None, model=model if isinstance(model, str) and model else None, usage=usage)


class OllamaStreamAccumulator(StreamAccumulator):
    """A streamed chat or generate call's chunks: generated text as it comes; the counts from the ``done`` chunk."""

    def observe(self, chunk: Any) -> None:
        self.chunks += 1
        model = _field(chunk, "model")
        self.response_model = self.response_model or (model if isinstance(model, str) and model else None)
        thinking, text, calls = generated(chunk)
        piece = thinking + text + "".join(call["function"]["name"] + call["function"]["arguments"] for call in calls)
        if piece:
            self.texts.setdefault(0, []).append(piece)
        self.extras = self.extras or bool(thinking or calls)
        if _field(chunk, "done") is True:
            block = chat_usage(chunk)
            self.usage = server_usage({"usage": block}) if block is not None else None
            reason = _field(chunk, "done_reason")
            self.reasons[0] = reason if isinstance(reason, str) and reason else "stop"
