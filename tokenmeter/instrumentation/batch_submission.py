"""``batches.create``, wrapped: who submits the batch goes into its metadata, and its requests are checked first.

With a quota gate, the batch's input file is read (the bytes this process uploaded, else downloaded with the
same client's ``files.content``) and each model's requests are checked (`batch_gate`) before the batch is
created: ``deny`` / ``degrade`` raise `QuotaExceeded` / `QuotaDegraded` and nothing is created; a downgrade
uploads the input with those requests sent to the cheaper model (same client) and creates the batch from that
file. An input that cannot be read is not checked (tokenmeter's failure, logged once): the batch goes as asked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from opentelemetry.instrumentation.utils import is_instrumentation_enabled

from tokenmeter.instrumentation.attribution import Attribution, current_attribution
from tokenmeter.instrumentation.batch_book import BatchBook
from tokenmeter.instrumentation.batch_files import content_bytes
from tokenmeter.instrumentation.batch_gate import SubmissionCheck
from tokenmeter.instrumentation.batch_lines import with_models_swapped
from tokenmeter.instrumentation.batch_metadata import with_attribution
from tokenmeter.instrumentation.openai_patch import RequestOptions
from tokenmeter.instrumentation.openai_payload import field_of
from tokenmeter.instrumentation.safety import contained

Wrapper = Callable[[Callable[..., Any], Any, tuple[Any, ...], dict[str, Any]], Any]


def _with_submitter(kwargs: dict[str, Any], who: Attribution) -> dict[str, Any]:
    with contained("batch metadata"):
        metadata = with_attribution(kwargs.get("metadata"), who)
        if metadata is not None:
            return {**kwargs, "metadata": metadata}
    return kwargs


def _check_of(options: RequestOptions, kwargs: dict[str, Any]) -> SubmissionCheck | None:
    endpoint, file_id = kwargs.get("endpoint"), kwargs.get("input_file_id")
    if options.quota is None or not isinstance(endpoint, str) or not isinstance(file_id, str):
        return None
    return SubmissionCheck(options.quota, endpoint)


def _downgraded_name(file_id: str) -> str:
    return f"{file_id}-downgraded.jsonl"


def _remember(book: BatchBook, batch: Any, who: Attribution) -> None:
    with contained("batch created"):
        batch_id = field_of(batch, "id")
        if isinstance(batch_id, str):
            book.remember_submitter(batch_id, who)
        book.remember_batch(batch)


def _checked(book: BatchBook, instance: Any, kwargs: dict[str, Any], check: SubmissionCheck) -> dict[str, Any]:
    """The request after the check: raises its QuotaError, or points at a downgraded input file."""
    file_id: str = kwargs["input_file_id"]
    data = None
    with contained("batch input"):
        data = book.take_upload(file_id) or content_bytes(instance._client.files.content(file_id))
    swaps: dict[str, str] = {}
    if data is not None:
        with contained("batch quota check"):  # a QuotaError passes: it stops the batch
            swaps = check.check(data)
    if data is None or not swaps:
        return kwargs
    with contained("batch downgrade"):
        file = (_downgraded_name(file_id), with_models_swapped(data, swaps))
        uploaded = instance._client.files.create(file=file, purpose="batch")
        book.take_upload(uploaded.id)  # remembered by the upload's wrapper; never submitted again
        return {**kwargs, "input_file_id": uploaded.id}
    return kwargs


async def _checked_async(
    book: BatchBook, instance: Any, kwargs: dict[str, Any], check: SubmissionCheck
) -> dict[str, Any]:
    file_id: str = kwargs["input_file_id"]
    data = None
    with contained("batch input"):
        data = book.take_upload(file_id) or content_bytes(await instance._client.files.content(file_id))
    swaps: dict[str, str] = {}
    if data is not None:
        with contained("batch quota check"):
            swaps = await check.check_async(data)
    if data is None or not swaps:
        return kwargs
    with contained("batch downgrade"):
        file = (_downgraded_name(file_id), with_models_swapped(data, swaps))
        uploaded = await instance._client.files.create(file=file, purpose="batch")
        book.take_upload(uploaded.id)
        return {**kwargs, "input_file_id": uploaded.id}
    return kwargs


def make_submit_wrapper(book: BatchBook, options: RequestOptions, is_async: bool) -> Wrapper:
    def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if not is_instrumentation_enabled():
            return wrapped(*args, **kwargs)
        who = current_attribution()
        kwargs = _with_submitter(kwargs, who)
        check = _check_of(options, kwargs)
        try:
            if check is not None:
                kwargs = _checked(book, instance, kwargs, check)
            batch = wrapped(*args, **kwargs)
        finally:
            if check is not None:
                check.release()  # the spend reaches the budgets when the results are read
        _remember(book, batch, who)
        return batch

    async def async_wrapper(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if not is_instrumentation_enabled():
            return await wrapped(*args, **kwargs)
        who = current_attribution()
        kwargs = _with_submitter(kwargs, who)
        check = _check_of(options, kwargs)
        try:
            if check is not None:
                kwargs = await _checked_async(book, instance, kwargs, check)
            batch = await wrapped(*args, **kwargs)
        finally:
            if check is not None:
                check.release()
        _remember(book, batch, who)
        return batch

    return async_wrapper if is_async else wrapper
