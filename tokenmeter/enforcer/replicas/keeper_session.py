"""This replica's session with the coordination server (ZooKeeper or ClickHouse Keeper, through kazoo).

Starting connects, creates the top nodes and registers the replica: its ephemeral node
``<root>/replicas/<id>`` exists while its session lives, which is what makes it live for the
others. A session that was lost (the node went with it) registers again once it is back. The
session also counts what went wrong on it, for every part that uses its client.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from tokenmeter.enforcer.replicas.coordination_url import CoordinationError, CoordinationUrl

if TYPE_CHECKING:
    from kazoo.client import KazooClient

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS: Final = 10.0
SESSION_TIMEOUT_SECONDS: Final = 10.0  # a dead replica's session ends within this (the server may clamp it)


class KeeperSession:
    """The kazoo client of one replica, its registration, and the errors met. Thread-safe."""

    def __init__(self, url: CoordinationUrl, replica_id: str, clock: Callable[[], float]) -> None:
        self.url = url
        self.replica_id = replica_id
        self._clock = clock
        self._lock = threading.Lock()
        self._client: KazooClient | None = None
        self._lost = False
        self.errors = 0
        self.last_error: str | None = None

    @property
    def client(self) -> KazooClient | None:
        """The client while the session runs; None before start and after close."""
        return self._client

    def require_client(self) -> KazooClient:
        if self._client is None:
            raise CoordinationError("coordination is not started")
        return self._client

    def start(self, on_replicas: Callable[[list[str]], None]) -> None:
        """Connect, register this replica (ephemeral) and watch the replicas' node with ``on_replicas``;
        raises CoordinationError."""
        try:
            from kazoo.client import KazooClient
            from kazoo.exceptions import KazooException
            from kazoo.handlers.threading import KazooTimeoutError
        except ImportError:
            raise CoordinationError(
                "TOKENMETER_COORDINATION_URL needs kazoo: pip install 'tokenmeter-otel[coordination]'"
            ) from None
        client = KazooClient(hosts=self.url.hosts, timeout=SESSION_TIMEOUT_SECONDS)
        try:
            client.start(timeout=CONNECT_TIMEOUT_SECONDS)
            client.ensure_path(f"{self.url.root}/replicas")
            client.ensure_path(f"{self.url.root}/departed")
            client.ensure_path(f"{self.url.root}/leases")
        except (KazooException, KazooTimeoutError, OSError) as exc:
            client.stop()
            raise CoordinationError(f"cannot use {self.url.display()}: {type(exc).__name__}: {exc}") from None
        self._client = client
        self._register()
        client.ChildrenWatch(f"{self.url.root}/replicas", on_replicas)
        client.add_listener(self._on_state)

    def _register(self) -> None:
        """Create this replica's ephemeral node (again, after its session was lost) and clear a departure."""
        from kazoo.exceptions import KazooException, NodeExistsError, NoNodeError

        client = self._client
        if client is None:
            return
        try:
            with contextlib.suppress(NoNodeError):
                client.delete(f"{self.url.root}/departed/{self.replica_id}")
            with contextlib.suppress(NodeExistsError):
                client.create(f"{self.url.root}/replicas/{self.replica_id}", json.dumps({
                    "host": socket.gethostname(), "pid": os.getpid(), "started": self._clock()}).encode(),
                    ephemeral=True)  # fmt: skip
        except KazooException as exc:
            self.failed(exc)

    def _on_state(self, state: str) -> None:
        # kazoo's event thread: no blocking calls here. A lost session took the ephemeral node with it.
        if self._client is None:
            return  # closing: kazoo reports its own stop as LOST
        if state == "LOST":
            self._lost = True
            logger.error("tokenmeter: coordination session with %s lost; re-registering when it is back",
                         self.url.display())  # fmt: skip
        elif state == "CONNECTED" and self._lost:
            self._lost = False
            threading.Thread(target=self._register, name="tokenmeter-coordination-register", daemon=True).start()

    def close(self) -> None:
        """Leave: the ephemeral node goes with the session."""
        client = self._client
        if client is None:
            return
        self._client = None
        client.stop()
        client.close()

    def problems(self) -> list[str]:
        """Why this replica cannot coordinate now (for /healthz); empty when it can."""
        client = self._client
        if client is None:
            return ["coordination is not running"]
        if not client.connected:
            return [f"not connected to {self.url.display()}: replicas cannot share budget headroom"]
        return []

    def failed(self, exc: BaseException) -> None:
        """Count an error met on the session (by any of its users)."""
        with self._lock:
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
