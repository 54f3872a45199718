"""One enforcer replica: the policy, the latest usage snapshot and the reservation ledger.

``check`` decides and reserves under one lock, so concurrent checks on this replica see
each other's reservations: a budget is passed by at most one call's estimate per replica.
The snapshot is refreshed from the store by the caller (the sidecar does it every few
seconds); a refresh never blocks checks for longer than the swap.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from tokenmeter.enforcer.decision import CheckRequest, Decision, UsageSnapshot, decide, reservation_for
from tokenmeter.enforcer.ledger import ReservationLedger
from tokenmeter.enforcer.policy import Policy
from tokenmeter.enforcer.snapshot import read_snapshot

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client


@dataclass(frozen=True)
class CheckResult:
    decision: Decision
    reservation_id: str | None  # give it back with release() when the call is done


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Enforcer:
    def __init__(
        self,
        policy: Policy,
        ledger: ReservationLedger | None = None,
        now: Callable[[], datetime] = _utc_now,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._policy = policy
        self._clock = clock
        self._ledger = ledger or ReservationLedger(clock=clock)
        self._now = now
        self._lock = threading.Lock()
        self._snapshot = UsageSnapshot()
        self._snapshot_started_at = float("-inf")  # no snapshot yet: every reservation still counts

    @property
    def policy(self) -> Policy:
        return self._policy

    def set_policy(self, policy: Policy) -> None:
        with self._lock:
            self._policy = policy

    def update_snapshot(self, snapshot: UsageSnapshot, started_at: float) -> None:
        with self._lock:
            if started_at >= self._snapshot_started_at:  # an older, slower refresh never wins
                self._snapshot, self._snapshot_started_at = snapshot, started_at

    def refresh(self, client: Client) -> None:
        """Read usage from the store (outside the lock) and use it from now on."""
        started_at = self._clock()
        snapshot = read_snapshot(client, self._policy, self._now())
        self.update_snapshot(snapshot, started_at)

    def check(self, request: CheckRequest) -> CheckResult:
        with self._lock:
            now = self._now()
            held = self._ledger.totals(self._snapshot_started_at)
            decision = decide(self._policy, self._snapshot, held, request, now)
            reservation_id = self._ledger.reserve(reservation_for(self._policy, request, decision, now))
        return CheckResult(decision, reservation_id)

    def release(self, reservation_id: str) -> bool:
        return self._ledger.release(reservation_id)
