"""Budget headroom shared by enforcer replicas through the ZooKeeper protocol (ClickHouse Keeper).

Each replica admits calls against its own reservation ledger. Alone, it would admit the
whole remaining budget before any usage reaches the store; two replicas admitted 200 %. So
replicas *lease* room per budget, subject and period from one versioned node each:

    <root>/leases/<period start>/<budget, subject hash>
        {"budget": ..., "subject": ..., "leases": {"<replica>": {"tokens": n, "cost": {"CNY": "1.5"}}}}

A replica decides a call on its own while the call fits in its lease (microseconds; the room
is its alone). Otherwise it reads the node afresh and, if the budget is not exceeded with
what the other replicas hold, grows its lease by compare-and-set (a BadVersion means another
replica wrote first: read again). So a budget is passed by at most one call's estimate per
replica. Leases carry spare room (a share of what is left, less as the budget fills up, so
the last calls are decided one by one) and are given back at each refresh.

A replica is live while its ephemeral node ``<root>/replicas/<id>`` exists. When it goes (its
session expired: a crash, SIGKILL, a network split), the first survivor to see it records
``<root>/departed/<id>`` with the time; the dead replica's leases keep counting for
``settle_seconds`` after that (its calls' usage is then in the store), then stop counting
and are removed. Lease nodes of past periods and old departure records are removed after
``KEEP_SECONDS`` (:meth:`Coordinator.tidy`, from the refresh). Nothing here is in the store;
ClickHouse Keeper, which every replicated ClickHouse cluster already runs, or ZooKeeper
serves it.

:class:`Coordinator` is what the enforcer holds; the parts are the session and this replica's
registration (:mod:`~tokenmeter.enforcer.replicas.keeper_session`), whose leases count
(:mod:`~tokenmeter.enforcer.replicas.replica_departures`), the lease nodes
(:mod:`~tokenmeter.enforcer.replicas.lease_nodes`, their JSON in
:mod:`~tokenmeter.enforcer.replicas.lease_document`) and the tidy-up
(:mod:`~tokenmeter.enforcer.replicas.keeper_tidy`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tokenmeter.enforcer.decision import Usage
from tokenmeter.enforcer.replicas.coordination_url import CoordinationError, CoordinationUrl
from tokenmeter.enforcer.replicas.keeper_session import CONNECT_TIMEOUT_SECONDS, SESSION_TIMEOUT_SECONDS, KeeperSession
from tokenmeter.enforcer.replicas.keeper_tidy import KEEP_SECONDS, TIDY_EVERY_SECONDS, KeeperTidy
from tokenmeter.enforcer.replicas.lease_document import LeaseKey, larger
from tokenmeter.enforcer.replicas.lease_nodes import LeaseNodes
from tokenmeter.enforcer.replicas.replica_departures import ReplicaDepartures
from tokenmeter.enforcer.replicas.replica_presence import own_replica_id

# The enforcer, serve, the command line and the tests import these from here.
__all__ = [
    "CONNECT_TIMEOUT_SECONDS",
    "KEEP_SECONDS",
    "SESSION_TIMEOUT_SECONDS",
    "TIDY_EVERY_SECONDS",
    "CoordinationError",
    "CoordinationUrl",
    "Coordinator",
    "LeaseKey",
    "larger",
]


class Coordinator:
    """One replica's view of the shared leases. Thread-safe; every ZooKeeper call may block for a few ms."""

    def __init__(self, url: str, settle_seconds: float, *, replica_id: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        self.url = CoordinationUrl.parse(url)
        self.replica_id = replica_id or own_replica_id()
        # wall clock: departures are compared across machines (keep them NTP-synced)
        self._session = KeeperSession(self.url, self.replica_id, clock)
        self._departures = ReplicaDepartures(self._session, settle_seconds, clock)
        self._leases = LeaseNodes(self._session, self._departures)
        self._tidy = KeeperTidy(self._session, self._departures, clock)

    @property
    def errors(self) -> int:
        return self._session.errors

    @property
    def last_error(self) -> str | None:
        return self._session.last_error

    # --- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        """Connect, register this replica (ephemeral) and watch the others; raises CoordinationError."""
        self._session.start(self._departures.on_replicas)

    def close(self) -> None:
        """Give back every lease and leave (the ephemeral node goes with the session)."""
        if self._session.client is None:
            return
        for key in self.leased_keys():
            try:
                self.set_own(key, Usage())
            except Exception as exc:  # the leases then count until they settle, as for a crash
                self._session.failed(exc)
        self._session.close()

    def problems(self) -> list[str]:
        """Why this replica cannot coordinate now (for /healthz); empty when it can."""
        return self._session.problems()

    # --- what the enforcer asks --------------------------------------------------

    def own(self, key: LeaseKey) -> Usage:
        """This replica's lease on ``key`` as it last wrote it."""
        return self._leases.own(key)

    def others(self, key: LeaseKey) -> Usage:
        """What the other replicas hold for ``key`` (counting departed ones until they settle), read now."""
        return self._leases.others(key)

    def grow(self, key: LeaseKey, admit: Callable[[Usage], Usage | None]) -> tuple[bool, Usage, Usage]:
        """Raise this replica's lease on ``key`` to what ``admit`` grants, atomically.

        ``admit(others)`` is called with what the other replicas hold, read afresh; it returns the lease this
        replica wants, or None when the budget is exceeded. A lease is never lowered here (another check
        of this replica may have raised it meanwhile). Returns (granted, others, the lease now held).
        """
        return self._leases.grow(key, admit)

    def set_own(self, key: LeaseKey, lease: Usage, expected: Usage | None = None) -> bool:
        """Lower (or drop, with an empty Usage) this replica's lease: never needs admission. With
        ``expected``, only if the lease is still that (a check may have grown it meanwhile). True when set."""
        return self._leases.set_own(key, lease, expected)

    def tidy(self) -> int:
        """Remove the lease nodes of periods and the departure records older than ``KEEP_SECONDS`` (at most
        once per ``TIDY_EVERY_SECONDS``; any replica may do it). Returns how many nodes went."""
        return self._tidy.tidy()

    def leased_keys(self) -> list[LeaseKey]:
        return list(self._leases.own_leases())

    def own_leases(self) -> dict[LeaseKey, Usage]:
        """A copy of this replica's leases as it last wrote them."""
        return self._leases.own_leases()

    def live_replicas(self) -> int:
        return self._departures.live_replicas()
