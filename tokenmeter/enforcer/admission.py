"""One enforcer replica admitting calls: each check decided, and its estimate reserved, under one lock.

``check`` decides and reserves under the lock of the usage in force
(:class:`~tokenmeter.enforcer.usage_in_force.UsageInForce`: the policy, the latest usage snapshot
and the reservation ledger), so concurrent checks on this replica see each other's reservations:
a budget is passed by at most the last admitted call's estimate on this replica. (Replicas that
share a store without coordination each admit the whole budget: see docs/quotas.md.)
The snapshot is refreshed from the store by the caller (the sidecar does it every few
seconds); a refresh never blocks checks for longer than the swap.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

from tokenmeter.enforcer.decision import (
    BudgetUsage,
    CheckRequest,
    Decision,
    Usage,
    UsageKey,
    UsageSnapshot,
    budget_usages,
    decide_and_lease,
    used_shares,
)
from tokenmeter.enforcer.ledger import ReservationLedger
from tokenmeter.enforcer.policy import Policy
from tokenmeter.enforcer.replicas.shared_headroom import Growth, SharedHeadroom, WithOthers
from tokenmeter.enforcer.usage_in_force import UsageInForce, UsageView
from tokenmeter.quota_wire import CheckBody

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client


@dataclass(frozen=True)
class CheckResult:
    decision: Decision
    reservation_id: str | None  # give it back with release() when the call is done
    decided_at: datetime  # the (calendar) time the decision was made for
    lease_calls: int = 1  # > 1: the reservation holds room for this many calls like this one


_LIMITED: Final = frozenset({"downgrade", "degrade", "deny"})  # decided by an exceeded budget
_ATTEMPTS: Final = 8  # a check decided this often with the leases changing under it decides on this replica's numbers


@dataclass(frozen=True)
class _Wait:
    """What a check must do on the coordination server, with the lock let go, before it is decided again."""

    recheck: UsageKey | None  # refused on what the others held at the last read: read that again
    growths: list[Growth]  # otherwise: the leases to grow
    policy: Policy
    now: datetime

    def run(self, headroom: SharedHeadroom, rechecked: set[UsageKey]) -> None:
        """Do it (a network call); ``rechecked``: the refusals read again for this check."""
        if self.recheck is not None:  # refused on what the others held at the last read: read again
            rechecked.add(self.recheck)
            headroom.recheck(self.policy, self.recheck, self.now)
        else:
            headroom.grow(self.growths)  # granted or not, the check is decided again with what it found


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
        self.headroom = headroom
        self._ledger = ledger if ledger is not None else ReservationLedger(clock=clock)  # an empty ledger is falsy
        self.usage = UsageInForce(policy, self._ledger, now, clock)
        self._lock = self.usage.lock

    @property
    def policy(self) -> Policy:
        return self.usage.policy

    @property
    def snapshot(self) -> UsageSnapshot:
        return self.usage.snapshot

    def now(self) -> datetime:
        return self.usage.now()

    def snapshot_age(self) -> float:
        """Seconds since the query of the snapshot in use started (inf before the first)."""
        return self.usage.snapshot_age()

    def set_policy(self, policy: Policy, snapshot: UsageSnapshot | None = None, started_at: float = 0.0) -> None:
        """Use ``policy`` from now on, with a snapshot read for it when there is one (see ``UsageInForce``)."""
        self.usage.set_policy(policy, snapshot, started_at)

    def update_snapshot(self, snapshot: UsageSnapshot, started_at: float, policy: Policy | None = None) -> bool:
        """Use ``snapshot`` unless a newer one or another policy came first; True when used."""
        return self.usage.update_snapshot(snapshot, started_at, policy)

    def read_snapshot(self, client: Client, policy: Policy | None = None) -> tuple[UsageSnapshot, float]:
        """Usage from the store for ``policy`` (default: the current one), and when the query started."""
        return self.usage.read_snapshot(client, policy)

    def charge_wallets(self, client: Client) -> int:
        """Record what the policy's wallets are owed in the ledger (refresh thread); how many entries."""
        return self.usage.wallets.charge(client, self.policy, self.now())

    def refresh(self, client: Client) -> UsageSnapshot:
        """Read usage from the store (outside the lock) and use it from now on."""
        return self.usage.refresh(client)

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
        rechecked: set[UsageKey] = set()
        for attempt in range(_ATTEMPTS):
            with self._lock:
                state = self.usage.view()
                held = state.local if self.headroom is None else self.headroom.held(state.local)
                decision, hold, calls = decide_and_lease(state.policy, state.snapshot, held, request, state.now,
                                                         max_calls=lease_max_calls if reserve else 1)  # fmt: skip
                if calls > 1:
                    hold = {key: usage.times(calls) for key, usage in hold.items()}
                wait = None if self.headroom is None else _replica_wait(
                    self.headroom, state, decision, hold, reserve=reserve, claim=blocking,
                    last=attempt == _ATTEMPTS - 1, rechecked=rechecked)  # fmt: skip
                if wait is None:
                    reservation_id = self._ledger.reserve(hold, check_id) if reserve else None
                    return CheckResult(decision, reservation_id, state.now, max(calls, 1))
            if not blocking:
                return None
            assert self.headroom is not None
            wait.run(self.headroom, rechecked)
        raise AssertionError("unreachable: the last attempt always decides")

    def give_back_headroom(self) -> None:
        """Give back spare room of this replica's leases (on the refresh thread; no-op without replicas)."""
        if self.headroom is None:
            return
        self.headroom.coordinator.tidy()
        # Scan every lease without the check lock (thousands of leases would keep checks waiting on it),
        # then lower the few that are due under it, deciding each again on the numbers of that moment.
        with self._lock:
            state = self.usage.view(copy=True)
        due = self.headroom.due_leases(state.policy, state.snapshot, state.local, state.now)
        for lease_key in due:
            with self._lock:
                state = self.usage.view()
                lowering = self.headroom.lowering(lease_key, state.policy, state.snapshot, state.local, state.now)
            if lowering is not None:
                self.headroom.lower(lowering)

    def shares_used(self, body: CheckBody) -> dict[str, float]:
        """Each budget that applies to a call like ``body`` -> its used share now (with what is reserved)."""
        request = CheckRequest(body.user, body.department, body.app, body.model, body.input_tokens, 0)
        with self._lock:
            state = self.usage.view()
            held = state.local if self.headroom is None else self.headroom.held(state.local)
            return used_shares(state.policy, state.snapshot, held, request, state.now)

    def budget_states(self) -> list[BudgetUsage]:
        """Used (store), reserved (ledger), limit and ratio per (budget, subject) in the current period."""
        with self._lock:  # copies only: thousands of subjects must not keep checks waiting on the lock
            state = self.usage.view(copy=True)
            others = None if self.headroom is None else self.headroom.others_now()
        held = state.local if others is None else dict(WithOthers(state.local, others))
        return budget_usages(state.policy, state.snapshot, held, state.now)

    def reservations(self) -> int:
        return len(self._ledger)

    def release(self, reservation_id: str, unused_tokens: int = 0) -> bool:
        return self._ledger.release(reservation_id, unused_tokens)

    def release_check(self, check_id: str) -> bool:
        return self._ledger.release_check(check_id)


def _replica_wait(headroom: SharedHeadroom, state: UsageView, decision: Decision, hold: Mapping[UsageKey, Usage], *,
                  reserve: bool, claim: bool, last: bool, rechecked: set[UsageKey]) -> _Wait | None:  # fmt: skip
    """None when the call is decided on this replica's leases now; else what must be done first.

    A refusal made with what the other replicas held at the last read is read again before it stands
    (``claim``: this check will do the reading); a call its leases cannot hold grows them. On the
    ``last`` attempt the leases kept changing under it: it is decided on this replica's numbers.
    """
    if decision.action in _LIMITED and not last and decision.budget is not None:
        limiting = (decision.budget, decision.subject or "")
        if limiting not in rechecked and headroom.worth_rechecking(limiting, claim=claim):
            return _Wait(limiting, [], state.policy, state.now)
    growths = headroom.plan(state.policy, state.snapshot, state.local, hold, state.now) if reserve and hold else []
    if not growths:
        return None
    if last:
        headroom.grant_unconfirmed(growths)
        return None
    return _Wait(None, growths, state.policy, state.now)
