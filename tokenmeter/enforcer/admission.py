"""One enforcer replica: the policy, the latest usage snapshot and the reservation ledger.

``check`` decides and reserves under one lock, so concurrent checks on this replica see
each other's reservations: a budget is passed by at most the last admitted call's estimate
on this replica. (Replicas that share a store without coordination each admit the whole
budget: see docs/quotas.md.)
The snapshot is refreshed from the store by the caller (the sidecar does it every few
seconds); a refresh never blocks checks for longer than the swap.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

from tokenmeter.enforcer.decision import (
    BudgetUsage,
    CheckRequest,
    Decision,
    UsageSnapshot,
    budget_usages,
    decide_and_lease,
)
from tokenmeter.enforcer.ledger import ReservationLedger
from tokenmeter.enforcer.policy import Policy
from tokenmeter.enforcer.shared_headroom import SharedHeadroom, WithOthers
from tokenmeter.enforcer.snapshot import read_snapshot

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client


@dataclass(frozen=True)
class CheckResult:
    decision: Decision
    reservation_id: str | None  # give it back with release() when the call is done
    decided_at: datetime  # the (calendar) time the decision was made for
    lease_calls: int = 1  # > 1: the reservation holds room for this many calls like this one


_LIMITED: Final = frozenset({"downgrade", "degrade", "deny"})  # decided by an exceeded budget


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Enforcer:
    def __init__(
        self,
        policy: Policy,
        ledger: ReservationLedger | None = None,
        now: Callable[[], datetime] = _utc_now,
        clock: Callable[[], float] = time.monotonic,
        headroom: SharedHeadroom | None = None,
    ) -> None:
        """``headroom``: share budget headroom with other replicas (TOKENMETER_COORDINATION_URL)."""
        self._policy = policy
        self.headroom = headroom
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

    def check(
        self,
        request: CheckRequest,
        *,
        reserve: bool = True,
        check_id: str | None = None,
        lease_max_calls: int = 1,
        blocking: bool = True,
    ) -> CheckResult | None:
        """Decide and hold the call's estimate (``reserve``); with ``lease_max_calls`` > 1 an ``allow`` far
        from every threshold may hold room for up to that many calls like it (a lease).

        With replicas (``headroom``), a call is reserved only within this replica's leases; growing one
        is a network call, made with the lock let go, and the call is then decided again. With
        ``blocking=False`` such a check returns None instead (the caller retries it on a thread that may
        wait: an event loop must not).
        """
        rechecked: set[tuple[str, str]] = set()
        for attempt in range(8):
            with self._lock:
                now = self._now()
                local = self._ledger.totals(self._snapshot_started_at)
                held = local if self.headroom is None else self.headroom.held(local)
                decision, hold, calls = decide_and_lease(self._policy, self._snapshot, held, request, now,
                                                         max_calls=lease_max_calls if reserve else 1)  # fmt: skip
                if calls > 1:
                    hold = {key: usage.times(calls) for key, usage in hold.items()}
                limiting = (decision.budget, decision.subject or "")
                stale_refusal = (self.headroom is not None and decision.action in _LIMITED and attempt < 7
                                 and decision.budget is not None and limiting not in rechecked
                                 and self.headroom.worth_rechecking(limiting, claim=blocking))  # fmt: skip
                growths = (
                    []
                    if self.headroom is None or not reserve or not hold or stale_refusal
                    else (self.headroom.plan(self._policy, self._snapshot, local, hold, now))
                )
                if growths and attempt == 7:  # the leases kept changing under it: decide on this replica's numbers
                    assert self.headroom is not None
                    self.headroom.grant_unconfirmed(growths)
                    growths = []
                if not stale_refusal and not growths:
                    reservation_id = self._ledger.reserve(hold, check_id) if reserve else None
                    return CheckResult(decision, reservation_id, now, max(calls, 1))
                policy = self._policy
            if not blocking:
                return None
            assert self.headroom is not None
            if stale_refusal:  # refused on what the others held at the last read: read again, then decide again
                rechecked.add(limiting)
                self.headroom.recheck(policy, limiting, now)
            else:
                self.headroom.grow(growths)  # granted or not, decide again with what it found
        raise AssertionError("unreachable: the last attempt always decides")

    def give_back_headroom(self) -> None:
        """Give back spare room of this replica's leases (on the refresh thread; no-op without replicas)."""
        if self.headroom is None:
            return
        self.headroom.coordinator.tidy()
        # Scan every lease without the check lock (thousands of leases would keep checks waiting on it),
        # then lower the few that are due under it, deciding each again on the numbers of that moment.
        with self._lock:
            policy, snapshot, now = self._policy, self._snapshot, self._now()
            local = dict(self._ledger.totals(self._snapshot_started_at))
        due = self.headroom.due_leases(policy, snapshot, local, now)
        for lease_key in due:
            with self._lock:
                local = self._ledger.totals(self._snapshot_started_at)
                lowering = self.headroom.lowering(lease_key, self._policy, self._snapshot, local, self._now())
            if lowering is not None:
                self.headroom.lower(lowering)

    def budget_states(self) -> list[BudgetUsage]:
        """Used (store), reserved (ledger), limit and ratio per (budget, subject) in the current period."""
        with self._lock:  # copies only: thousands of subjects must not keep checks waiting on the lock
            policy, snapshot, now = self._policy, self._snapshot, self._now()
            local = dict(self._ledger.totals(self._snapshot_started_at))
            others = None if self.headroom is None else self.headroom.others_now()
        held = local if others is None else dict(WithOthers(local, others))
        return budget_usages(policy, snapshot, held, now)

    def reservations(self) -> int:
        return len(self._ledger)

    def release(self, reservation_id: str, unused_tokens: int = 0) -> bool:
        return self._ledger.release(reservation_id, unused_tokens)

    def release_check(self, check_id: str) -> bool:
        return self._ledger.release_check(check_id)
