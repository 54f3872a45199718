"""The wrapper every client other than the openai SDK shares: start metering, check with the gate, call, hand over.

A client module (ollama_patch, dashscope_patch, anthropic_patch) says how its calls are read in a `ClientAdapter`:
the call's arguments by name, the chat-shaped view of its request that `Metering` and the quota gate read, where it
sends, and what to do with the result (complete, fail, or a stream proxy the caller reads unchanged). The wrapper is
the same for all of them: the metered call's span is current while the client sends (so HTTP spans nest under it),
a downgrade swaps the ``model`` argument, an error is recorded and raised unchanged, and any failure of tokenmeter's
own falls back to the plain call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from opentelemetry import context, trace
from opentelemetry.instrumentation.utils import is_instrumentation_enabled

from tokenmeter import semconv
from tokenmeter.instrumentation.llm_call import LLMCall
from tokenmeter.instrumentation.metering import Metering
from tokenmeter.instrumentation.openai_patch import RequestOptions, Target
from tokenmeter.instrumentation.safety import contained

Arguments = dict[str, Any]


@dataclass(frozen=True)
class ClientAdapter:
    """How one client's calls are read and metered."""

    provider: str  # gen_ai.provider.name of the calls
    # All of the call's arguments by name; None: the client is called as given, unmetered (e.g. arguments the method
    # does not take, so that the client raises its own TypeError).
    arguments: Callable[[Target, tuple[Any, ...], Arguments], Arguments | None]
    # The request as metering reads a chat or text completion's: model, stream, messages or prompt, max_tokens...
    request_view: Callable[[Target, Arguments], Arguments]
    # Where the instance (or the SDK, for class methods) sends: (host, port), or (None, None).
    server_of: Callable[[Any], tuple[str | None, int | None]]
    # After the client returned: metering.complete / fail, or a stream proxy; returns what the caller gets.
    on_result: Callable[[Metering, LLMCall, Any, Target, Arguments], Any]


def _begin(
    metering: Metering, adapter: ClientAdapter, target: Target, instance: Any, arguments: Arguments
) -> tuple[LLMCall | None, Arguments, object | None]:
    """Start metering; on any internal failure, (None, {}, None) and the call goes on unmetered."""
    with contained("call start"):
        view = adapter.request_view(target, arguments)
        host, port = adapter.server_of(instance)
        call = metering.start(target.operation, view, host, port)
        call.provider = adapter.provider  # Metering.start names the openai provider
        call.span.set_attribute(semconv.GEN_AI_PROVIDER_NAME, adapter.provider)
        return call, view, context.attach(trace.set_span_in_context(call.span))
    return None, {}, None


def _with_checked_model(arguments: Arguments, view: Arguments, checked: Arguments) -> Arguments:
    """The client's arguments after the gate checked the view: the model swapped if it was downgraded."""
    if checked.get("model") != view.get("model"):
        return {**arguments, "model": checked["model"]}
    return arguments


def _handed_over(
    metering: Metering, adapter: ClientAdapter, call: LLMCall, result: Any, *, target: Target, arguments: Arguments
) -> Any:
    with contained("call result"):
        return adapter.on_result(metering, call, result, target, arguments)
    return result


def _failed(metering: Metering, call: LLMCall, error: BaseException) -> None:
    with contained("call failure"):
        metering.fail(call, error)


def _detach(token: object | None) -> None:
    if token is not None:
        with contained("context detach"):
            context.detach(token)  # type: ignore[arg-type]


def _sync_wrapper(metering: Metering, target: Target, options: RequestOptions, adapter: ClientAdapter) -> Any:
    def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: Arguments) -> Any:
        arguments = _arguments(adapter, target, args, kwargs)
        if arguments is None:
            return wrapped(*args, **kwargs)
        call, view, token = _begin(metering, adapter, target, instance, arguments)
        if call is None:
            return wrapped(**arguments)
        try:
            if options.quota is not None:
                arguments = _with_checked_model(arguments, view, options.quota.check(call, view))
            result = wrapped(**arguments)
        except BaseException as error:
            _failed(metering, call, error)
            raise
        finally:
            _detach(token)
        return _handed_over(metering, adapter, call, result, target=target, arguments=arguments)

    return wrapper


def _async_wrapper(metering: Metering, target: Target, options: RequestOptions, adapter: ClientAdapter) -> Any:
    async def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: Arguments) -> Any:
        arguments = _arguments(adapter, target, args, kwargs)
        if arguments is None:
            return await wrapped(*args, **kwargs)
        call, view, token = _begin(metering, adapter, target, instance, arguments)
        if call is None:
            return await wrapped(**arguments)
        try:
            if options.quota is not None:
                arguments = _with_checked_model(arguments, view, await options.quota.check_async(call, view))
            result = await wrapped(**arguments)
        except BaseException as error:
            _failed(metering, call, error)
            raise
        finally:
            _detach(token)
        return _handed_over(metering, adapter, call, result, target=target, arguments=arguments)

    return wrapper


def _arguments(adapter: ClientAdapter, target: Target, args: tuple[Any, ...], kwargs: Arguments) -> Arguments | None:
    if not is_instrumentation_enabled():
        return None
    with contained("call arguments"):
        return adapter.arguments(target, args, kwargs)
    return None


def make_wrapper(
    metering: Metering, target: Target, options: RequestOptions, adapter: ClientAdapter
) -> Callable[..., Any]:
    """A wrapt wrapper of ``target`` (sync or async as the target is) that meters and checks its calls."""
    factory = _async_wrapper if target.is_async else _sync_wrapper
    return factory(metering, target, options, adapter)  # type: ignore[no-any-return]
