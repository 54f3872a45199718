"""wrapt wrappers around the OpenAI SDK's `create` methods (1.x and current lines).

Chat and text completions and embeddings are read as they are; the Responses API
(`responses.create`) is read in chat terms (`responses_payload`): its request as chat
messages, its response as one chat choice, its stream's events by an accumulator of their own.

Each wrapper starts a metered call, makes its span current for the request (so
HTTP-level spans nest under it), calls the SDK unchanged, and hands the result
to `Metering`. Any failure of tokenmeter's own falls back to the plain call.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from opentelemetry import context, trace
from opentelemetry.instrumentation.utils import is_instrumentation_enabled, unwrap
from wrapt import wrap_function_wrapper

from tokenmeter import semconv
from tokenmeter.answer_cache.sealed_cache import AnswerCache
from tokenmeter.instrumentation.answer_cache_hits import answer_from_cache
from tokenmeter.instrumentation.llm_call import LLMCall
from tokenmeter.instrumentation.metering import Metering
from tokenmeter.instrumentation.openai_payload import StreamAccumulator, caller_asked_for_usage
from tokenmeter.instrumentation.openai_streams import MeteredAsyncStream, MeteredRawResponse, MeteredStream
from tokenmeter.instrumentation.propagation import should_propagate, with_context_headers
from tokenmeter.instrumentation.quota.gate import QuotaGate
from tokenmeter.instrumentation.responses_payload import ResponsesStreamAccumulator, chat_view, request_view
from tokenmeter.instrumentation.safety import contained


@dataclass(frozen=True)
class Target:
    module: str
    method: str  # "Class.method"
    operation: str
    is_async: bool
    # The Responses API: read in chat terms; no usage to inject into its streams (their last event has it), and
    # the answer cache does not answer it.
    responses: bool = False


TARGETS = (
    Target("openai.resources.chat.completions", "Completions.create", semconv.OPERATION_CHAT, False),
    Target("openai.resources.chat.completions", "AsyncCompletions.create", semconv.OPERATION_CHAT, True),
    Target("openai.resources.completions", "Completions.create", semconv.OPERATION_TEXT_COMPLETION, False),
    Target("openai.resources.completions", "AsyncCompletions.create", semconv.OPERATION_TEXT_COMPLETION, True),
    Target("openai.resources.embeddings", "Embeddings.create", semconv.OPERATION_EMBEDDINGS, False),
    Target("openai.resources.embeddings", "AsyncEmbeddings.create", semconv.OPERATION_EMBEDDINGS, True),
    Target("openai.resources.responses", "Responses.create", semconv.OPERATION_CHAT, False, responses=True),
    Target("openai.resources.responses", "AsyncResponses.create", semconv.OPERATION_CHAT, True, responses=True),
)


@dataclass(frozen=True)
class RequestOptions:
    stream_usage: str  # "off" | "inject"
    propagate: str  # "hops" | "loopback" | "always" | "never"
    quota: QuotaGate | None = None  # checks each call with the enforcer (TOKENMETER_ENFORCER_URL)
    answers: AnswerCache | None = None  # the repeat-answer cache (TOKENMETER_ANSWER_CACHE)


def _server_of(instance: Any) -> tuple[str | None, int | None]:
    try:
        url = instance._client.base_url  # the resource's client; an httpx URL
        return url.host or None, url.port
    except Exception:
        return None, None


def _prepare_request(call: LLMCall, kwargs: dict[str, Any], options: RequestOptions, target: Target) -> dict[str, Any]:
    """The kwargs to send: usage requested in streams if configured, context headers if allowed."""
    if (
        call.stream
        and options.stream_usage == "inject"
        and not target.responses
        and call.operation != semconv.OPERATION_EMBEDDINGS
        and not caller_asked_for_usage(kwargs)
    ):
        stream_options = dict(kwargs.get("stream_options") or {})
        stream_options["include_usage"] = True
        kwargs = {**kwargs, "stream_options": stream_options}
        call.hide_usage_chunk = True
    if should_propagate(options.propagate, call.server_address, hop=call.hop):
        kwargs = with_context_headers(kwargs)
    return kwargs


def _begin(
    metering: Metering, target: Target, instance: Any, kwargs: dict[str, Any], options: RequestOptions
) -> tuple[LLMCall | None, dict[str, Any], object | None]:
    """Start metering; on any internal failure, (None, kwargs, None) and the call goes on unmetered."""
    with contained("call start"):
        kwargs = _materialized(kwargs)  # kept on failure too: a generator it read is now this list
        host, port = _server_of(instance)
        call = metering.start(target.operation, request_view(kwargs) if target.responses else kwargs, host, port)
        token = context.attach(trace.set_span_in_context(call.span))
        try:
            return call, _prepare_request(call, kwargs, options, target), token
        except Exception:
            context.detach(token)
            raise
    return None, kwargs, None


def _materialized(kwargs: dict[str, Any]) -> dict[str, Any]:
    """kwargs whose one-shot iterables (generators of messages or inputs) are lists.

    The SDK accepts any iterable; tokenmeter reads the input too, so a generator
    would arrive empty at the SDK. A list of the same items keeps the request identical.
    """
    replaced = {
        name: list(value) for name in ("messages", "input", "prompt") if isinstance(value := kwargs.get(name), Iterator)
    }
    return {**kwargs, **replaced} if replaced else kwargs


def _detach(token: object | None) -> None:
    if token is not None:
        with contained("context detach"):
            context.detach(token)  # type: ignore[arg-type]


def _on_result(metering: Metering, call: LLMCall, result: Any, target: Target) -> Any:
    with contained("call result"):
        if call.stream:
            proxy = MeteredAsyncStream if target.is_async else MeteredStream
            accumulator = ResponsesStreamAccumulator if target.responses else StreamAccumulator

            def meter_stream(stream: Any) -> Any:
                return proxy(stream, _stream_finisher(metering, call), call.hide_usage_chunk, accumulator())

            if _is_sdk_stream(result):
                return meter_stream(result)
            if _is_raw_response(result):
                # Never parsed: finish with what is known (the input) and no output.
                finish_unread = functools.partial(_stream_finisher(metering, call), accumulator(), None)
                return MeteredRawResponse(result, meter_stream, finish_unread)
        metering.complete(call, chat_view(_parsed(result)) if target.responses else _parsed(result))
    return result


def _stream_finisher(metering: Metering, call: LLMCall) -> Callable[..., None]:
    def finish(accumulator: Any, error: BaseException | None) -> None:
        metering.complete_stream(call, accumulator, error)

    return finish


def _is_sdk_stream(result: Any) -> bool:
    return hasattr(result, "__next__") or hasattr(result, "__anext__")


def _is_raw_response(result: Any) -> bool:
    return hasattr(result, "http_response") and callable(getattr(result, "parse", None))


def _parsed(result: Any) -> Any:
    """`with_raw_response` calls return a wrapper; its parsed body carries the usage."""
    return result.parse() if _is_raw_response(result) else result


def _answers(options: RequestOptions, target: Target) -> AnswerCache | None:
    """The answer cache, for the calls it answers: chat completions (it keeps chat completion objects)."""
    return None if target.responses else options.answers


def _on_error(metering: Metering, call: LLMCall, error: BaseException) -> None:
    with contained("call failure"):
        metering.fail(call, error)


def make_sync_wrapper(metering: Metering, target: Target, options: RequestOptions) -> Callable[..., Any]:
    def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if not is_instrumentation_enabled():  # e.g. inside an exporter, or suppress_instrumentation()
            return wrapped(*args, **kwargs)
        call, kwargs, token = _begin(metering, target, instance, kwargs, options)
        if call is None:
            return wrapped(*args, **kwargs)
        try:
            # A repeated question is answered from the cache before the quota check: a hit costs nothing.
            if (hit := answer_from_cache(_answers(options, target), metering, call, kwargs, False)) is not None:
                return hit
            if options.quota is not None:
                kwargs = options.quota.check(call, kwargs)
            result = wrapped(*args, **kwargs)
        except BaseException as error:
            _on_error(metering, call, error)
            raise
        finally:
            _detach(token)
        return _on_result(metering, call, result, target)

    return wrapper


def make_async_wrapper(metering: Metering, target: Target, options: RequestOptions) -> Callable[..., Any]:
    async def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if not is_instrumentation_enabled():
            return await wrapped(*args, **kwargs)
        call, kwargs, token = _begin(metering, target, instance, kwargs, options)
        if call is None:
            return await wrapped(*args, **kwargs)
        try:
            if (hit := answer_from_cache(_answers(options, target), metering, call, kwargs, True)) is not None:
                return hit
            if options.quota is not None:
                kwargs = await options.quota.check_async(call, kwargs)
            result = await wrapped(*args, **kwargs)
        except BaseException as error:
            _on_error(metering, call, error)
            raise
        finally:
            _detach(token)
        return _on_result(metering, call, result, target)

    return wrapper


def patch(metering: Metering, options: RequestOptions) -> list[Target]:
    """Wrap every target the installed SDK has; returns the ones wrapped."""
    wrapped: list[Target] = []
    for target in TARGETS:
        try:
            module = importlib.import_module(target.module)
        except ImportError:
            continue
        class_name, _ = target.method.split(".")
        if not hasattr(module, class_name):
            continue
        factory = make_async_wrapper if target.is_async else make_sync_wrapper
        wrap_function_wrapper(module, target.method, factory(metering, target, options))
        wrapped.append(target)
    return wrapped


def unpatch(targets: list[Target]) -> None:
    for target in targets:
        module = importlib.import_module(target.module)
        class_name, method = target.method.split(".")
        unwrap(getattr(module, class_name), method)
