"""Store reads for the HTTP API, on one thread that owns its own client.

chDB allows one client per thread; the ingest writer has its own. Reads run here so
a slow report never stalls the event loop or the writer.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

T = TypeVar("T")


class StoreReader:
    def __init__(self, open_client: Callable[[], Client]) -> None:
        self._open_client = open_client
        self._local = threading.local()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenmeter-store-reader")

    def _client(self) -> Client:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._open_client()
            self._local.client = client
        return client

    def call(self, read: Callable[[Client], T]) -> T:
        """Run ``read`` with the reader's client and wait (for use off the event loop)."""
        return self._executor.submit(lambda: read(self._client())).result()

    async def run(self, read: Callable[[Client], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: read(self._client()))

    def close(self) -> None:
        self._executor.shutdown(wait=True)
