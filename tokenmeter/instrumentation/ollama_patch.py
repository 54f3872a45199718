"""wrapt wrappers around the Ollama Python client's `chat`, `generate` and `embed` (sync and async).

Each call is read in chat terms (`ollama_payload`): ``chat`` as a chat call, ``generate`` as a text completion,
``embed`` (and the deprecated ``embeddings``) as an embeddings call.
The shared wrapper (client_wrappers) starts a metered call (provider ``ollama``), checks it with the quota gate
(``options.num_predict`` is the output estimate; a downgrade swaps the ``model`` argument), calls the client unchanged
and hands the response, or the stream of chunks (a generator the caller reads unchanged), to `Metering`. A streamed
call's request is sent when the caller first reads: an error then, before any chunk, fails the call (nothing billed)
as a refused request.
The module-level ``ollama.chat`` / ``ollama.generate`` are bound methods of a default client taken at import; they are
rebound to the wrapped methods (and back on `unpatch`). Any failure of tokenmeter's own falls back to the plain call.
Not done here: trace context headers (the client takes no per-call headers) and the answer cache.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator
from typing import Any, Final

from wrapt import wrap_function_wrapper

from tokenmeter import semconv
from tokenmeter.instrumentation import openai_patch
from tokenmeter.instrumentation.client_wrappers import ClientAdapter, make_wrapper
from tokenmeter.instrumentation.llm_call import LLMCall
from tokenmeter.instrumentation.metering import Metering
from tokenmeter.instrumentation.ollama_payload import (
    PROVIDER_OLLAMA,
    OllamaStreamAccumulator,
    chat_view,
    embeddings_view,
    request_view,
)
from tokenmeter.instrumentation.openai_patch import RequestOptions, Target
from tokenmeter.instrumentation.openai_streams import MeteredAsyncStream, MeteredStream

PACKAGE: Final = "ollama"  # patched when the app imports it
_MODULE: Final = "ollama._client"
TARGETS: Final = (
    Target(_MODULE, "Client.chat", semconv.OPERATION_CHAT, False),
    Target(_MODULE, "Client.generate", semconv.OPERATION_TEXT_COMPLETION, False),
    Target(_MODULE, "AsyncClient.chat", semconv.OPERATION_CHAT, True),
    Target(_MODULE, "AsyncClient.generate", semconv.OPERATION_TEXT_COMPLETION, True),
    Target(_MODULE, "Client.embed", semconv.OPERATION_EMBEDDINGS, False),
    Target(_MODULE, "AsyncClient.embed", semconv.OPERATION_EMBEDDINGS, True),
    Target(_MODULE, "Client.embeddings", semconv.OPERATION_EMBEDDINGS, False),  # deprecated, still in the client
    Target(_MODULE, "AsyncClient.embeddings", semconv.OPERATION_EMBEDDINGS, True),
)
# The parameters each method takes by position (the rest are keyword-only).
_POSITIONAL: Final = {
    "chat": ("model", "messages"),
    "generate": ("model", "prompt", "suffix"),
    "embed": ("model", "input", "truncate", "options", "keep_alive", "dimensions"),
    "embeddings": ("model", "prompt", "options", "keep_alive"),
}


class _MeteredAsyncGenerator(MeteredAsyncStream):
    """The async client's stream is an async generator: closing it is ``aclose``."""

    async def aclose(self) -> None:
        try:
            await self.__wrapped__.aclose()
        finally:
            self._self_meter.finish()


def _server_of(instance: Any) -> tuple[str | None, int | None]:
    try:
        url = instance._client.base_url  # the client's httpx client
        return url.host or None, url.port
    except Exception:
        return None, None


def _arguments(target: Target, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """All arguments by name; None for arguments the method does not take (the client raises its TypeError)."""
    names = _POSITIONAL[target.method.split(".")[1]]
    if len(args) > len(names) or any(name in kwargs for name in names[: len(args)]):  # the client's TypeError
        return None
    keywords = {**dict(zip(names, args, strict=False)), **kwargs}
    if isinstance(messages := keywords.get("messages"), Iterator):  # read here and by the client: a list of it
        keywords["messages"] = list(messages)
    return keywords


def _on_result(metering: Metering, call: LLMCall, result: Any, target: Target, _arguments: dict[str, Any]) -> Any:
    if call.stream and (hasattr(result, "__next__") or hasattr(result, "__anext__")):
        proxy = _MeteredAsyncGenerator if target.is_async else MeteredStream
        return proxy(result, _stream_finisher(metering, call), False, OllamaStreamAccumulator())
    embedded = call.operation == semconv.OPERATION_EMBEDDINGS
    metering.complete(call, embeddings_view(result) if embedded else chat_view(result))
    return result


def _stream_finisher(metering: Metering, call: LLMCall) -> Callable[..., None]:
    def finish(accumulator: OllamaStreamAccumulator, error: BaseException | None) -> None:
        if error is not None and accumulator.chunks == 0:  # refused before answering (the request is sent lazily)
            metering.fail(call, error)
        else:
            metering.complete_stream(call, accumulator, error)

    return finish


ADAPTER: Final = ClientAdapter(
    provider=PROVIDER_OLLAMA,
    arguments=_arguments,
    request_view=lambda target, arguments: request_view(target.operation, arguments),
    server_of=_server_of,
    on_result=_on_result,
)


def patch(metering: Metering, options: RequestOptions) -> list[Target]:
    """Wrap the client's chat and generate when the `ollama` package is installed; returns the ones wrapped."""
    try:
        module = importlib.import_module(_MODULE)
    except ImportError:
        return []
    wrapped: list[Target] = []
    for target in TARGETS:
        if not hasattr(module, target.method.split(".")[0]):
            continue
        wrap_function_wrapper(module, target.method, make_wrapper(metering, target, options, ADAPTER))
        wrapped.append(target)
    _rebind_default_client()
    return wrapped


def unpatch(targets: list[Target]) -> None:
    openai_patch.unpatch(targets)
    if targets:
        _rebind_default_client()


def _rebind_default_client() -> None:
    """``ollama.chat`` / ``generate``: the default client's methods as the class has them now (wrapped or not),
    unless the application replaced them."""
    package = sys.modules.get("ollama")
    default = getattr(package, "_client", None)
    if default is None:
        return
    for name in _POSITIONAL:
        current = getattr(package, name, None)
        if getattr(current, "__self__", None) is default:
            setattr(package, name, getattr(default, name))
