"""What the app sends the enforcer without waiting: releases and lease expiries, on one sender thread.

The thread starts on first use and has a connection of its own. Releases queue (the oldest
are dropped beyond a limit: their reservations expire in the enforcer); timers run callbacks
(a lease's expiry) when due. A forked child starts its own thread with an empty queue.
"""

from __future__ import annotations

import heapq
import http.client
import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Final

from pydantic import BaseModel

from tokenmeter.instrumentation.quota.endpoint import (
    SEND_TIMEOUT_SECONDS,
    STALE_CONNECTION_ERRORS,
    EnforcerEndpoint,
    time_left,
)
from tokenmeter.quota_wire import wire_bytes

# The connection's module: the sender's log lines keep the logger they have always had.
logger = logging.getLogger("tokenmeter.instrumentation.quota.connection")

_SENDS_QUEUED_LIMIT: Final = 100_000  # releases waiting to go out; beyond it the oldest are dropped (they expire)


class BackgroundSender:
    def __init__(self, endpoint: EnforcerEndpoint) -> None:
        self._endpoint = endpoint
        self._lock = threading.Condition()
        self._pid = os.getpid()
        self._sender: threading.Thread | None = None
        self._queue: deque[tuple[str, bytes]] = deque()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._timer_ids = itertools.count()
        self._busy = False
        self._closed = False

    def send(self, path: str, body: BaseModel) -> None:
        """POST on the sender thread; failures are logged at debug level (a reservation then expires)."""
        with self._lock:
            self._ensure_sender_locked()
            if len(self._queue) >= _SENDS_QUEUED_LIMIT:
                self._queue.popleft()
            self._queue.append((path, wire_bytes(body)))
            self._lock.notify()

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the sender thread in ``delay`` seconds (a lease's expiry)."""
        with self._lock:
            self._ensure_sender_locked()
            heapq.heappush(self._timers, (time.monotonic() + delay, next(self._timer_ids), callback))
            self._lock.notify()

    def flush(self, timeout: float = 2.0) -> None:
        """Wait until what is queued has been sent (``timeout`` at most)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while (self._queue or self._busy) and self._sender is not None and self._pid == os.getpid():
                if not self._lock.wait(time_left(deadline)) and time.monotonic() >= deadline:
                    break

    def close(self, timeout: float = 2.0) -> None:
        """Send what is queued (``timeout`` at most), then stop the sender thread."""
        self.flush(timeout)
        with self._lock:
            self._closed = True
            self._lock.notify_all()

    def _ensure_sender_locked(self) -> None:
        if self._pid != os.getpid():  # a forked child: its parent's thread and queue are not here
            self._pid, self._sender, self._queue, self._timers = os.getpid(), None, deque(), []
        self._closed = False
        if self._sender is None or not self._sender.is_alive():
            self._sender = threading.Thread(target=self._send_forever, name="tokenmeter-enforcer-sender",
                                            daemon=True)  # fmt: skip
            self._sender.start()

    def _send_forever(self) -> None:
        connection = self._endpoint.new_connection()
        while True:
            with self._lock:
                self._busy = False
                self._lock.notify_all()
                while not self._queue and not self._due_locked():
                    if self._closed:
                        connection.close()
                        return
                    self._lock.wait(self._timers[0][0] - time.monotonic() if self._timers else None)
                due = []
                while self._due_locked():
                    due.append(heapq.heappop(self._timers)[2])
                item = self._queue.popleft() if self._queue else None
                self._busy = True
            for callback in due:
                try:
                    callback()
                except Exception:
                    logger.exception("tokenmeter: a lease expiry failed")
            if item is not None:
                self._send_one(connection, *item)

    def _due_locked(self) -> bool:
        return bool(self._timers) and self._timers[0][0] <= time.monotonic()

    def _send_one(self, connection: http.client.HTTPConnection, path: str, payload: bytes) -> None:
        deadline = time.monotonic() + SEND_TIMEOUT_SECONDS
        for attempt in range(2):
            try:
                status, answer = self._endpoint.exchange(connection, path, payload, deadline)
            except STALE_CONNECTION_ERRORS as exc:
                connection.close()
                if attempt:
                    logger.debug("tokenmeter: %s to the enforcer failed: %s", path, exc)
                continue
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                logger.debug("tokenmeter: %s to the enforcer failed: %s", path, exc)
                return
            if status != 200:
                logger.debug("tokenmeter: %s to the enforcer: HTTP %s %s", path, status, answer[:200])
            return
