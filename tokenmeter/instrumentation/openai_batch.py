"""wrapt wrappers around the openai SDK's Batch API: `files` and `batches`, sync and async (1.x and current lines).

- ``files.create(purpose="batch")``, with a quota gate: the upload's bytes are remembered (`BatchBook`), read
  without taking them from the SDK (`batch_files.upload_bytes`), for the check at submission;
- ``batches.create``: the submitter's attribution goes into the batch's ``metadata``, and with a quota gate each
  model's requests are checked before the batch is created (`batch_submission`);
- ``batches.retrieve`` (and ``create``): the batch behind each output and error file is remembered;
- ``files.content`` / ``retrieve_content``: a batch's output or error file is metered, one call per line, once
  per process (`batch_results`); the caller gets the content unchanged. Any other file is untouched.

Any failure of tokenmeter's own leaves the app's call as it was; only a quota decision changes it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Final

from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from wrapt import wrap_function_wrapper

from tokenmeter.instrumentation import openai_patch
from tokenmeter.instrumentation.batch_book import BatchBook
from tokenmeter.instrumentation.batch_files import content_bytes, upload_bytes
from tokenmeter.instrumentation.batch_results import meter_result_file
from tokenmeter.instrumentation.batch_submission import Wrapper, make_submit_wrapper
from tokenmeter.instrumentation.metering import Metering
from tokenmeter.instrumentation.openai_patch import RequestOptions, Target
from tokenmeter.instrumentation.openai_payload import field_of
from tokenmeter.instrumentation.safety import contained

PACKAGE: Final = "openai"  # patched when the app imports it
_FILES: Final = "openai.resources.files"
_BATCHES: Final = "openai.resources.batches"
# Not LLM calls themselves: Target.operation stays empty; what each wrapper does goes by the method's name.
TARGETS: Final = tuple(
    Target(module, f"{prefix}{name}", "", prefix == "Async")
    for module, name in (
        (_FILES, "Files.create"),
        (_FILES, "Files.content"),
        (_FILES, "Files.retrieve_content"),  # deprecated, still in both SDK lines
        (_BATCHES, "Batches.create"),
        (_BATCHES, "Batches.retrieve"),
    )
    for prefix in ("", "Async")
)
# After the SDK's call: (what before() gave, the result, the resource, args, kwargs) -> None.
_After = Callable[[Any, Any, Any, tuple[Any, ...], dict[str, Any]], None]


def _server_of(instance: Any) -> tuple[str | None, int | None]:
    try:
        url = instance._client.base_url  # the resource's client; an httpx URL
        return url.host or None, url.port
    except Exception:
        return None, None


def _around(is_async: bool, site: str, before: Callable[[dict[str, Any]], Any], after: _After) -> Wrapper:
    """Call ``before(kwargs)``, the SDK unchanged, then ``after(...)``; tokenmeter's failures in either are
    contained, and the result is returned as the SDK gave it."""

    def prepared(kwargs: dict[str, Any]) -> Any:
        if not is_instrumentation_enabled():  # e.g. inside suppress_instrumentation()
            return None
        with contained(site):
            return before(kwargs)
        return None

    def finish(state: Any, result: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if state is not None:
            with contained(site):
                after(state, result, instance, args, kwargs)

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        state = prepared(kwargs)
        result = wrapped(*args, **kwargs)
        finish(state, result, instance, args, kwargs)
        return result

    async def async_wrapper(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        state = prepared(kwargs)
        result = await wrapped(*args, **kwargs)
        finish(state, result, instance, args, kwargs)
        return result

    return async_wrapper if is_async else wrapper


class BatchWrappers:
    """The wrappers of one instrumentation, sharing what it remembers of batches (`BatchBook`)."""

    def __init__(self, metering: Metering, options: RequestOptions) -> None:
        self.metering = metering
        self.options = options
        self.book = BatchBook()

    def for_target(self, target: Target) -> Wrapper:
        method = target.method.removeprefix("Async")
        if method == "Batches.create":
            return make_submit_wrapper(self.book, self.options, target.is_async)
        if method == "Batches.retrieve":
            return _around(target.is_async, "batch retrieved", lambda kwargs: True, self._retrieved)
        if method == "Files.create":
            return _around(target.is_async, "batch upload", self._upload_bytes, self._uploaded)
        return _around(target.is_async, "batch results", lambda kwargs: True, self._read)

    def _upload_bytes(self, kwargs: dict[str, Any]) -> bytes | None:
        """Only the quota check reads a batch's input: without a gate nothing is kept."""
        if self.options.quota is None or kwargs.get("purpose") != "batch":
            return None
        return upload_bytes(kwargs.get("file"))

    def _uploaded(self, data: bytes, result: Any, *_: Any) -> None:
        file_id = field_of(result, "id")
        if isinstance(file_id, str):
            self.book.remember_upload(file_id, data)

    def _retrieved(self, _: bool, batch: Any, *__: Any) -> None:
        self.book.remember_batch(batch)

    def _read(self, _: bool, result: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        file_id = args[0] if args else kwargs.get("file_id")
        data = content_bytes(result) if isinstance(file_id, str) else None
        if data is not None and isinstance(file_id, str):
            meter_result_file(self.metering, self.book, file_id, data, _server_of(instance))


def patch(metering: Metering, options: RequestOptions) -> list[Target]:
    """Wrap the Batch API's methods the installed SDK has; returns the ones wrapped."""
    wrappers = BatchWrappers(metering, options)
    wrapped: list[Target] = []
    for target in TARGETS:
        try:
            module = importlib.import_module(target.module)
        except ImportError:
            continue
        class_name, method = target.method.split(".")
        if not hasattr(getattr(module, class_name, None), method):
            continue
        wrap_function_wrapper(module, target.method, wrappers.for_target(target))
        wrapped.append(target)
    return wrapped


def unpatch(targets: list[Target]) -> None:
    openai_patch.unpatch(targets)
