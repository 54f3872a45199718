"""This replica's leases in the lease nodes on the coordination server.

A lease is grown by compare-and-set: read the node and its version, let the caller decide with
what the other replicas hold, write with that version (a BadVersion means another replica wrote
first: read again). Lowering or dropping a lease never needs admission, but is also written by
compare-and-set, so no other replica's change is overwritten. Each write drops the leases of
departed replicas that have settled (:class:`~tokenmeter.enforcer.replicas.replica_departures.ReplicaDepartures`).
The node's path and JSON are :mod:`~tokenmeter.enforcer.replicas.lease_document`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from tokenmeter.enforcer.decision import Usage
from tokenmeter.enforcer.replicas.coordination_url import CoordinationError
from tokenmeter.enforcer.replicas.keeper_session import KeeperSession
from tokenmeter.enforcer.replicas.lease_document import (
    LeaseKey,
    decode_document,
    encode_document,
    forget_settled,
    held_by_others,
    larger,
    lease_in,
    lease_path,
    usage_json,
)
from tokenmeter.enforcer.replicas.replica_departures import ReplicaDepartures

if TYPE_CHECKING:
    from kazoo.client import KazooClient

logger = logging.getLogger(__name__)

_CAS_ATTEMPTS: Final = 20


class LeaseNodes:
    """Reads and compare-and-set writes of this replica's leases, and a copy of what it last wrote. Thread-safe."""

    def __init__(self, session: KeeperSession, departures: ReplicaDepartures) -> None:
        self._session = session
        self._departures = departures
        self._replica = session.replica_id
        self._lock = threading.Lock()
        self._own: dict[LeaseKey, Usage] = {}

    def own(self, key: LeaseKey) -> Usage:
        with self._lock:
            return self._own.get(key, Usage())

    def own_leases(self) -> dict[LeaseKey, Usage]:
        with self._lock:
            return dict(self._own)

    def others(self, key: LeaseKey) -> Usage:
        """What the other replicas hold for ``key`` (counting departed ones until they settle), read now."""
        document, _version = self._document(self._session.require_client(), lease_path(self._session.url.root, key))
        return held_by_others(document, self._replica, self._departures.counts)

    def grow(self, key: LeaseKey, admit: Callable[[Usage], Usage | None]) -> tuple[bool, Usage, Usage]:
        """Raise this replica's lease on ``key`` to what ``admit(others)`` grants, never lowering it; see
        :meth:`~tokenmeter.enforcer.replicas.coordination.Coordinator.grow`."""
        from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError

        client = self._session.require_client()
        path = lease_path(self._session.url.root, key)
        for _attempt in range(_CAS_ATTEMPTS):
            document, version = self._document(client, path)
            others = held_by_others(document, self._replica, self._departures.counts)
            leases = document.setdefault("leases", {})
            current = lease_in(leases, self._replica)
            wanted = admit(others)
            if wanted is None:
                return False, others, current
            lease = larger(wanted, current)
            leases[self._replica] = usage_json(lease)
            forget_settled(leases, self._replica, self._departures.counts)
            document.update(budget=key.budget, subject=key.subject, period_start=key.period_start.isoformat())
            try:
                if version < 0:
                    client.create(path, encode_document(document), makepath=True)
                else:
                    client.set(path, encode_document(document), version=version)
            except (BadVersionError, NodeExistsError, NoNodeError):
                continue  # another check or replica wrote first: read again
            with self._lock:
                self._own[key] = lease
            return True, others, lease
        raise CoordinationError(f"{path}: {_CAS_ATTEMPTS} writers came first; giving up this call")

    def set_own(self, key: LeaseKey, lease: Usage, expected: Usage | None = None) -> bool:
        """Lower or drop (an empty Usage) this replica's lease, only if it is still ``expected`` when given;
        see :meth:`~tokenmeter.enforcer.replicas.coordination.Coordinator.set_own`."""
        from kazoo.exceptions import BadVersionError, NoNodeError

        client = self._session.require_client()
        path = lease_path(self._session.url.root, key)
        for _attempt in range(_CAS_ATTEMPTS):
            document, version = self._document(client, path)
            leases = document.setdefault("leases", {})
            if expected is not None and lease_in(leases, self._replica) != expected:
                return False
            if lease.is_zero():
                leases.pop(self._replica, None)
            else:
                leases[self._replica] = usage_json(lease)
            forget_settled(leases, self._replica, self._departures.counts)
            if version >= 0:
                try:
                    client.set(path, encode_document(document), version=version)
                except BadVersionError:
                    continue
                except NoNodeError:
                    pass
            with self._lock:
                if lease.is_zero():
                    self._own.pop(key, None)
                else:
                    self._own[key] = lease
            return True
        return False

    def _document(self, client: KazooClient, path: str) -> tuple[dict[str, Any], int]:
        """The node's document and version (-1: no node yet)."""
        from kazoo.exceptions import NoNodeError

        try:
            data, stat = client.get(path)
        except NoNodeError:
            return {}, -1
        try:
            document = decode_document(data)
        except ValueError:
            logger.error("tokenmeter: %s does not hold a lease document; it is replaced", path)
            document = {}
        return document, int(stat.version)
