"""Batching writer between the OTLP receivers and the store.

Guarantees, in order of importance:

- **Acknowledged means stored.** A request is answered only after the insert that
  holds it returned; a crash before that leaves the SDK to retry. Nothing is
  accepted and then dropped.
- **Bounded memory.** Requests wait in a queue bounded in bytes; when it is full the
  receiver answers 429 / RESOURCE_EXHAUSTED with retry advice, and the SDK retries.
- **A retry counts once.** The SDKs re-send a failed export byte for byte. A request
  whose content digest matches one being written waits for that write; one matching
  a recently written request is acknowledged without a second insert.
- **Bad input is isolated.** When a batch insert fails, its requests are retried one
  by one: those that fail while the store answers a probe are refused (400); if the
  store itself is failing every request gets "unavailable" (503), which SDKs retry.

Each writer thread creates and uses its own store client (chDB allows one client
per thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from google.protobuf.internal.encoder import _VarintBytes

from tokenmeter.collector.limits import (
    DEFAULT_BATCH_BYTES,
    DEFAULT_FLUSH_INTERVAL,
    DEFAULT_MAX_PENDING_BYTES,
    DEFAULT_RECENT_DIGESTS,
    DEFAULT_WRITERS,
    RETRY_AFTER_SECONDS,
)
from tokenmeter.collector.payloads import OtlpPayload, Signal
from tokenmeter.collector.receiver_stats import ReceiverStats
from tokenmeter.errors import TokenmeterError

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

logger = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class IngestSchema:
    """How ClickHouse finds otlp_ingest.proto for ``FORMAT Protobuf``.

    chDB runs in this process, so it reads the package's file by absolute path. A
    ClickHouse server cannot see our files: it gets the schema text inline
    (``format_schema_source='string'``, ClickHouse >= 25.x), which it caches under its
    format_schema_path. (chDB would write that cache into the working directory.)
    """

    text: str
    path: Path | None = None

    @classmethod
    def for_store(cls, embedded: bool) -> IngestSchema:
        resource = resources.files("tokenmeter.collector").joinpath("otlp_ingest.proto")
        text = resource.read_text(encoding="utf-8")
        path = Path(str(resource))
        return cls(text, path if embedded and path.is_file() else None)

    def settings(self, signal: Signal) -> dict[str, str]:
        if self.path is not None:
            return {"format_schema": f"{self.path}:{signal.schema_message}"}
        return {
            "format_schema_source": "string",
            "format_schema": self.text,
            "format_schema_message_name": signal.schema_message,
        }


def insert_payloads(client: Client, signal: Signal, payloads: list[OtlpPayload], schema: IngestSchema) -> None:
    """One insert of length-delimited requests into the signal's input table.

    A block of one request can repeat byte for byte (an SDK retry arriving alone, the
    one-by-one retry of a failed batch), so ClickHouse's block deduplication stays on for
    it. A block of several is whatever was queued at that moment and does not repeat;
    hashing it for the deduplication window of every table the views fill cost ~14 % of
    an insert (docs/benchmarks.md), so those inserts skip it.
    """
    block = b"".join(_VarintBytes(len(payload.protobuf)) + payload.protobuf for payload in payloads)
    settings = schema.settings(signal)
    if len(payloads) > 1:
        settings = {**settings, **without_block_deduplication(client)}
    client.raw_insert(signal.input_table, insert_block=block, fmt="Protobuf", settings=settings)


def without_block_deduplication(client: Client) -> dict[str, str]:
    """Insert settings that skip ClickHouse's block deduplication.

    The tables keep a deduplication window for the production collector, whose retries
    re-send a block byte for byte. Newer ClickHouse (chDB 4.4's included) reads
    ``deduplicate_insert`` and ignores ``insert_deduplicate``; older servers know only
    the latter.
    """
    if "deduplicate_insert" in client.server_settings:
        return {"deduplicate_insert": "disable"}
    return {"insert_deduplicate": "0"}


@dataclass
class _Pending:
    payload: OtlpPayload
    size: int
    waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[WriteResult]]] = field(default_factory=list)


class IngestQueue:
    def __init__(
        self,
        open_client: Callable[[], Client],
        schema: IngestSchema,
        stats: ReceiverStats | None = None,
        *,
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        recent_digests: int = DEFAULT_RECENT_DIGESTS,
        writers: int = DEFAULT_WRITERS,
    ) -> None:
        self._open_client = open_client
        self.stats = stats or ReceiverStats()
        self._max_pending_bytes = max_pending_bytes
        self._batch_bytes = batch_bytes
        self._flush_interval = flush_interval
        self._recent_limit = recent_digests
        self._schema = schema
        self._condition = threading.Condition()
        self._queue: deque[_Pending] = deque()
        self._inflight: dict[bytes, _Pending] = {}
        self._recent: OrderedDict[bytes, None] = OrderedDict()
        self._pending_bytes = 0  # queued + being written: what the memory bound counts
        self._queued_bytes = 0  # queued, not yet taken by the writer
        self._closing = False
        self._draining = False
        self._writers = max(1, writers)
        self._threads: list[threading.Thread] = []
        self._ready = threading.Semaphore(0)
        self._start_errors: list[BaseException] = []
        self.stats.add_gauge("tokenmeter_receiver_queue_bytes", lambda: float(self._pending_bytes))
        self.stats.add_gauge("tokenmeter_receiver_queue_requests", lambda: float(len(self._inflight)))

    # --- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Start the writer threads; raises what opening the store raised."""
        for number in range(self._writers):
            thread = threading.Thread(target=self._run, name=f"tokenmeter-ingest-writer-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)
        for _ in self._threads:
            self._ready.acquire()
        if self._start_errors:
            self.close()
            raise self._start_errors[0]

    def drain_now(self) -> None:
        """Write what is queued without waiting for the flush interval (shutdown has begun)."""
        with self._condition:
            self._draining = True
            self._condition.notify_all()

    def close(self, timeout: float = 30.0) -> None:
        """Refuse new requests, write everything queued, stop the writer threads."""
        with self._condition:
            self._closing = True
            self._condition.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(thread.is_alive() for thread in self._threads):
            logger.error(
                "the ingest writers did not finish within %.0f s; %d requests unwritten", timeout, len(self._queue)
            )

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    # --- submit (event loop side) ----------------------------------------------

    async def write(self, payload: OtlpPayload) -> WriteResult:
        """Queue one request and wait until it is stored (or refused)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[WriteResult] = loop.create_future()
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
                pending = _Pending(payload, size)
                self._inflight[digest] = pending
                was_empty = not self._queue
                self._queue.append(pending)
                self._pending_bytes += size
                self._queued_bytes += size
                # wake the writer to start its flush timer, or to write a full batch now
                if was_empty or self._queued_bytes >= self._batch_bytes:
                    self._condition.notify_all()
            pending.waiters.append((loop, future))
        return await asyncio.shield(future)

    # --- writer thread -----------------------------------------------------------

    def _run(self) -> None:
        """One writer: its own store client, inserts in turn with the other writers.

        An insert is mostly single-threaded in ClickHouse (protobuf parsing, the views), so
        two writers on two cores nearly double throughput (measured: 38k -> 71k spans/s).
        """
        try:
            client = self._open_client()
        except BaseException as exc:
            self._start_errors.append(exc)
            self._ready.release()
            return
        self._ready.release()
        next_insert_at = 0.0  # monotonic time before which this writer does not insert again
        while True:
            with self._condition:
                while not self._due_locked(next_insert_at):
                    if self._closing and not self._queue:
                        return
                    self._condition.wait(self._wait_time_locked(next_insert_at))
                batch = self._take_batch_locked()
            self._write(client, batch)
            # Group commit: what arrives while an insert runs, or within flush_interval
            # after it, shares the next insert. Senders wait for their acknowledgement, so
            # lingering longer would not grow batches, only latency; a request arriving
            # after a quiet spell is written at once.
            next_insert_at = time.monotonic() + self._flush_interval

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

    def _take_batch_locked(self) -> list[_Pending]:
        batch: list[_Pending] = []
        taken = 0
        while self._queue and (not batch or taken + self._queue[0].size <= self._batch_bytes):
            pending = self._queue.popleft()
            batch.append(pending)
            taken += pending.size
        self._queued_bytes -= taken
        return batch

    def _write(self, client: Client, batch: list[_Pending]) -> None:
        by_signal: dict[Signal, list[_Pending]] = {}
        for pending in batch:
            by_signal.setdefault(pending.payload.signal, []).append(pending)
        for signal, group in by_signal.items():
            started = time.perf_counter()
            try:
                insert_payloads(client, signal, [pending.payload for pending in group], self._schema)
            except Exception as exc:
                self._write_one_by_one(client, signal, group, exc)
            else:
                self.stats.observe_write(time.perf_counter() - started)
                for pending in group:
                    self._finish(pending, WriteResult("written"))

    def _write_one_by_one(self, client: Client, signal: Signal, group: list[_Pending], batch_error: Exception) -> None:
        logger.warning(
            "insert of %d %s requests failed (%s); retrying them one by one",
            len(group),
            signal.value,
            _first_line(batch_error),
        )
        for pending in group:
            try:
                insert_payloads(client, signal, [pending.payload], self._schema)
            except Exception as exc:
                if self._store_answers(client):
                    logger.warning(
                        "refused one %s request the store could not read: %s", signal.value, _first_line(exc)
                    )
                    self._finish(
                        pending, WriteResult("rejected", f"the store could not read this request: {_first_line(exc)}")
                    )
                else:
                    logger.error("the store is not answering: %s", _first_line(exc))
                    self._finish(pending, WriteResult("unavailable", "the store is not available; retry later"))
            else:
                self._finish(pending, WriteResult("written"))

    @staticmethod
    def _store_answers(client: Client) -> bool:
        try:
            client.command("SELECT 1")
        except Exception:
            return False
        return True

    def _finish(self, pending: _Pending, result: WriteResult) -> None:
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


def _resolve(future: asyncio.Future[WriteResult], result: WriteResult) -> None:
    if not future.done():
        future.set_result(result)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
