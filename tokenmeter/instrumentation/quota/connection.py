"""The app's connections to the enforcer: one deadline per check, and a sender for what nobody waits for.

- ``post``: a synchronous caller's check, on a keep-alive HTTP/1.1 connection of its own
  thread (stdlib ``http.client``: ~0.4 ms a round trip on loopback, against ~0.75 ms for
  httpx's client and ~2.5 ms through an event loop thread, measured side by side). The
  whole check, connecting included, gets one deadline: each step gets the time that is
  left. (httpx's timeouts are per phase: a 50 ms one became ~260 ms at p99 under a burst.)
- ``send`` and ``call_later``: releases and lease expiries, on one sender thread with a
  connection of its own; the caller never waits for them.

Asynchronous callers use a pooled ``httpx.AsyncClient`` on their own loop (``enforcer_client``),
bounded by ``asyncio.wait_for``. A forked child makes its own connections and sender.
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
from urllib.parse import urlsplit

import httpx
from opentelemetry.instrumentation.utils import suppress_instrumentation
from pydantic import BaseModel

from tokenmeter.quota_wire import wire_bytes

logger = logging.getLogger(__name__)

MAX_ASYNC_CONNECTIONS: Final = 128  # checks of one event loop at once; beyond it they wait (within their deadline)
SEND_TIMEOUT_SECONDS: Final = 5.0  # releases: nobody waits for them
_SENDS_QUEUED_LIMIT: Final = 100_000  # releases waiting to go out; beyond it the oldest are dropped (they expire)
# A reused keep-alive connection the server had closed fails before the request was read: safe to send again.
_STALE_CONNECTION_ERRORS: Final = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


class NotSentError(ConnectionError):
    """The request never reached the enforcer (refused, unreachable): it did nothing."""


def enforcer_client(headers: dict[str, str], timeout: float) -> httpx.AsyncClient:
    """A pooled client for one event loop; ``timeout`` bounds each phase (the caller bounds the whole)."""
    limits = httpx.Limits(max_connections=MAX_ASYNC_CONNECTIONS, max_keepalive_connections=MAX_ASYNC_CONNECTIONS)
    return httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(timeout), limits=limits)


class EnforcerConnection:
    def __init__(self, base: str, headers: dict[str, str]) -> None:
        parts = urlsplit(base)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError(f"the enforcer URL must be http(s)://host[:port][/path], got {base!r}")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path.rstrip("/")
        self._headers = {**headers, "content-type": "application/json", "connection": "keep-alive"}
        self._local = threading.local()
        self._lock = threading.Condition()
        self._pid = os.getpid()
        self._sender: threading.Thread | None = None
        self._queue: deque[tuple[str, bytes]] = deque()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._timer_ids = itertools.count()
        self._busy = False
        self._closed = False

    # --- the caller's check ------------------------------------------------------

    def post(self, path: str, body: BaseModel, timeout: float) -> tuple[int, bytes]:
        """(status, body) within ``timeout`` seconds in all; raises TimeoutError, NotSentError or OSError."""
        deadline = time.monotonic() + timeout
        payload = wire_bytes(body)
        connection = self._thread_connection()
        reused = connection.sock is not None
        try:
            return self._exchange(connection, path, payload, deadline)
        except _STALE_CONNECTION_ERRORS:
            connection.close()
            if not reused:
                raise
            return self._exchange(connection, path, payload, deadline)  # once, on a fresh connection
        except BaseException:
            connection.close()  # half a request may be on it: never reuse it
            raise

    def _exchange(self, connection: http.client.HTTPConnection, path: str, payload: bytes, deadline: float
                  ) -> tuple[int, bytes]:  # fmt: skip
        with suppress_instrumentation():  # not an LLM call: no span, no trace context, no baggage
            if connection.sock is None:
                connection.timeout = _left(deadline)
                try:
                    connection.connect()
                except OSError as exc:  # refused, unreachable, or no answer to connecting in time
                    raise NotSentError(f"cannot connect to the enforcer: {exc}") from None
            assert connection.sock is not None
            connection.sock.settimeout(_left(deadline))
            connection.request("POST", self._prefix + path, payload, self._headers)
            connection.sock.settimeout(_left(deadline))
            response = connection.getresponse()
            return response.status, response.read()

    def _thread_connection(self) -> http.client.HTTPConnection:
        connection: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
        if connection is None or getattr(self._local, "pid", 0) != os.getpid():
            connection = self._new_connection()
            self._local.connection, self._local.pid = connection, os.getpid()
        return connection

    def _new_connection(self) -> http.client.HTTPConnection:
        kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        return kind(self._host, self._port, timeout=SEND_TIMEOUT_SECONDS)

    # --- what nobody waits for ---------------------------------------------------

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
                if not self._lock.wait(_left(deadline)) and time.monotonic() >= deadline:
                    break

    def close(self, timeout: float = 2.0) -> None:
        """Send what is queued (``timeout`` at most), then stop the sender."""
        self.flush(timeout)
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()

    def _ensure_sender_locked(self) -> None:
        if self._pid != os.getpid():  # a forked child: its parent's thread and queue are not here
            self._pid, self._sender, self._queue, self._timers = os.getpid(), None, deque(), []
        self._closed = False
        if self._sender is None or not self._sender.is_alive():
            self._sender = threading.Thread(target=self._send_forever, name="tokenmeter-enforcer-sender",
                                            daemon=True)  # fmt: skip
            self._sender.start()

    def _send_forever(self) -> None:
        connection = self._new_connection()
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
                status, answer = self._exchange(connection, path, payload, deadline)
            except _STALE_CONNECTION_ERRORS as exc:
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


def _left(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.001)
