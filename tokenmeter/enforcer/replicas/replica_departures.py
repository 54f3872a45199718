"""Whose leases count: the live replicas, and the departed ones until they settle.

A replica is live while its ephemeral node ``<root>/replicas/<id>`` exists (the children of
``<root>/replicas`` are watched). When it goes, the first survivor to see it records
``<root>/departed/<id>`` with the time; every replica then reads that time, so they agree on when
the dead replica's leases stop counting: ``settle_seconds`` after it (its calls' usage is in the
store by then). Departure times are wall-clock times compared across machines (keep them
NTP-synced).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

from tokenmeter.enforcer.replicas.keeper_session import KeeperSession


class ReplicaDepartures:
    """The live replicas and when the others departed, as this replica saw and read them. Thread-safe."""

    def __init__(self, session: KeeperSession, settle_seconds: float, clock: Callable[[], float]) -> None:
        self._session = session
        self._settle = settle_seconds
        self._clock = clock  # wall clock: departures are compared across machines
        self._lock = threading.Lock()
        self._live: set[str] = set()
        self._departed: dict[str, float] = {}  # replica -> when it departed (wall clock)

    def counts(self, replica: str) -> bool:
        """A replica's leases count while it lives and for settle_seconds after it departed."""
        with self._lock:
            if replica in self._live:
                return True
            departed = self._departed.get(replica)
        if departed is None:
            departed = self.record(replica)
        return self._clock() < departed + self._settle

    def live_replicas(self) -> int:
        with self._lock:
            return max(1, len(self._live))

    def on_replicas(self, children: list[str]) -> None:
        """The watch on ``<root>/replicas``: the replicas gone since the last call departed now."""
        with self._lock:
            gone = self._live - set(children)
            self._live = set(children)
        for replica in gone:
            self.record(replica)

    def record(self, replica: str) -> float:
        """When ``replica`` departed: the first survivor to notice writes it down; the others read it."""
        from kazoo.exceptions import KazooException, NodeExistsError

        now = self._clock()
        path = f"{self._session.url.root}/departed/{replica}"
        client = self._session.client
        departed = now
        if client is not None:
            try:
                client.create(path, json.dumps({"at": now}).encode())
            except NodeExistsError:
                try:
                    departed = float(json.loads(client.get(path)[0])["at"])
                except (KazooException, ValueError, KeyError, TypeError):
                    departed = now
            except KazooException as exc:
                self._session.failed(exc)
        with self._lock:
            self._departed[replica] = departed
        return departed

    def forget(self, replica: str) -> None:
        """Its departure record was removed (it is old): a lease naming it still records it again."""
        with self._lock:
            self._departed.pop(replica, None)
