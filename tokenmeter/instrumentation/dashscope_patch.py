"""wrapt wrappers around DashScope's own SDK: `Generation.call` / `AioGeneration.call` (Qwen natively), `TextEmbedding`.

Each Generation call is metered as a chat call (`dashscope_payload` reads it in chat terms), each
`TextEmbedding.call` as an embeddings call (`dashscope_embeddings`), and checked by the quota gate before the
request (``max_tokens`` is its output limit; a downgrade swaps ``model``), as the openai SDK's are. The
SDK returns a response with ``status_code`` other than 200 instead of raising: that call is recorded as an error
(``error.type`` is the response's ``code``), bills nothing, and is returned unchanged. Streams (generators of
whole responses) reach the caller chunk for chunk through the same proxies as the openai SDK's. Any failure of
tokenmeter's own falls back to the plain call. The provider is ``dashscope`` (not a value the GenAI registry
lists: DashScope is not in it).
"""

from __future__ import annotations

import functools
import importlib
import inspect
from typing import Any, Final
from urllib.parse import urlsplit

from wrapt import FunctionWrapper

from tokenmeter import semconv
from tokenmeter.instrumentation import dashscope_embeddings
from tokenmeter.instrumentation.client_wrappers import ClientAdapter, make_wrapper
from tokenmeter.instrumentation.dashscope_payload import (
    DashScopeStreamAccumulator,
    chat_view,
    error_code,
    is_error,
    request_view,
)
from tokenmeter.instrumentation.llm_call import LLMCall
from tokenmeter.instrumentation.metering import Metering
from tokenmeter.instrumentation.openai_patch import RequestOptions, Target
from tokenmeter.instrumentation.openai_streams import MeteredAsyncStream, MeteredStream

PROVIDER_DASHSCOPE: Final = semconv.PROVIDER_DASHSCOPE  # not in the GenAI registry's list of values

PACKAGE: Final = "dashscope"  # patched when the app imports it
TARGETS = (
    Target("dashscope.aigc.generation", "Generation.call", semconv.OPERATION_CHAT, False),
    Target("dashscope.aigc.generation", "AioGeneration.call", semconv.OPERATION_CHAT, True),
    Target("dashscope.embeddings.text_embedding", "TextEmbedding.call", semconv.OPERATION_EMBEDDINGS, False),
)


class DashScopeResponseError(Exception):
    """A DashScope response with a status other than 200, as `Metering.fail` records it: never raised. Its
    error.type is the response's code (``tokenmeter_error_type``, read by Metering)."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.tokenmeter_error_type = code


def response_error(code: str) -> DashScopeResponseError:
    return DashScopeResponseError(code)


def _server() -> tuple[str | None, int | None]:
    """Where the SDK sends its requests: `dashscope.base_http_api_url`."""
    try:
        import dashscope

        url = urlsplit(str(dashscope.base_http_api_url))
        return url.hostname or None, url.port or (443 if url.scheme == "https" else 80)
    except Exception:
        return None, None


def _on_result(metering: Metering, call: LLMCall, result: Any, target: Target, kwargs: dict[str, Any]) -> Any:
    if call.stream and (hasattr(result, "__next__") or hasattr(result, "__anext__")):
        proxy = MeteredAsyncStream if target.is_async else MeteredStream
        accumulator = DashScopeStreamAccumulator(incremental=kwargs.get("incremental_output") is True)
        return proxy(result, functools.partial(_finish_stream, metering, call), False, accumulator)
    if is_error(result):
        metering.fail(call, response_error(error_code(result)))
    elif call.operation == semconv.OPERATION_EMBEDDINGS:
        metering.complete(call, dashscope_embeddings.response_view(result))
    else:
        metering.complete(call, chat_view(result))
    return result


def _finish_stream(
    metering: Metering, call: LLMCall, stream: DashScopeStreamAccumulator, error: BaseException | None
) -> None:
    if error is None and stream.error_code is not None:
        if not stream.answered:  # refused before any answer: nothing billed
            metering.fail(call, response_error(stream.error_code))
            return
        error = response_error(stream.error_code)  # failed midway: what was streamed is billed
    metering.complete_stream(call, stream, error)


def _arguments(names: tuple[str, ...], _target: Target, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The call's arguments by name (``Generation.call("qwen-plus", "hi")``), so the gate can swap the model; None
    (called as given) for more positional arguments than the method takes."""
    if len(args) > len(names):
        return None
    return {**dict(zip(names, args, strict=False)), **kwargs} if args else dict(kwargs)


def _request_view(target: Target, arguments: dict[str, Any]) -> dict[str, Any]:
    if target.operation == semconv.OPERATION_EMBEDDINGS:
        return dashscope_embeddings.request_view(arguments)
    return request_view(arguments)


def _adapter(names: tuple[str, ...]) -> ClientAdapter:
    return ClientAdapter(
        provider=PROVIDER_DASHSCOPE,
        arguments=functools.partial(_arguments, names),
        request_view=_request_view,
        server_of=lambda _class: _server(),
        on_result=_on_result,
    )


def _positional_names(method: Any) -> tuple[str, ...]:
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return tuple(p.name for p in inspect.signature(method).parameters.values() if p.kind in kinds)


def patch(metering: Metering, options: RequestOptions) -> list[Target]:
    """Wrap every target the installed SDK has (nothing without `dashscope`); returns the ones wrapped."""
    wrapped: list[Target] = []
    for target in TARGETS:
        try:
            module = importlib.import_module(target.module)
        except ImportError:
            continue
        class_name, method = target.method.split(".")
        owner = getattr(module, class_name, None)
        if owner is None or not isinstance(owner.__dict__.get(method), classmethod):
            continue
        adapter = _adapter(_positional_names(getattr(owner, method)))
        # The classmethod itself is wrapped (wrapt binds it to the class, or a subclass, as it is called).
        setattr(
            owner, method, FunctionWrapper(owner.__dict__[method], make_wrapper(metering, target, options, adapter))
        )
        wrapped.append(target)
    return wrapped


def unpatch(targets: list[Target]) -> None:
    for target in targets:
        class_name, method = target.method.split(".")
        owner = getattr(importlib.import_module(target.module), class_name)
        wrapper = owner.__dict__.get(method)
        if isinstance(wrapper, FunctionWrapper):
            setattr(owner, method, wrapper.__wrapped__)
