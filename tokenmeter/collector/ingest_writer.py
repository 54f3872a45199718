"""The ingest queue's writers: batches from the backlog inserted into the store, then acknowledged.

A batch is inserted per signal in one insert. When that fails its requests are retried one
by one: a request that fails while the store answers a probe is refused (the store cannot
read it); one that fails while the store does not answer gets "unavailable", which SDKs retry.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from tokenmeter.collector.ingest_backlog import IngestBacklog, PendingRequest, WriteResult
from tokenmeter.collector.ingest_insert import IngestSchema, insert_payloads
from tokenmeter.collector.payloads import Signal
from tokenmeter.collector.receiver_stats import ReceiverStats

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

# The queue's module: the writers' log lines keep the logger they have always had.
logger = logging.getLogger("tokenmeter.collector.ingest_queue")


class IngestWriter:
    """What each writer thread does with its own store client; shared by the threads, it keeps no state."""

    def __init__(self, backlog: IngestBacklog, schema: IngestSchema, stats: ReceiverStats, flush_interval: float
                 ) -> None:  # fmt: skip
        self._backlog = backlog
        self._schema = schema
        self._stats = stats
        self._flush_interval = flush_interval

    def run(self, client: Client) -> None:
        """Insert batches in turn with the other writers until the backlog is closed and empty."""
        next_insert_at = 0.0  # monotonic time before which this writer does not insert again
        while True:
            batch = self._backlog.next_batch(next_insert_at)
            if batch is None:
                return
            self.write(client, batch)
            # Group commit: what arrives while an insert runs, or within flush_interval
            # after it, shares the next insert. Senders wait for their acknowledgement, so
            # lingering longer would not grow batches, only latency; a request arriving
            # after a quiet spell is written at once.
            next_insert_at = time.monotonic() + self._flush_interval

    def write(self, client: Client, batch: list[PendingRequest]) -> None:
        by_signal: dict[Signal, list[PendingRequest]] = {}
        for pending in batch:
            by_signal.setdefault(pending.payload.signal, []).append(pending)
        for signal, group in by_signal.items():
            started = time.perf_counter()
            try:
                insert_payloads(client, signal, [pending.payload for pending in group], self._schema)
            except Exception as exc:
                self._write_one_by_one(client, signal, group, exc)
            else:
                self._stats.observe_write(time.perf_counter() - started)
                for pending in group:
                    self._backlog.finish(pending, WriteResult("written"))

    def _write_one_by_one(self, client: Client, signal: Signal, group: list[PendingRequest], batch_error: Exception
                          ) -> None:  # fmt: skip
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
                self._backlog.finish(pending, self._refusal(client, signal, exc))
            else:
                self._backlog.finish(pending, WriteResult("written"))

    @staticmethod
    def _refusal(client: Client, signal: Signal, exc: Exception) -> WriteResult:
        """A lone request's insert failed: the request's fault if the store still answers, else the store's."""
        if _store_answers(client):
            logger.warning("refused one %s request the store could not read: %s", signal.value, _first_line(exc))
            return WriteResult("rejected", f"the store could not read this request: {_first_line(exc)}")
        logger.error("the store is not answering: %s", _first_line(exc))
        return WriteResult("unavailable", "the store is not available; retry later")


def _store_answers(client: Client) -> bool:
    try:
        client.command("SELECT 1")
    except Exception:
        return False
    return True


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
