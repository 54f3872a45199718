"""Meter a batch's results when the app reads them: one LLM call per line of an output or error file.

Each line is metered as the call it stands for (`batch_lines`): its operation by the body's ``object``, its model,
response id and usage (cache reads, reasoning and the other parts, as the chat path reads them) from the body,
provider ``openai``, priced at the price's batch share (`LLMCall.batch`), valid when the batch was created. A
line with an error, or a status other than 200, is a failed call that bills nothing (``error.type``: the failed
response's status, else the line's error code). The request is not in the result file: a line's local count
(drift) has its output only.

Whose calls they are: the submitter's when the batch is known here (created in this process, or retrieved: its
metadata names the submitter), else the reader's. A file is metered once per process (`BatchBook.first_reading`).
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable

from tokenmeter import semconv
from tokenmeter.instrumentation.attribution import Attribution, attribution
from tokenmeter.instrumentation.batch_book import BatchBook, SubmittedBatch
from tokenmeter.instrumentation.batch_lines import (
    BatchResult,
    batch_results,
    looks_like_results,
    result_model,
    result_operation,
    result_response,
)
from tokenmeter.instrumentation.metering import Metering
from tokenmeter.instrumentation.safety import contained


class BatchResultError(Exception):
    """A result line that is an error, as `Metering.fail` records it (never raised): its code is error.type."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.tokenmeter_error_type = code


def meter_result_file(
    metering: Metering, book: BatchBook, file_id: str, data: bytes, server: tuple[str | None, int | None]
) -> int:
    """Meter ``data`` if it is a batch's output or error file read for the first time here; the calls metered."""
    if not looks_like_results(data) or not book.first_reading(file_id):  # a file read again is not parsed again
        return 0
    results = batch_results(data) or []
    batch = book.batch_of(file_id)

    def meter_all() -> None:
        for result in results:
            with contained("batch result"):
                _meter(metering, result, batch, server, file_id)

    if batch is not None and batch.submitter is not None:
        _as(batch.submitter, meter_all)
    else:
        meter_all()  # a file of a batch not seen here: the reader's calls
    return len(results)


def _meter(
    metering: Metering,
    result: BatchResult,
    batch: SubmittedBatch | None,
    server: tuple[str | None, int | None],
    file_id: str,
) -> None:
    operation = result_operation(result, batch.endpoint if batch is not None else None)
    # When OpenAI ran the batch, if known: the span's times, and the price valid when it was created.
    started, ended = (_ns(batch.created_at), _ns(batch.completed_at)) if batch is not None else (None, None)
    call = metering.start(operation, {"model": result_model(result)}, *server, started_ns=started)
    call.batch = True
    # Always set on a batch's call (a stored call is repriced at the batch rate by it): the batch's id, else the
    # id of the result file read when this process does not know its batch.
    call.span.set_attribute(semconv.TM_BATCH_ID, batch.batch_id if batch is not None else file_id)
    if result.succeeded:
        metering.complete(call, result_response(result), ended_ns=ended)
    else:
        metering.fail(call, BatchResultError(result.error_code or "error"), ended_ns=ended)


def _ns(seconds: int | None) -> int | None:
    return seconds * 1_000_000_000 if seconds is not None else None


def _as(who: Attribution, work: Callable[[], None]) -> None:
    """Run ``work`` as ``who``: in a context of its own, so neither the reader's attribution nor its baggage
    mixes in (an authoritative scope: fields the submitter left unset stay unset)."""

    def scoped() -> None:
        with attribution(who.user, who.department, who.app, who.session, message=who.message, authoritative=True):
            work()

    contextvars.Context().run(scoped)
