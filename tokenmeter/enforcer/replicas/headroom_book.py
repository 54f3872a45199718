"""What one replica knows of its shared headroom between calls to the coordination server.

Per lease: what admissions may use of it (``granted``, never more than the server holds for
this replica: a grow writes first, then raises it; giving back lowers it first, then writes),
when a check last used it, and the lock that lets one grow of it run at a time. Per budget and
subject: what the other replicas held at the last read, and when that read was.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from tokenmeter.enforcer.decision import Usage, UsageKey
from tokenmeter.enforcer.replicas.lease_document import LeaseKey, larger
from tokenmeter.enforcer.replicas.spare_room import ZERO, covers


class HeadroomBook:
    """Thread-safe; every method holds the book's lock for a few dictionary operations only."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._granted: dict[LeaseKey, Usage] = {}
        self._last_used: dict[LeaseKey, float] = {}
        self._grow_locks: dict[LeaseKey, threading.Lock] = {}
        self._others: dict[UsageKey, Usage] = {}  # last read, per (budget, subject) of the current periods
        self._others_read_at: dict[UsageKey, float] = {}

    # --- leases ------------------------------------------------------------------

    def use(self, lease_key: LeaseKey, moment: float) -> Usage:
        """A check uses the lease now: what it may admit with."""
        with self._lock:
            self._last_used[lease_key] = moment
            return self._granted.get(lease_key, ZERO)

    def covers(self, lease_key: LeaseKey, need: Usage) -> bool:
        with self._lock:
            return covers(self._granted.get(lease_key, ZERO), need)

    def raise_granted(self, lease_key: LeaseKey, lease: Usage) -> None:
        with self._lock:
            self._granted[lease_key] = larger(self._granted.get(lease_key, ZERO), lease)

    def grow_lock(self, lease_key: LeaseKey) -> threading.Lock:
        with self._lock:
            lock = self._grow_locks.get(lease_key)
            if lock is None:
                lock = self._grow_locks[lease_key] = threading.Lock()
            return lock

    def lower(self, lease_key: LeaseKey, held: Usage, *, current: bool) -> None:
        """Lower what admissions may use to ``held``; a lease of a past period is forgotten but for that."""
        with self._lock:
            self._granted[lease_key] = held
            if not current:
                key = (lease_key.budget, lease_key.subject)
                self._last_used.pop(lease_key, None)
                self._grow_locks.pop(lease_key, None)
                self._others.pop(key, None)
                self._others_read_at.pop(key, None)

    def last_use(self, lease_key: LeaseKey) -> tuple[float, Usage]:
        """When a check last used the lease, and what the others held on its budget and subject at the last read."""
        with self._lock:
            others = self._others.get((lease_key.budget, lease_key.subject), ZERO)
            return self._last_used.get(lease_key, float("-inf")), others

    def last_uses(self) -> tuple[dict[LeaseKey, float], dict[UsageKey, Usage]]:
        """Copies of when each lease was last used and of what the others held (for a scan without the lock)."""
        with self._lock:
            return dict(self._last_used), dict(self._others)

    # --- what the others hold ----------------------------------------------------

    @property
    def others(self) -> Mapping[UsageKey, Usage]:
        """The book's own mapping, read by a check without a copy (it holds the check lock, not the book's)."""
        return self._others

    def others_of(self, key: UsageKey) -> Usage:
        with self._lock:
            return self._others.get(key, ZERO)

    def others_copy(self) -> dict[UsageKey, Usage]:
        with self._lock:
            return dict(self._others)

    def note_others(self, key: UsageKey, others: Usage, moment: float) -> bool:
        """What the others hold on ``key``, read at ``moment``; True when it changed since the last read."""
        with self._lock:
            changed = others != self._others.get(key, ZERO)
            self._others[key] = others
            self._others_read_at[key] = moment
            return changed

    def claim_read(self, key: UsageKey, moment: float, *, after: float, claim: bool) -> bool:
        """Whether a fresh read could change what the others hold on ``key``: they held something at the last
        read, ``after`` seconds ago or more. ``claim``: the caller reads now (marked as read at ``moment``)."""
        with self._lock:
            if self._others.get(key, ZERO).is_zero():
                return False
            if moment - self._others_read_at.get(key, float("-inf")) < after:
                return False
            if claim:
                self._others_read_at[key] = moment
            return True
