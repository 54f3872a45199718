"""The ingest queue's backlog: requests waiting to be written or being written, bounded in bytes.

One entry per content digest: a retry of a request being written waits for that write, and
the digests of recently written requests are remembered so that a retry of one is
acknowledged without a second insert. The event loop adds requests and awaits their
results; writer threads take batches and finish them. One condition guards it all.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Literal

from tokenmeter.collector.limits import RETRY_AFTER_SECONDS
from tokenmeter.collector.payloads import OtlpPayload
from tokenmeter.errors import TokenmeterError

Outcome = Literal["written", "duplicate", "rejected", "unavailable"]


@dataclass(frozen=True)
class WriteResult:
    outcome: Outcome
    message: str = ""


class QueueFullError(TokenmeterError):
    """No room for the request now; the client should retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"the receiver's queue is full; retry in {retry_after:g} s")
        self.retry_after = retry_after


class QueueClosedError(TokenmeterError):
    """The receiver is shutting down."""


@dataclass
class PendingRequest:
    """One request in the backlog, and the senders (its retries included) waiting for its result."""

    payload: OtlpPayload
    size: int
    waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[WriteResult]]] = field(default_factory=list)


class IngestBacklog:
    def __init__(self, *, max_pending_bytes: int, batch_bytes: int, recent_digests: int) -> None:
        self._max_pending_bytes = max_pending_bytes
        self._batch_bytes = batch_bytes
        self._recent_limit = recent_digests
        self._condition = threading.Condition()
        self._queue: deque[PendingRequest] = deque()
        self._inflight: dict[bytes, PendingRequest] = {}
        self._recent: OrderedDict[bytes, None] = OrderedDict()
        self._pending_bytes = 0  # queued + being written: what the memory bound counts
        self._queued_bytes = 0  # queued, not yet taken by a writer
        self._closing = False
        self._draining = False

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    @property
    def pending_requests(self) -> int:
        """Requests queued or being written."""
        return len(self._inflight)

    @property
    def queued_requests(self) -> int:
        """Requests not yet taken by a writer."""
        return len(self._queue)

    # --- the event loop's side ------------------------------------------------------

    def add(self, payload: OtlpPayload, loop: asyncio.AbstractEventLoop, future: asyncio.Future[WriteResult]
            ) -> WriteResult | None:  # fmt: skip
        """Queue the request (or join the write of the same one) and resolve ``future`` with its result.

        Returns the result at once instead for a request written moments ago; raises
        QueueClosedError when closing, QueueFullError when there is no room for it.
        """
        digest = payload.digest
        with self._condition:
            if self._closing:
                raise QueueClosedError("the receiver is shutting down")
            if digest in self._recent:
                return WriteResult("duplicate", "already stored")
            pending = self._inflight.get(digest)
            if pending is None:
                size = len(payload.protobuf)
                if self._pending_bytes + size > self._max_pending_bytes and self._pending_bytes > 0:
                    raise QueueFullError(RETRY_AFTER_SECONDS)
                pending = PendingRequest(payload, size)
                self._inflight[digest] = pending
                was_empty = not self._queue
                self._queue.append(pending)
                self._pending_bytes += size
                self._queued_bytes += size
                # wake the writer to start its flush timer, or to write a full batch now
                if was_empty or self._queued_bytes >= self._batch_bytes:
                    self._condition.notify_all()
            pending.waiters.append((loop, future))
        return None

    def drain_now(self) -> None:
        """Batches are due at once from now on, without waiting for a writer's flush interval."""
        with self._condition:
            self._draining = True
            self._condition.notify_all()

    def close(self) -> None:
        """Refuse new requests; writers take what is queued, then stop."""
        with self._condition:
            self._closing = True
            self._condition.notify_all()

    # --- the writers' side ----------------------------------------------------------

    def next_batch(self, next_insert_at: float) -> list[PendingRequest] | None:
        """Wait until a batch is due and take it (up to batch_bytes); None once closed and empty.

        ``next_insert_at`` is the monotonic time before which the calling writer does not
        insert again, unless a full batch is queued or the backlog is draining.
        """
        with self._condition:
            while not self._due_locked(next_insert_at):
                if self._closing and not self._queue:
                    return None
                self._condition.wait(self._wait_time_locked(next_insert_at))
            return self._take_batch_locked()

    def finish(self, pending: PendingRequest, result: WriteResult) -> None:
        """The request's result: remembered if written, handed to everyone waiting for it."""
        digest = pending.payload.digest
        with self._condition:
            self._inflight.pop(digest, None)
            self._pending_bytes -= pending.size
            if result.outcome == "written":
                self._recent[digest] = None
                if len(self._recent) > self._recent_limit:
                    self._recent.popitem(last=False)
            waiters = list(pending.waiters)
        for loop, future in waiters:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
                loop.call_soon_threadsafe(_resolve, future, result)

    def _due_locked(self, next_insert_at: float) -> bool:
        if not self._queue:
            return False
        if self._closing or self._draining:
            return True
        return next_insert_at <= time.monotonic() or self._queued_bytes >= self._batch_bytes

    def _wait_time_locked(self, next_insert_at: float) -> float | None:
        if not self._queue:
            return None
        return max(0.0, next_insert_at - time.monotonic())

    def _take_batch_locked(self) -> list[PendingRequest]:
        batch: list[PendingRequest] = []
        taken = 0
        while self._queue and (not batch or taken + self._queue[0].size <= self._batch_bytes):
            pending = self._queue.popleft()
            batch.append(pending)
            taken += pending.size
        self._queued_bytes -= taken
        return batch


def _resolve(future: asyncio.Future[WriteResult], result: WriteResult) -> None:
    if not future.done():
        future.set_result(result)
