"""The app's connections to the enforcer: one deadline per check, and a sender for what nobody waits for.

- ``post``: a synchronous caller's check, on a keep-alive HTTP/1.1 connection of its own
  thread (stdlib ``http.client``: ~0.4 ms a round trip on loopback, against ~0.75 ms for
  httpx's client and ~2.5 ms through an event loop thread, measured side by side). The
  whole check, connecting included, gets one deadline
  (:mod:`~tokenmeter.instrumentation.quota.endpoint`).
- ``post_async``: an asynchronous caller's check, on a pooled ``httpx.AsyncClient`` of its
  own loop (``enforcer_client``), bounded by ``asyncio.wait_for``.
- ``send`` and ``call_later``: releases and lease expiries, on one sender thread with a
  connection of its own (:mod:`~tokenmeter.instrumentation.quota.background_sender`); the
  caller never waits for them.

A forked child makes its own connections and sender.
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, Final

import httpx
from opentelemetry.instrumentation.utils import suppress_instrumentation
from pydantic import BaseModel

from tokenmeter.instrumentation.quota.background_sender import BackgroundSender
from tokenmeter.instrumentation.quota.endpoint import (
    STALE_CONNECTION_ERRORS,
    EnforcerEndpoint,
    NotSentError,
    time_left,
)
from tokenmeter.quota_wire import wire_bytes, wire_json

MAX_ASYNC_CONNECTIONS: Final = 128  # checks of one event loop at once; beyond it they wait (within their deadline)


def enforcer_client(headers: dict[str, str], timeout: float) -> httpx.AsyncClient:
    """A pooled client for one event loop; ``timeout`` bounds each phase (the caller bounds the whole)."""
    limits = httpx.Limits(max_connections=MAX_ASYNC_CONNECTIONS, max_keepalive_connections=MAX_ASYNC_CONNECTIONS)
    return httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(timeout), limits=limits)


class _OwnRequestsFilter(logging.Filter):
    """Drops httpx's INFO line for requests to the enforcer (hosts such as Chatchat log httpx at
    INFO: two lines per LLM call would be tokenmeter's); other httpx records pass."""

    def __init__(self, base: str) -> None:
        super().__init__()
        self._base = base

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (record.levelno <= logging.INFO and len(args) > 1 and str(args[1]).startswith(self._base))


class EnforcerConnection:
    def __init__(self, base: str, headers: dict[str, str], timeout: float) -> None:
        """``base``: the enforcer's URL without a trailing slash; ``timeout``: a whole check's, in seconds."""
        self._endpoint = EnforcerEndpoint.parse(base, headers)
        self._base = base
        self._headers = headers  # the caller's (authorization): what the async clients send
        self._timeout = timeout
        self._local = threading.local()
        self._sender = BackgroundSender(self._endpoint)
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )
        self._log_filter = _OwnRequestsFilter(base)
        logging.getLogger("httpx").addFilter(self._log_filter)

    # --- the caller's check ------------------------------------------------------

    def deadline(self) -> float:
        """The monotonic time by which a check that starts now must be done."""
        return time.monotonic() + self._timeout

    def post(self, path: str, body: BaseModel, deadline: float | None = None) -> tuple[int, bytes]:
        """(status, body) within the timeout in all (or by ``deadline``); raises TimeoutError, NotSentError or
        OSError."""
        return self._exchange(path, wire_bytes(body), self.deadline() if deadline is None else deadline)

    def get(self, path: str, deadline: float) -> tuple[int, bytes]:
        """(status, body) of a GET by ``deadline``; raises as ``post``."""
        return self._exchange(path, None, deadline)

    def _exchange(self, path: str, payload: bytes | None, deadline: float) -> tuple[int, bytes]:
        connection = self._thread_connection()
        reused = connection.sock is not None
        try:
            return self._endpoint.exchange(connection, path, payload, deadline)
        except STALE_CONNECTION_ERRORS:
            connection.close()
            if not reused:
                raise
            return self._endpoint.exchange(connection, path, payload, deadline)  # once, on a fresh connection
        except BaseException:
            connection.close()  # half a request may be on it: never reuse it
            raise

    async def post_async(self, path: str, body: BaseModel, deadline: float | None = None) -> tuple[int, bytes]:
        """(status, body) within the timeout in all (or by ``deadline``); raises NotSentError, another
        httpx.HTTPError or TimeoutError."""
        client = self._async_client()
        return await self._exchange_async(client.post(f"{self._base}{path}", json=wire_json(body)), deadline)

    async def get_async(self, path: str, deadline: float) -> tuple[int, bytes]:
        """(status, body) of a GET by ``deadline``; raises as ``post_async``."""
        return await self._exchange_async(self._async_client().get(f"{self._base}{path}"), deadline)

    async def _exchange_async(self, request: Coroutine[Any, Any, httpx.Response], deadline: float | None
                              ) -> tuple[int, bytes]:  # fmt: skip
        timeout = self._timeout if deadline is None else time_left(deadline)
        try:
            with suppress_instrumentation():  # not an LLM call: no span, no trace context, no baggage
                response = await asyncio.wait_for(request, timeout)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise NotSentError(str(exc)) from None
        return response.status_code, response.content

    def _thread_connection(self) -> http.client.HTTPConnection:
        connection: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
        if connection is None or getattr(self._local, "pid", 0) != os.getpid():
            connection = self._endpoint.new_connection()
            self._local.connection, self._local.pid = connection, os.getpid()
        return connection

    def _async_client(self) -> httpx.AsyncClient:
        # An AsyncClient's connections belong to the loop that made them: one per loop.
        loop = asyncio.get_running_loop()
        client = self._async.get(loop)
        if client is None:
            client = enforcer_client(self._headers, self._timeout)
            self._async[loop] = client
        return client

    # --- what nobody waits for ---------------------------------------------------

    def send(self, path: str, body: BaseModel) -> None:
        """POST on the sender thread; failures are logged at debug level (a reservation then expires)."""
        self._sender.send(path, body)

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the sender thread in ``delay`` seconds (a lease's expiry)."""
        self._sender.call_later(delay, callback)

    def flush(self, timeout: float = 2.0) -> None:
        """Wait until what is queued has been sent (``timeout`` at most)."""
        self._sender.flush(timeout)

    def close(self, timeout: float = 2.0) -> None:
        """Send what is queued (``timeout`` at most), then stop the sender; httpx logs our requests again."""
        self._sender.close(timeout)
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
        logging.getLogger("httpx").removeFilter(self._log_filter)
