"""Can the store answer right now? A cheap query for ``/healthz``, never blocking the event loop.

The query (:func:`tokenmeter.store.client.probe_store`) runs on the StoreReader's thread.
One probe runs at a time and its answer is kept for ``max_age`` seconds, so health checks
polled often cost one query a second; a store that does not answer within ``timeout`` is
reported as such while the probe goes on waiting in the background.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

from tokenmeter.serve.store_reader import StoreReader
from tokenmeter.store.client import probe_store

PROBE_TIMEOUT_SECONDS: Final = 2.0
PROBE_MAX_AGE_SECONDS: Final = 1.0


class StoreProbe:
    def __init__(
        self, reader: StoreReader, timeout: float = PROBE_TIMEOUT_SECONDS, max_age: float = PROBE_MAX_AGE_SECONDS
    ) -> None:
        self._reader = reader
        self._timeout = timeout
        self._max_age = max_age
        self._answer: str | None = None  # the last probe's problem; None: it answered
        self._answered_at = float("-inf")
        self._running: asyncio.Future[None] | None = None

    async def problem(self) -> str | None:
        """None when the store answered a probe in the last ``max_age`` seconds, else what is wrong."""
        if time.monotonic() - self._answered_at < self._max_age:
            return self._answer
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(self._probe())
        try:
            await asyncio.wait_for(asyncio.shield(self._running), self._timeout)
        except TimeoutError:
            return f"the store did not answer within {self._timeout:g} s"
        return self._answer

    async def _probe(self) -> None:
        try:
            await self._reader.run(probe_store)
            answer = None
        except Exception as exc:
            text = str(exc).strip()
            answer = f"the store cannot answer: {type(exc).__name__}: {text.splitlines()[0] if text else ''}"
        self._answer, self._answered_at = answer, time.monotonic()
