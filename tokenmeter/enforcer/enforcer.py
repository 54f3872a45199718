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

from tokenmeter.enforcer.decision import (
    BudgetUsage,
    CheckRequest,
    Decision,
    UsageSnapshot,
    budget_usages,
    decide_and_hold,
)
from tokenmeter.enforcer.ledger import ReservationLedger
from tokenmeter.enforcer.policy import Policy
from tokenmeter.enforcer.snapshot import read_snapshot

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client


@dataclass(frozen=True)
class CheckResult:
    decision: Decision
    reservation_id: str | None  # give it back with release() when the call is done
    decided_at: datetime  # the (calendar) time the decision was made for


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
        self._ledger = ledger if ledger is not None else ReservationLedger(clock=clock)  # an empty ledger is falsy
        self._now = now
        self._lock = threading.Lock()
        self._snapshot = UsageSnapshot()
        self._snapshot_started_at = float("-inf")  # no snapshot yet: every reservation still counts

    @property
    def policy(self) -> Policy:
        return self._policy

    @property
    def snapshot(self) -> UsageSnapshot:
        return self._snapshot

    def now(self) -> datetime:
        return self._now()

    def snapshot_age(self) -> float:
        """Seconds since the query of the snapshot in use started (inf before the first)."""
        return self._clock() - self._snapshot_started_at

    def set_policy(self, policy: Policy, snapshot: UsageSnapshot | None = None, started_at: float = 0.0) -> None:
        """Use ``policy`` from now on, with a snapshot read for it when there is one.

        Without one the old snapshot stays: budgets kept by name keep their usage, new
        budgets count only reservations until the next refresh.
        """
        with self._lock:
            self._policy = policy
            if snapshot is not None:
                self._snapshot, self._snapshot_started_at = snapshot, started_at

    def update_snapshot(self, snapshot: UsageSnapshot, started_at: float, policy: Policy | None = None) -> bool:
        """Use ``snapshot`` unless a newer one or another policy came first; True when used."""
        with self._lock:
            if policy is not None and policy is not self._policy:
                return False  # read for a policy that has since been replaced
            if started_at < self._snapshot_started_at:  # an older, slower refresh never wins
                return False
            self._snapshot, self._snapshot_started_at = snapshot, started_at
            return True

    def read_snapshot(self, client: Client, policy: Policy | None = None) -> tuple[UsageSnapshot, float]:
        """Usage from the store for ``policy`` (default: the current one), and when the query started."""
        started_at = self._clock()
        return read_snapshot(client, policy or self._policy, self._now()), started_at

    def refresh(self, client: Client) -> UsageSnapshot:
        """Read usage from the store (outside the lock) and use it from now on."""
        policy = self._policy
        snapshot, started_at = self.read_snapshot(client, policy)
        self.update_snapshot(snapshot, started_at, policy)
        return snapshot

    def check(self, request: CheckRequest, *, reserve: bool = True) -> CheckResult:
        with self._lock:
            now = self._now()
            held = self._ledger.totals(self._snapshot_started_at)
            decision, hold = decide_and_hold(self._policy, self._snapshot, held, request, now)
            reservation_id = self._ledger.reserve(hold) if reserve else None
        return CheckResult(decision, reservation_id, now)

    def budget_states(self) -> list[BudgetUsage]:
        """Used (store), reserved (ledger), limit and ratio per (budget, subject) in the current period."""
        with self._lock:
            policy, snapshot, now = self._policy, self._snapshot, self._now()
            held = dict(self._ledger.totals(self._snapshot_started_at))
        return budget_usages(policy, snapshot, held, now)

    def reservations(self) -> int:
        return len(self._ledger)

    def release(self, reservation_id: str) -> bool:
        return self._ledger.release(reservation_id)
