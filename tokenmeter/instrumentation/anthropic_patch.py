"""wrapt wrappers around the Anthropic SDK's Messages API: `messages.create`, `.parse` and `.stream`, sync and async,
and the same methods of `beta.messages`.

Each call is read in chat terms (`anthropic_payload`) and goes through the shared wrapper (client_wrappers): metered
(provider ``anthropic``), checked by the quota gate before the request (``max_tokens`` is the output estimate; a
downgrade swaps ``model``), its errors (`anthropic.APIStatusError` and the rest) recorded and raised unchanged.
``create(stream=True)`` returns the SDK's Stream of events: the caller reads it through the same proxies as the openai
SDK's streams. An ``error`` event midway is raised by the SDK; before any event it bills nothing, after some it bills
what was streamed (error.type is the event's error type, e.g. ``overloaded_error``).

``messages.stream(...)`` does not call ``create``: the SDK's manager posts when the caller enters it. So the call is
metered and checked as it is entered (`_MeteredStreamManager`), and the raw event stream inside the SDK's
MessageStream (its ``_raw_stream``) is swapped for a metered proxy: the caller gets the SDK's own MessageStream, its
events, ``text_stream`` and ``get_final_message`` unchanged. ``with_raw_response`` results are read as the openai
SDK's are. Any failure of tokenmeter's own falls back to the plain call.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any, Final

import wrapt
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from wrapt import wrap_function_wrapper

from tokenmeter import semconv
from tokenmeter.instrumentation.anthropic_payload import AnthropicStreamAccumulator, chat_view, request_view
from tokenmeter.instrumentation.client_wrappers import ClientAdapter, make_wrapper
from tokenmeter.instrumentation.llm_call import LLMCall
from tokenmeter.instrumentation.metering import Metering
from tokenmeter.instrumentation.openai_patch import RequestOptions, Target
from tokenmeter.instrumentation.openai_patch import unpatch as _unwrap_targets
from tokenmeter.instrumentation.openai_streams import MeteredAsyncStream, MeteredRawResponse, MeteredStream
from tokenmeter.instrumentation.safety import contained

PACKAGE: Final = "anthropic"  # patched when the app imports it
PROVIDER_ANTHROPIC: Final = semconv.PROVIDER_ANTHROPIC
# Where the Messages resources are: a package since the SDK added batches, a module before it. Patched on the class,
# wherever it is defined (each Target names that module).
_MODULES: Final = ("anthropic.resources.messages", "anthropic.resources.beta.messages")
_METHODS: Final = ("create", "parse", "stream")
# The arguments read here and sent by the SDK: a one-shot iterator of them is read once, into a list.
_ITERABLE_ARGUMENTS: Final = ("messages", "system", "tools")


class AnthropicStreamError(Exception):
    """An ``error`` event in a stream (the SDK raises it as an APIStatusError of the HTTP 200 response), as
    `Metering` records it: its error.type is the event's error type. Never raised."""

    def __init__(self, error_type: str) -> None:
        super().__init__(error_type)
        self.tokenmeter_error_type = error_type


def _recorded(error: BaseException) -> BaseException:
    """The error as it is recorded: an error event's type rather than the HTTP status (200) of its stream."""
    status, body = getattr(error, "status_code", None), getattr(error, "body", None)
    if isinstance(status, int) and status < 400 and isinstance(body, dict) and isinstance(body.get("error"), dict):
        error_type = body["error"].get("type")
        if isinstance(error_type, str) and error_type:
            return AnthropicStreamError(error_type)
    return error


def _is_stream_helper(target: Target) -> bool:
    return target.method.endswith(".stream")


def _arguments(target: Target, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """The call's arguments (keyword-only in the SDK; with positional ones the SDK raises its TypeError)."""
    if args:
        return None
    replaced = {name: list(value) for name in _ITERABLE_ARGUMENTS if isinstance(value := kwargs.get(name), Iterator)}
    return {**kwargs, **replaced} if replaced else dict(kwargs)


def _server_of(instance: Any) -> tuple[str | None, int | None]:
    try:
        url = instance._client.base_url  # the resource's client
        return url.host or None, url.port
    except Exception:
        return None, None


def _on_result(metering: Metering, call: LLMCall, result: Any, target: Target, _sent: dict[str, Any]) -> Any:
    if _is_stream_helper(target):  # the SDK's MessageStream, just entered
        return _meter_message_stream(metering, call, result, target)
    if call.stream:
        proxy = MeteredAsyncStream if target.is_async else MeteredStream

        def meter_stream(stream: Any) -> Any:
            return proxy(stream, _stream_finisher(metering, call), False, AnthropicStreamAccumulator())

        if _is_raw_response(result):  # never parsed: finished with what is known (the input) when collected
            unread = functools.partial(_stream_finisher(metering, call), AnthropicStreamAccumulator(), None)
            return MeteredRawResponse(result, meter_stream, unread)
        if hasattr(result, "__next__") or hasattr(result, "__anext__"):
            return meter_stream(result)
    metering.complete(call, chat_view(result.parse() if _is_raw_response(result) else result))
    return result


def _meter_message_stream(metering: Metering, call: LLMCall, message_stream: Any, target: Target) -> Any:
    """The SDK's MessageStream reading a metered proxy of its raw event stream."""
    raw = getattr(message_stream, "_raw_stream", None)
    if raw is None:  # an SDK whose helper reads its events otherwise: the call ends now, with its input only
        metering.complete_stream(call, AnthropicStreamAccumulator(), None)
        return message_stream
    proxy = MeteredAsyncStream if target.is_async else MeteredStream
    message_stream._raw_stream = proxy(raw, _stream_finisher(metering, call), False, AnthropicStreamAccumulator())
    return message_stream


def _stream_finisher(metering: Metering, call: LLMCall) -> Callable[..., None]:
    def finish(accumulator: AnthropicStreamAccumulator, error: BaseException | None) -> None:
        if error is not None and accumulator.chunks == 0:  # refused before answering: nothing billed
            metering.fail(call, _recorded(error))
        else:
            metering.complete_stream(call, accumulator, None if error is None else _recorded(error))

    return finish


def _is_raw_response(result: Any) -> bool:
    return hasattr(result, "http_response") and callable(getattr(result, "parse", None))


ADAPTER: Final = ClientAdapter(
    provider=PROVIDER_ANTHROPIC,
    arguments=_arguments,
    request_view=lambda target, arguments: request_view(arguments, _is_stream_helper(target)),
    server_of=_server_of,
    on_result=_on_result,
)


class _MeteredStreamManager(wrapt.ObjectProxy):  # type: ignore[misc]
    """What `messages.stream(...)` returns: the SDK's manager, whose entering is metered and checked.

    ``enter`` is the shared wrapper of entering: it checks the call, then enters the SDK's manager (a new one for a
    downgraded model) and hands the MessageStream to `_on_result`.
    """

    def __init__(self, manager: Any, enter: Callable[..., Any], stream: Callable[..., Any], instance: Any,
                 kwargs: dict[str, Any]) -> None:  # fmt: skip
        super().__init__(manager)
        self._self_enter, self._self_stream, self._self_instance = enter, stream, instance
        self._self_kwargs = kwargs
        self._self_entered: Any = None  # the SDK's manager that was entered
        self._self_stream_entered: Any = None  # the MessageStream it gave

    def _manager_for(self, arguments: dict[str, Any]) -> Any:
        same = arguments.get("model") == self._self_kwargs.get("model")
        self._self_entered = self.__wrapped__ if same else self._self_stream(**arguments)
        return self._self_entered

    def _open(self, **arguments: Any) -> Any:
        return self._manager_for(arguments).__enter__()

    async def _open_async(self, **arguments: Any) -> Any:
        return await self._manager_for(arguments).__aenter__()

    def __enter__(self) -> Any:
        self._self_stream_entered = self._self_enter(self._open, self._self_instance, (), self._self_kwargs)
        return self._self_stream_entered

    def __exit__(self, *exc_info: Any) -> Any:
        try:
            return (self._self_entered or self.__wrapped__).__exit__(*exc_info)
        finally:
            _finish_events(self._self_stream_entered)

    async def __aenter__(self) -> Any:
        try:
            opened = self._self_enter(self._open_async, self._self_instance, (), self._self_kwargs)
            self._self_stream_entered = await opened
            return self._self_stream_entered
        finally:
            if self._self_entered is not self.__wrapped__:  # refused, or replaced for a downgraded model
                _discard_unsent(self.__wrapped__)

    async def __aexit__(self, *exc_info: Any) -> Any:
        try:
            return await (self._self_entered or self.__wrapped__).__aexit__(*exc_info)
        finally:
            _finish_events(self._self_stream_entered)


def _finish_events(message_stream: Any) -> None:
    """Leaving the manager closes the response: the call ends there (once; a no-op after the events ended). Older
    SDKs (0.40) close the response without the raw stream, which would end the call only when it is collected."""
    meter = getattr(getattr(message_stream, "_raw_stream", None), "_self_meter", None)
    if meter is not None:
        meter.finish()


def _discard_unsent(manager: Any) -> None:
    """Close the request an async manager never entered still holds (a coroutine: "never awaited" otherwise)."""
    with contained("stream manager"):
        request = getattr(manager, f"_{type(manager).__name__}__api_request", None)
        if inspect.iscoroutine(request):
            request.close()


def _stream_helper_wrapper(metering: Metering, target: Target, options: RequestOptions) -> Callable[..., Any]:
    """`stream(...)` (a plain method, async client's too): the SDK's manager, metered when it is entered."""
    enter = make_wrapper(metering, target, options, ADAPTER)

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        arguments = None
        with contained("call arguments"):
            arguments = _arguments(target, args, kwargs) if is_instrumentation_enabled() else None
        if arguments is None:
            return wrapped(*args, **kwargs)
        return _MeteredStreamManager(wrapped(**arguments), enter, wrapped, instance, arguments)

    return wrapper


def _targets() -> list[Target]:
    """The Messages methods the installed SDK has, each named by the module that defines its class."""
    targets = []
    for name in _MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        for class_name, is_async in (("Messages", False), ("AsyncMessages", True)):
            owner = getattr(module, class_name, None)
            methods = [method for method in _METHODS if callable(getattr(owner, method, None))]
            targets += [Target(owner.__module__, f"{class_name}.{method}", semconv.OPERATION_CHAT, is_async)
                        for method in methods]  # fmt: skip
    return targets


def patch(metering: Metering, options: RequestOptions) -> list[Target]:
    """Wrap the Messages methods when the `anthropic` package is installed; returns the ones wrapped."""
    wrapped: list[Target] = []
    for target in _targets():
        factory = _stream_helper_wrapper if _is_stream_helper(target) else _call_wrapper
        wrap_function_wrapper(target.module, target.method, factory(metering, target, options))
        wrapped.append(target)
    return wrapped


def _call_wrapper(metering: Metering, target: Target, options: RequestOptions) -> Callable[..., Any]:
    return make_wrapper(metering, target, options, ADAPTER)


def unpatch(targets: list[Target]) -> None:
    _unwrap_targets(targets)
