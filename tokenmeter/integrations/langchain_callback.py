"""Meter and check LangChain LLM classes that do not call through a client tokenmeter patches.

``ChatOpenAI``, ``OpenAI`` and ``OpenAIEmbeddings`` are metered where they call the openai SDK,
``langchain_ollama``'s ``ChatOllama`` where it calls the ollama client, ``ChatTongyi`` where it calls
DashScope's SDK; other chat models and LLMs (``langchain_community``'s ``ChatOllama`` and ``Ollama``, which
speak Ollama's HTTP API themselves, native ERNIE/Zhipu wrappers, Xinference, anything a Chatchat deployment
plugs in) are metered here, from LangChain's callbacks: one span per run, the same usage counters and cost, the
run's usage when the model reported it (``llm_output["token_usage"]``, a generation's
``generation_info["usage"]``, or Ollama's ``prompt_eval_count`` / ``eval_count`` there), else a count with the
model's tokenizer. Registered for every LangChain run with ``register_configure_hook`` (no code in the app);
the handler runs inline, in the caller's context, so attribution holds.

With a quota gate, each run is checked before its model is called (`langchain_quota`): the check raises the
openai path's errors out of the run's start event. A chat model's run is checked by a second handler that is not
inline: LangChain calls it directly in sync runs, and in async runs in its executor with the caller's context
copied, so the event loop does not wait for the enforcer. (LangChain adds the same handlers to sync and async
runs, and an async handler's error in a sync run is only logged, so the check cannot be an awaited coroutine.)
An LLM class's run (``on_llm_start``) is checked inline: a handler that sees that event sees every streamed
token too, and a token per executor hop is too dear; an async LLM run's check runs on the event loop.
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
from tokenmeter.instrumentation.ollama_payload import chat_usage
from tokenmeter.instrumentation.quota.errors import QuotaError
from tokenmeter.instrumentation.quota.gate import QuotaGate
from tokenmeter.instrumentation.responses_payload import ChatShapedResponse
from tokenmeter.instrumentation.safety import contained
from tokenmeter.integrations.langchain_quota import RunGate

_ROLES: Final = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool", "function": "function",
                 "chat": "user"}  # fmt: skip
_MODEL_PARAMETERS: Final = ("model_name", "model", "model_id", "deployment_name", "model_uid")
# The output limit, by the names classes give it; parameters are at the top of the invocation parameters, or in a
# dict there (Ollama's options, Xinference's generate_config, model_kwargs).
_OUTPUT_LIMITS: Final = ("max_tokens", "max_new_tokens", "max_output_tokens", "num_predict")
_PARAMETER_HOLDERS: Final = ("options", "model_kwargs", "generate_config")


# LangChain classes whose client tokenmeter patches (metered there, not again here), by a word of their serialized
# id: the openai SDK (ChatOpenAI...), the ollama client (ChatOllama), DashScope's Generation (ChatTongyi, Tongyi).
_PATCHED_CLIENTS: Final = ("openai", "ollama", "tongyi")
# ... except the ones a package implements over HTTP itself: langchain_community's Ollama classes use requests.
_OWN_HTTP: Final = {"ollama": "langchain_community"}


def is_metered_by_the_sdk(serialized: Mapping[str, Any] | None, model: str = "") -> bool:
    """LangChain classes that call a client tokenmeter patches: their serialized id names it. Tongyi's vision
    models go through DashScope's MultiModalConversation, which is not patched: those stay metered here."""
    parts = [str(part).lower() for part in (serialized or {}).get("id") or []]
    client = next((name for name in _PATCHED_CLIENTS if any(name in part for part in parts)), None)
    if client is None or (parts and parts[0] == _OWN_HTTP.get(client)):
        return False
    return not (client == "tongyi" and "vl" in model.lower())


def _model_of(serialized: Mapping[str, Any] | None, invocation_params: Mapping[str, Any] | None) -> str:
    for source in (invocation_params or {}, (serialized or {}).get("kwargs") or {}):
        for name in _MODEL_PARAMETERS:
            if source.get(name):
                return str(source[name])
    identifier = (serialized or {}).get("id") or ["unknown"]
    return str(identifier[-1])


def _parameter(invocation_params: Mapping[str, Any], names: Sequence[str]) -> int | float | None:
    """A numeric parameter of the run by any of ``names``: at the top of its parameters, else in a dict there."""
    holders = [invocation_params, *(invocation_params.get(name) for name in _PARAMETER_HOLDERS)]
    for holder in holders:
        for name in names if isinstance(holder, Mapping) else ():
            value = holder.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                return value
    return None


def _request_parameters(invocation_params: Mapping[str, Any]) -> dict[str, Any]:
    """The run's output limit (the quota check's estimate; Ollama's negative ``num_predict``: none) and sampling
    parameters, by their chat completions names."""
    limit = _parameter(invocation_params, _OUTPUT_LIMITS)
    found = {"max_tokens": int(limit) if limit is not None and limit >= 0 else None}
    for name in ("temperature", "top_p"):
        found[name] = _parameter(invocation_params, (name,))
    return {name: value for name, value in found.items() if value is not None}


def _as_chat_message(message: Any) -> dict[str, Any]:
    role = getattr(message, "role", None) or _ROLES.get(str(getattr(message, "type", "")), "user")
    return {"role": role, "content": getattr(message, "content", str(message))}


def _generation_infos(result: Any) -> list[Mapping[str, Any]]:
    return [getattr(generation, "generation_info", None) or {}
            for generations in getattr(result, "generations", None) or [] for generation in generations]  # fmt: skip


def _usage(result: Any) -> dict[str, int] | None:
    """OpenAI-style usage from an LLMResult, if the model reported any."""
    output = getattr(result, "llm_output", None) or {}
    usage = output.get("token_usage") or output.get("usage")
    for info in _generation_infos(result) if not usage else ():
        usage = info.get("usage") or info.get("token_usage") or chat_usage(info) or usage  # chat_usage: Ollama's
    if not isinstance(usage, Mapping):
        return None
    prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
    completion = usage.get("completion_tokens", usage.get("output_tokens"))
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _response_like(result: Any) -> ChatShapedResponse:
    """The run's result in the shape Metering reads from OpenAI responses."""
    choices = []
    for generations in getattr(result, "generations", None) or []:
        for generation in generations:
            message = getattr(generation, "message", None)
            text = getattr(message, "content", None) if message is not None else getattr(generation, "text", "")
            info = getattr(generation, "generation_info", None) or {}
            choices.append({"message": {"role": "assistant", "content": text if isinstance(text, str) else ""},
                            "finish_reason": info.get("finish_reason") or info.get("done_reason")})  # fmt: skip
    model = next((info["model"] for info in _generation_infos(result) if isinstance(info.get("model"), str)), None)
    return ChatShapedResponse(id=None, model=model, usage=_usage(result), choices=choices)


# gen_ai.provider.name by a word of the class's serialized id: the registry's names where it has one, else the
# provider's own name (the conventions' rule).
_PROVIDERS: Final = (("ollama", semconv.PROVIDER_OLLAMA), ("tongyi", semconv.PROVIDER_DASHSCOPE),
                     ("dashscope", semconv.PROVIDER_DASHSCOPE), ("anthropic", semconv.PROVIDER_ANTHROPIC),
                     ("deepseek", "deepseek"), ("mistral", "mistral_ai"), ("groq", "groq"), ("cohere", "cohere"),
                     ("qianfan", "baidu"), ("ernie", "baidu"), ("zhipu", "zhipu"), ("xinference", "xinference"),
                     ("moonshot", "moonshot"), ("baichuan", "baichuan"), ("minimax", "minimax"))  # fmt: skip


def provider_of(serialized: Mapping[str, Any] | None) -> str:
    """The provider a LangChain class calls, by its serialized id; a class that names none: its module's name
    (``["my_app", "models", "house_llm", "HouseLLM"]`` → ``house_llm``), never the openai that Metering starts with."""
    parts = [str(part).lower() for part in (serialized or {}).get("id") or []]
    found = next((name for word, name in _PROVIDERS if any(word in part for part in parts)), None)
    return found or (parts[-2] if len(parts) >= 2 else "langchain")


class _Run:
    """A metered run: its call, its request as checked, and the object its batch's runs share (see `_start`)."""

    __slots__ = ("batch", "call", "request")

    def __init__(self, call: LLMCall, request: dict[str, Any], batch: object) -> None:
        self.call, self.request, self.batch = call, request, batch


class TokenmeterCallbackHandler:
    """A LangChain callback handler (duck-typed, so importing this module needs no LangChain): meters runs, and
    checks an LLM class's runs (a chat model's: `RunQuotaCheck`)."""

    run_inline = True  # in the caller's context: attribution holds for async runs too
    raise_error = True  # a QuotaError must stop the run; nothing else leaves the handler (`contained`)
    ignore_llm = False
    ignore_chat_model = False
    ignore_chain = True
    ignore_agent = True
    ignore_retriever = True
    ignore_retry = True
    ignore_custom_event = True

    def __init__(self, metering: Metering | None) -> None:
        self.metering = metering  # None after uninstrument: the handler stays registered, idle
        self.gate: RunGate | None = None  # None: no quota checks
        self._runs: dict[UUID, _Run] = {}
        self._lock = threading.Lock()

    def _start(self, run_id: UUID, operation: str, serialized: Mapping[str, Any] | None, request: dict[str, Any],
               invocation_params: Mapping[str, Any] | None) -> None:  # fmt: skip
        metering, params = self.metering, invocation_params or {}
        with contained("LangChain run start"):  # raise_error is on: nothing of ours may leave but a QuotaError
            model = _model_of(serialized, params)
            if metering is None or is_metered_by_the_sdk(serialized, model):
                return
            request.update(model=model, **_request_parameters(params))
            call = metering.start(operation, request, None, None)
            call.provider = provider_of(serialized)  # Metering.start names the OpenAI provider
            call.span.set_attribute(semconv.GEN_AI_PROVIDER_NAME, call.provider)
            # One generate() call starts its prompts' runs with one invocation parameters dict; no other run has it.
            with self._lock:
                self._runs[run_id] = _Run(call, request, invocation_params if invocation_params is not None else run_id)

    def check(self, run_id: UUID) -> None:
        """Check a started run with the quota gate; a QuotaError stops it, and the runs started with it."""
        gate = self.gate
        with self._lock:
            run = self._runs.get(run_id)
        if gate is None or run is None:
            return
        with contained("LangChain run check"):
            try:
                gate.check(run.call, run.request)
            except QuotaError as error:
                self._stop(run.batch, error)
                raise

    def _stop(self, batch: object, error: QuotaError) -> None:
        """The runs of a refused run's batch were not made (a refusal stops the whole generate() call)."""
        with self._lock:
            runs = [self._runs.pop(run_id) for run_id in [key for key, run in self._runs.items() if run.batch is batch]]
        metering = self.metering
        for run in runs if metering is not None else ():
            with contained("LangChain run stopped"):
                metering.fail(run.call, error)

    def _pop(self, run_id: UUID) -> _Run | None:
        with self._lock:
            return self._runs.pop(run_id, None)

    def on_chat_model_start(self, serialized: Mapping[str, Any], messages: Sequence[Sequence[Any]], *,
                            run_id: UUID, **kwargs: Any) -> None:  # fmt: skip
        with contained("LangChain chat run start"):
            chat = [_as_chat_message(message) for batch in messages for message in batch]
            self._start(run_id, semconv.OPERATION_CHAT, serialized, {"messages": chat}, kwargs.get("invocation_params"))

    def on_llm_start(self, serialized: Mapping[str, Any], prompts: Sequence[str], *, run_id: UUID,
                     **kwargs: Any) -> None:  # fmt: skip
        with contained("LangChain LLM run start"):
            self._start(run_id, semconv.OPERATION_TEXT_COMPLETION, serialized, {"prompt": list(prompts)},
                        kwargs.get("invocation_params"))  # fmt: skip
        self.check(run_id)

    def on_llm_end(self, response: Any, *, run_id: UUID, **kwargs: Any) -> None:
        run, metering = self._pop(run_id), self.metering
        if run is not None and metering is not None:
            with contained("LangChain run end"):
                metering.complete(run.call, _response_like(response))

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        """Nothing billed for a run that failed before answering; a stream left or broken after some of its
        answer is billed for what it produced."""
        run, metering = self._pop(run_id), self.metering
        if run is None or metering is None:
            return
        with contained("LangChain run error"):
            partial = _response_like(kwargs.get("response"))
            if not any(choice["message"]["content"] for choice in partial.choices):
                metering.fail(run.call, error)
                return
            if isinstance(error, GeneratorExit):  # the caller left the stream early
                run.call.span.set_attribute(semconv.TM_STREAM_INCOMPLETE, True)
            else:
                run.call.error_type = getattr(error, "tokenmeter_error_type", None) or type(error).__qualname__
            metering.complete(run.call, partial)

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        pass


class RunQuotaCheck:
    """Checks a chat model's run before its model is called. Not inline: LangChain runs it in its executor, with
    the caller's context, in async runs (in sync runs it is called directly, after the metering handler)."""

    run_inline = False
    raise_error = True
    ignore_llm = True  # no LLM run and no streamed token comes here (each would be an executor hop)
    ignore_chat_model = False
    ignore_chain = True
    ignore_agent = True
    ignore_retriever = True
    ignore_retry = True
    ignore_custom_event = True

    def __init__(self, runs: TokenmeterCallbackHandler) -> None:
        self.runs = runs

    def on_chat_model_start(self, serialized: Mapping[str, Any], messages: Sequence[Sequence[Any]], *,
                            run_id: UUID, **kwargs: Any) -> None:  # fmt: skip
        self.runs.check(run_id)


_HANDLERS: list[Any] = []  # the metering handler and the chat check, once per process: LangChain keeps every hook


def register(metering: Metering | None, quota: QuotaGate | None = None) -> None:
    """Meter every LangChain run of this process with ``metering``, checked with ``quota`` (None: stop, no checks).

    Each handler is the default value of a context variable LangChain reads for every run,
    so it applies in every thread and task without being set there; the metering one is added first.
    """
    if not _HANDLERS:
        if metering is None:
            return
        from langchain_core.callbacks import BaseCallbackHandler
        from langchain_core.tracers.context import register_configure_hook

        runs = type("TokenmeterLangChainHandler", (TokenmeterCallbackHandler, BaseCallbackHandler), {})(metering)
        check = type("TokenmeterLangChainQuotaCheck", (RunQuotaCheck, BaseCallbackHandler), {})(runs)
        _HANDLERS.extend((runs, check))
        for name, handler in (("tokenmeter_langchain_handler", runs), ("tokenmeter_langchain_check", check)):
            register_configure_hook(contextvars.ContextVar(name, default=handler), inheritable=True)
    _HANDLERS[0].metering = metering
    _HANDLERS[0].gate = RunGate(quota) if metering is not None and quota is not None else None
