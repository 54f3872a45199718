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
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, NamedTuple
from urllib.parse import urlsplit

from tokenmeter.enforcer.decision import Usage
from tokenmeter.enforcer.replica_presence import own_replica_id
from tokenmeter.errors import TokenmeterError

if TYPE_CHECKING:
    from kazoo.client import KazooClient

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS: Final = 10.0
SESSION_TIMEOUT_SECONDS: Final = 10.0  # a dead replica's session ends within this (the server may clamp it)
_CAS_ATTEMPTS: Final = 20
# Past this age a period's lease nodes are no budget's current period (a month is the longest),
# and a departure record is dropped (a lease node naming that replica still, untouched since, makes
# the next reader record the departure again: its lease counts settle_seconds more, once).
KEEP_SECONDS: Final = 32 * 86400.0
TIDY_EVERY_SECONDS: Final = 3600.0


class CoordinationError(TokenmeterError):
    """The coordination URL is unusable or the server cannot be reached; the message says which."""


class LeaseKey(NamedTuple):
    budget: str
    subject: str
    period_start: datetime


@dataclass(frozen=True)
class CoordinationUrl:
    hosts: str  # "h1:2181,h2:2181"
    root: str  # "/tokenmeter"

    @classmethod
    def parse(cls, url: str) -> CoordinationUrl:
        parts = urlsplit(url)
        if parts.scheme != "zk" or not parts.netloc:
            raise CoordinationError(
                f"TOKENMETER_COORDINATION_URL must look like zk://host:2181[,host2:2181]/path, got {url!r}"
            )
        root = parts.path.rstrip("/") or "/tokenmeter"
        return cls(parts.netloc, root)

    def display(self) -> str:
        return f"zk://{self.hosts}{self.root}"


def _usage_json(usage: Usage) -> dict[str, Any]:
    return {"tokens": usage.tokens, "cost": {currency: str(amount) for currency, amount in usage.cost.items()}}


def larger(first: Usage, second: Usage) -> Usage:
    """The larger of each amount."""
    costs = dict(first.cost)
    for currency, amount in second.cost.items():
        costs[currency] = max(costs.get(currency, Decimal(0)), amount)
    return Usage(max(first.tokens, second.tokens), costs)


def _usage_of(entry: Mapping[str, Any]) -> Usage:
    cost = {str(currency): Decimal(str(amount)) for currency, amount in dict(entry.get("cost") or {}).items()}
    return Usage(int(entry.get("tokens") or 0), cost)


class Coordinator:
    """One replica's view of the shared leases. Thread-safe; every ZooKeeper call may block for a few ms."""

    def __init__(self, url: str, settle_seconds: float, *, replica_id: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        self.url = CoordinationUrl.parse(url)
        self.replica_id = replica_id or own_replica_id()
        self._settle = settle_seconds
        self._clock = clock  # wall clock: departures are compared across machines (keep them NTP-synced)
        self._lock = threading.Lock()
        self._own: dict[LeaseKey, Usage] = {}
        self._live: set[str] = set()
        self._departed: dict[str, float] = {}  # replica -> when it departed (wall clock)
        self.errors = 0
        self.last_error: str | None = None
        self._client: KazooClient | None = None
        self._lost = False
        self._next_tidy = float("-inf")

    # --- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        """Connect, register this replica (ephemeral) and watch the others; raises CoordinationError."""
        try:
            from kazoo.client import KazooClient
            from kazoo.exceptions import KazooException
            from kazoo.handlers.threading import KazooTimeoutError
        except ImportError:
            raise CoordinationError(
                "TOKENMETER_COORDINATION_URL needs kazoo: pip install 'tokenmeter[coordination]'"
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
        client.ChildrenWatch(f"{self.url.root}/replicas", self._on_replicas)
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
            self._failed(exc)

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
        """Give back every lease and leave (the ephemeral node goes with the session)."""
        client = self._client
        if client is None:
            return
        for key in self.leased_keys():
            try:
                self.set_own(key, Usage())
            except Exception as exc:  # the leases then count until they settle, as for a crash
                self._failed(exc)
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

    # --- what the enforcer asks --------------------------------------------------

    def own(self, key: LeaseKey) -> Usage:
        """This replica's lease on ``key`` as it last wrote it."""
        with self._lock:
            return self._own.get(key, Usage())

    def others(self, key: LeaseKey) -> Usage:
        """What the other replicas hold for ``key`` (counting departed ones until they settle), read now."""
        total, _version = self._read(key)
        return total

    def grow(self, key: LeaseKey, admit: Callable[[Usage], Usage | None]) -> tuple[bool, Usage, Usage]:
        """Raise this replica's lease on ``key`` to what ``admit`` grants, atomically.

        ``admit(others)`` is called with what the other replicas hold, read afresh; it returns the lease this
        replica wants, or None when the budget is exceeded. A lease is never lowered here (another check
        of this replica may have raised it meanwhile). Returns (granted, others, the lease now held).
        """
        from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError

        client = self._require_client()
        path = self._path(key)
        for _attempt in range(_CAS_ATTEMPTS):
            document, version = self._document(client, path)
            others = self._others_in(document)
            leases = document.setdefault("leases", {})
            current = _usage_of(leases[self.replica_id]) if isinstance(leases.get(self.replica_id), dict) else Usage()
            wanted = admit(others)
            if wanted is None:
                return False, others, current
            lease = larger(wanted, current)
            leases[self.replica_id] = _usage_json(lease)
            self._forget_settled(leases)
            document.update(budget=key.budget, subject=key.subject, period_start=key.period_start.isoformat())
            payload = json.dumps(document, separators=(",", ":")).encode()
            try:
                if version < 0:
                    client.create(path, payload, makepath=True)
                else:
                    client.set(path, payload, version=version)
            except (BadVersionError, NodeExistsError, NoNodeError):
                continue  # another check or replica wrote first: read again
            with self._lock:
                self._own[key] = lease
            return True, others, lease
        raise CoordinationError(f"{path}: {_CAS_ATTEMPTS} writers came first; giving up this call")

    def set_own(self, key: LeaseKey, lease: Usage, expected: Usage | None = None) -> bool:
        """Lower (or drop, with an empty Usage) this replica's lease: never needs admission. With
        ``expected``, only if the lease is still that (a check may have grown it meanwhile). True when set."""
        from kazoo.exceptions import BadVersionError, NoNodeError

        client = self._require_client()
        path = self._path(key)
        for _attempt in range(_CAS_ATTEMPTS):
            document, version = self._document(client, path)
            leases = document.setdefault("leases", {})
            current = _usage_of(leases[self.replica_id]) if isinstance(leases.get(self.replica_id), dict) else Usage()
            if expected is not None and current != expected:
                return False
            if lease.is_zero():
                leases.pop(self.replica_id, None)
            else:
                leases[self.replica_id] = _usage_json(lease)
            self._forget_settled(leases)
            if version >= 0:
                try:
                    client.set(path, json.dumps(document, separators=(",", ":")).encode(), version=version)
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

    def tidy(self) -> int:
        """Remove the lease nodes of periods and the departure records older than ``KEEP_SECONDS`` (at most
        once per ``TIDY_EVERY_SECONDS``; any replica may do it). Returns how many nodes went."""
        from kazoo.exceptions import NoNodeError

        now = self._clock()
        if now < self._next_tidy or self._client is None:
            return 0
        self._next_tidy = now + TIDY_EVERY_SECONDS
        client, removed = self._client, 0
        try:
            for child in client.get_children(f"{self.url.root}/leases"):
                if child.isdigit() and int(child) < now - KEEP_SECONDS:
                    with contextlib.suppress(NoNodeError):
                        client.delete(f"{self.url.root}/leases/{child}", recursive=True)
                        removed += 1
            for replica in client.get_children(f"{self.url.root}/departed"):
                path = f"{self.url.root}/departed/{replica}"
                with contextlib.suppress(NoNodeError, ValueError, KeyError, TypeError):
                    if float(json.loads(client.get(path)[0])["at"]) < now - KEEP_SECONDS:
                        client.delete(path)
                        removed += 1
                        with self._lock:
                            self._departed.pop(replica, None)
        except Exception as exc:  # (kazoo's timeouts are no KazooException) a tidy-up must not fail the refresh
            self._failed(exc)
        return removed

    def leased_keys(self) -> list[LeaseKey]:
        with self._lock:
            return list(self._own)

    def own_leases(self) -> dict[LeaseKey, Usage]:
        """A copy of this replica's leases as it last wrote them."""
        with self._lock:
            return dict(self._own)

    def live_replicas(self) -> int:
        with self._lock:
            return max(1, len(self._live))

    # --- inside ------------------------------------------------------------------

    def _require_client(self) -> KazooClient:
        if self._client is None:
            raise CoordinationError("coordination is not started")
        return self._client

    def _path(self, key: LeaseKey) -> str:
        digest = hashlib.sha256(f"{key.budget}\0{key.subject}".encode()).hexdigest()[:32]
        return f"{self.url.root}/leases/{int(key.period_start.timestamp())}/{digest}"

    def _document(self, client: KazooClient, path: str) -> tuple[dict[str, Any], int]:
        from kazoo.exceptions import NoNodeError

        try:
            data, stat = client.get(path)
        except NoNodeError:
            return {}, -1
        try:
            document = json.loads(data or b"{}")
        except ValueError:
            logger.error("tokenmeter: %s does not hold a lease document; it is replaced", path)
            document = {}
        return (document if isinstance(document, dict) else {}), int(stat.version)

    def _read(self, key: LeaseKey) -> tuple[Usage, int]:
        document, version = self._document(self._require_client(), self._path(key))
        return self._others_in(document), version

    def _others_in(self, document: Mapping[str, Any]) -> Usage:
        total = Usage()
        for replica, entry in dict(document.get("leases") or {}).items():
            if replica != self.replica_id and self._counts(replica) and isinstance(entry, dict):
                total = total.plus(_usage_of(entry))
        return total

    def _counts(self, replica: str) -> bool:
        """A replica's leases count while it lives and for settle_seconds after it departed."""
        with self._lock:
            if replica in self._live:
                return True
            departed = self._departed.get(replica)
        if departed is None:
            departed = self._record_departure(replica)
        return self._clock() < departed + self._settle

    def _forget_settled(self, leases: dict[str, Any]) -> None:
        for replica in [r for r in leases if r != self.replica_id and not self._counts(r)]:
            del leases[replica]

    def _on_replicas(self, children: list[str]) -> None:
        with self._lock:
            gone = self._live - set(children)
            self._live = set(children)
        for replica in gone:
            self._record_departure(replica)

    def _record_departure(self, replica: str) -> float:
        """When ``replica`` departed: the first survivor to notice writes it down; the others read it."""
        from kazoo.exceptions import KazooException, NodeExistsError

        now = self._clock()
        path = f"{self.url.root}/departed/{replica}"
        client = self._client
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
                self._failed(exc)
        with self._lock:
            self._departed[replica] = departed
        return departed

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
