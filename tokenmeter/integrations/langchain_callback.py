"""Meter LangChain LLM classes that do not call through a client tokenmeter patches.

``ChatOpenAI``, ``OpenAI`` and ``OpenAIEmbeddings`` are metered where they call the openai SDK,
``ChatOllama`` where it calls the ollama client, ``ChatTongyi`` where it calls DashScope's SDK;
other chat models and LLMs (native ERNIE/Zhipu wrappers, Xinference, anything a
Chatchat deployment plugs in) are metered here, from LangChain's callbacks: one span per
run, the same usage counters and cost, the run's usage when the model reported it
(``llm_output["token_usage"]`` or ``generation_info["usage"]``), else a count with the
model's tokenizer. Registered for every LangChain run with ``register_configure_hook``
(no code in the app); the handler runs inline, in the caller's context, so attribution
holds. Quotas are not enforced here: a callback cannot stop or reroute a run.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Final
from uuid import UUID

from tokenmeter import semconv
from tokenmeter.instrumentation.llm_call import LLMCall
from tokenmeter.instrumentation.metering import Metering
from tokenmeter.instrumentation.safety import contained

_ROLES: Final = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool", "function": "function",
                 "chat": "user"}  # fmt: skip
_MODEL_PARAMETERS: Final = ("model_name", "model", "model_id", "deployment_name")


# LangChain classes whose client tokenmeter patches (metered there, not again here), by a word of their serialized
# id: the openai SDK (ChatOpenAI...), the ollama client (ChatOllama), DashScope's Generation (ChatTongyi, Tongyi).
_PATCHED_CLIENTS: Final = ("openai", "ollama", "tongyi")


def is_metered_by_the_sdk(serialized: Mapping[str, Any] | None, model: str = "") -> bool:
    """LangChain classes that call a client tokenmeter patches: their serialized id names it. Tongyi's vision
    models go through DashScope's MultiModalConversation, which is not patched: those stay metered here."""
    parts = [str(part).lower() for part in (serialized or {}).get("id") or []]
    client = next((name for name in _PATCHED_CLIENTS if any(name in part for part in parts)), None)
    return client is not None and not (client == "tongyi" and "vl" in model.lower())


def _model_of(serialized: Mapping[str, Any] | None, invocation_params: Mapping[str, Any] | None) -> str:
    for source in (invocation_params or {}, (serialized or {}).get("kwargs") or {}):
        for name in _MODEL_PARAMETERS:
            if source.get(name):
                return str(source[name])
    identifier = (serialized or {}).get("id") or ["unknown"]
    return str(identifier[-1])


def _as_chat_message(message: Any) -> dict[str, Any]:
    role = getattr(message, "role", None) or _ROLES.get(str(getattr(message, "type", "")), "user")
    return {"role": role, "content": getattr(message, "content", str(message))}


def _usage(result: Any) -> dict[str, int] | None:
    """OpenAI-style usage from an LLMResult, if the model reported any."""
    output = getattr(result, "llm_output", None) or {}
    usage = output.get("token_usage") or output.get("usage")
    if not usage:
        for generations in getattr(result, "generations", None) or []:
            for generation in generations:
                info = getattr(generation, "generation_info", None) or {}
                usage = info.get("usage") or info.get("token_usage") or usage
    if not isinstance(usage, Mapping):
        return None
    prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
    completion = usage.get("completion_tokens", usage.get("output_tokens"))
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _response_like(result: Any, model: str) -> dict[str, Any]:
    """The run's result in the shape Metering reads from OpenAI responses."""
    choices = []
    for generations in getattr(result, "generations", None) or []:
        for generation in generations:
            message = getattr(generation, "message", None)
            text = getattr(message, "content", None) if message is not None else getattr(generation, "text", "")
            info = getattr(generation, "generation_info", None) or {}
            choices.append({"message": {"role": "assistant", "content": text if isinstance(text, str) else ""},
                            "finish_reason": info.get("finish_reason")})  # fmt: skip
    response: dict[str, Any] = {"model": model, "choices": choices}
    usage = _usage(result)
    if usage is not None:
        response["usage"] = usage
    return response


class TokenmeterCallbackHandler:
    """A LangChain callback handler (duck-typed, so importing this module needs no LangChain)."""

    run_inline = True  # in the caller's context: attribution holds for async runs too
    raise_error = False
    ignore_llm = False
    ignore_chat_model = False
    ignore_chain = True
    ignore_agent = True
    ignore_retriever = True
    ignore_retry = True
    ignore_custom_event = True

    def __init__(self, metering: Metering | None) -> None:
        self.metering = metering  # None after uninstrument: the handler stays registered, idle
        self._calls: dict[UUID, LLMCall] = {}
        self._lock = threading.Lock()

    def _start(self, run_id: UUID, operation: str, serialized: Mapping[str, Any] | None, request: dict[str, Any],
               invocation_params: Mapping[str, Any] | None) -> None:  # fmt: skip
        metering = self.metering
        if metering is None or is_metered_by_the_sdk(serialized, _model_of(serialized, invocation_params)):
            return
        with contained("LangChain run start"):
            request["model"] = _model_of(serialized, invocation_params)
            for name in ("max_tokens", "temperature", "top_p"):
                if (invocation_params or {}).get(name) is not None:
                    request[name] = invocation_params[name]  # type: ignore[index]
            call = metering.start(operation, request, None, None)
            with self._lock:
                self._calls[run_id] = call

    def on_chat_model_start(self, serialized: Mapping[str, Any], messages: Sequence[Sequence[Any]], *,
                            run_id: UUID, **kwargs: Any) -> None:  # fmt: skip
        chat = [_as_chat_message(message) for batch in messages for message in batch]
        self._start(run_id, semconv.OPERATION_CHAT, serialized, {"messages": chat}, kwargs.get("invocation_params"))

    def on_llm_start(self, serialized: Mapping[str, Any], prompts: Sequence[str], *, run_id: UUID,
                     **kwargs: Any) -> None:  # fmt: skip
        self._start(run_id, semconv.OPERATION_TEXT_COMPLETION, serialized, {"prompt": list(prompts)},
                    kwargs.get("invocation_params"))  # fmt: skip

    def on_llm_end(self, response: Any, *, run_id: UUID, **kwargs: Any) -> None:
        with self._lock:
            call = self._calls.pop(run_id, None)
        if call is not None and self.metering is not None:
            with contained("LangChain run end"):
                self.metering.complete(call, _response_like(response, call.request_model))

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        with self._lock:
            call = self._calls.pop(run_id, None)
        if call is not None and self.metering is not None:
            with contained("LangChain run error"):
                self.metering.fail(call, error)

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        pass


_HANDLERS: list[Any] = []  # at most one per process: LangChain keeps every hook it is given


def register(metering: Metering | None) -> None:
    """Meter every LangChain run of this process with ``metering`` (None: stop).

    The handler is the default value of a context variable LangChain reads for every run,
    so it applies in every thread and task without being set there.
    """
    if not _HANDLERS:
        if metering is None:
            return
        from langchain_core.callbacks import BaseCallbackHandler
        from langchain_core.tracers.context import register_configure_hook

        handler_class = type("TokenmeterLangChainHandler", (TokenmeterCallbackHandler, BaseCallbackHandler), {})
        _HANDLERS.append(handler_class(metering))
        register_configure_hook(contextvars.ContextVar("tokenmeter_langchain_handler", default=_HANDLERS[0]),
                                inheritable=True)  # fmt: skip
    _HANDLERS[0].metering = metering
