"""The decision rule across replicas: what the other replicas hold counts as reserved, and a replica
admits a call only within the leases it holds (:mod:`~tokenmeter.enforcer.coordination`).

For each check the replica decides with ``used (store) + its own reservations + what the others
hold`` (as last read: when this replica last grew that lease, or read it again before refusing a
call, at most every ``RECHECK_AFTER_SECONDS``; nothing is polled). When the call fits in its
leases on every budget it touches, it is reserved at once: the room is this replica's. Otherwise
the check lock is let go, each lease it does not fit is grown by compare-and-set after a fresh
read (unless the budget is exceeded with the fresh numbers), and the check is decided again. A
replica's last admission on a budget may pass it by that call's estimate, as on one replica: at
most one estimate per replica.

Two figures per lease keep that safe without holding the check lock during network calls:
``granted`` (what admissions may use) never exceeds what the coordination server holds for this
replica. A grow writes first, then raises ``granted``; giving back lowers ``granted`` first
(under the check lock), then writes.

Spare room: a grown lease takes, besides the call, room for more calls like it (what is left
divided by twice the live replicas, at most ``spare_max_calls`` calls), so a replica seldom asks
while the budget is far from its limit and the last calls are decided one by one. The spare goes
back when the budget has been idle on this replica for ``idle_seconds``, when the free room left
to the others is smaller than it, or when the period ends.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Final

from tokenmeter.enforcer.coordination import Coordinator, LeaseKey, larger
from tokenmeter.enforcer.decision import Usage, UsageKey, UsageSnapshot, period_bounds, ratio_of
from tokenmeter.enforcer.policy import Budget, Limit, Policy

logger = logging.getLogger(__name__)

DEFAULT_SPARE_MAX_CALLS: Final = 1024
DEFAULT_IDLE_SECONDS: Final = 30.0
# A refusal made with what the others held is read again before it stands, at most once in this
# long per budget and subject: a script hammering a spent budget must not cost a round trip per check.
RECHECK_AFTER_SECONDS: Final = 0.5
_ZERO: Final = Usage()
Admission = Callable[[Usage], Usage | None]


class WithOthers(Mapping[UsageKey, Usage]):
    """This replica's reservations plus what the other replicas hold, per (budget, subject)."""

    def __init__(self, local: Mapping[UsageKey, Usage], others: Mapping[UsageKey, Usage]) -> None:
        self._local = local
        self._others = others

    def __getitem__(self, key: UsageKey) -> Usage:
        local, others = self._local.get(key), self._others.get(key)
        if local is None and others is None:
            raise KeyError(key)
        return (local or _ZERO).plus(others or _ZERO)

    def __iter__(self) -> Iterator[UsageKey]:
        return iter({*self._local, *self._others})

    def __len__(self) -> int:
        return len({*self._local, *self._others})


def covers(lease: Usage, need: Usage) -> bool:
    return need.tokens <= lease.tokens and all(amount <= lease.cost.get(c, Decimal(0)) for c, amount in
                                               need.cost.items())  # fmt: skip


@dataclass(frozen=True)
class Growth:
    """A lease a check needs grown before it can be admitted."""

    key: UsageKey
    lease_key: LeaseKey
    need: Usage  # what the lease must cover: this replica's reservations on it, and the call
    admit: Admission


@dataclass(frozen=True)
class Lowering:
    lease_key: LeaseKey
    target: Usage
    written: Usage  # what the server holds for this replica, expected unchanged when lowering


class SharedHeadroom:
    def __init__(
        self,
        coordinator: Coordinator,
        spare_max_calls: int = DEFAULT_SPARE_MAX_CALLS,
        idle_seconds: float = DEFAULT_IDLE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.coordinator = coordinator
        self._spare_max_calls = spare_max_calls
        self._idle_seconds = idle_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._granted: dict[LeaseKey, Usage] = {}
        self._last_used: dict[LeaseKey, float] = {}
        self._grow_locks: dict[LeaseKey, threading.Lock] = {}
        self._others: dict[UsageKey, Usage] = {}  # last read, per (budget, subject) of the current periods
        self._others_read_at: dict[UsageKey, float] = {}
        self.failures = 0
        self.last_failure: str | None = None
        self.grows = 0  # leases grown on the server (writes)
        self.lowerings = 0  # spare given back (writes)

    def held(self, local: Mapping[UsageKey, Usage]) -> Mapping[UsageKey, Usage]:
        return WithOthers(local, self._others)

    def others_now(self) -> dict[UsageKey, Usage]:
        """A copy of what the others held at the last reads."""
        with self._lock:
            return dict(self._others)

    # --- a check (the caller holds the check lock, except in grow and recheck) ----

    def plan(self, policy: Policy, snapshot: UsageSnapshot, local: Mapping[UsageKey, Usage],
             hold: Mapping[UsageKey, Usage], now: datetime) -> list[Growth]:  # fmt: skip
        """The leases to grow before ``hold`` can be reserved on top of ``local``; empty: reserve now."""
        growths = []
        moment = self._clock()
        for key, amount in hold.items():
            budget = _budget(policy, key[0])
            if budget is None:
                continue
            lease_key = LeaseKey(key[0], key[1], period_bounds(budget.period, now, policy.zone)[0])
            before = local.get(key, _ZERO)
            with self._lock:
                granted = self._granted.get(lease_key, _ZERO)
                self._last_used[lease_key] = moment
            if not covers(granted, before.plus(amount)):
                limit = budget.overrides.get(key[1], budget.limit) if budget.overrides else budget.limit
                admit = self._admission(limit, _used(snapshot, key, lease_key), before, amount)
                growths.append(Growth(key, lease_key, before.plus(amount), admit))
        return growths

    def grow(self, growths: list[Growth]) -> bool:
        """Grow the leases (network calls: without the check lock). False when a budget turned out to be
        exceeded with the others' fresh numbers: decide again (they are in :meth:`held` now).

        When the coordination server cannot be used the leases are granted on what this replica knows
        (counted, logged, in /healthz): a Keeper outage must not refuse every call.
        """
        for growth in growths:
            with self._growing(growth.lease_key):  # one grow per lease at a time: the others wait, then see it
                if not self._grow(growth):
                    return False
        return True

    def _growing(self, lease_key: LeaseKey) -> threading.Lock:
        with self._lock:
            lock = self._grow_locks.get(lease_key)
            if lock is None:
                lock = self._grow_locks[lease_key] = threading.Lock()
            return lock

    def _grow(self, growth: Growth) -> bool:
        with self._lock:
            if covers(self._granted.get(growth.lease_key, _ZERO), growth.need):
                return True  # another check grew it enough while this one waited
        try:
            granted, others, lease = self.coordinator.grow(growth.lease_key, growth.admit)
        except Exception as exc:
            self._failed(exc)
            wanted = growth.admit(self._others.get(growth.key, _ZERO))
            if wanted is None:
                return False
            granted, lease = True, wanted
        else:
            self._note_others(growth.key, others)
            self.grows += int(granted)
        if not granted:
            return False
        with self._lock:
            self._granted[growth.lease_key] = larger(self._granted.get(growth.lease_key, _ZERO), lease)
        return True

    def grant_unconfirmed(self, growths: list[Growth]) -> None:
        """After a check could not be settled with the server (it kept changing): admit on this replica's
        numbers, counted like a coordination failure."""
        self._failed(RuntimeError("the leases kept changing under a check"))
        with self._lock:
            for growth in growths:
                self._granted[growth.lease_key] = larger(self._granted.get(growth.lease_key, _ZERO), growth.need)

    def worth_rechecking(self, key: UsageKey, *, claim: bool) -> bool:
        """Whether a refusal on ``key`` should wait for a fresh read of what the others hold: only when they
        held something at the last read (else a read cannot lower the total) and that read is older than
        ``RECHECK_AFTER_SECONDS``. ``claim``: the caller will read now, so concurrent refusals decide
        with the last numbers."""
        moment = self._clock()
        with self._lock:
            if self._others.get(key, _ZERO).is_zero():
                return False
            if moment - self._others_read_at.get(key, float("-inf")) < RECHECK_AFTER_SECONDS:
                return False
            if claim:
                self._others_read_at[key] = moment
            return True

    def recheck(self, policy: Policy, key: UsageKey, now: datetime) -> bool:
        """Read what the others hold on ``key`` afresh (without the check lock); True when it changed.

        A refusal made with what the others held at the last read may be stale (they gave spare room
        back since): the enforcer reads again before it refuses.
        """
        budget = _budget(policy, key[0])
        if budget is None:
            return False
        lease_key = LeaseKey(key[0], key[1], period_bounds(budget.period, now, policy.zone)[0])
        try:
            fresh = self.coordinator.others(lease_key)
        except Exception as exc:
            self._failed(exc)
            return False
        changed = fresh != self._others.get(key, _ZERO)
        self._note_others(key, fresh)
        return changed

    def _note_others(self, key: UsageKey, others: Usage) -> None:
        with self._lock:
            self._others[key] = others
            self._others_read_at[key] = self._clock()

    def _admission(self, limit: Limit, used: Usage, before: Usage, amount: Usage) -> Admission:
        live = self.coordinator.live_replicas()

        def admit(others: Usage) -> Usage | None:
            if ratio_of(limit, used.plus(others).plus(before)) >= 1.0:
                return None  # exceeded: this call is not admitted here
            after = before.plus(amount)
            spare = _room_calls(limit, used.plus(others).plus(after), amount, 2 * live, self._spare_max_calls)
            return after.plus(amount.times(spare))

        return admit

    # --- giving spare back (refresh thread) --------------------------------------

    def lowering(self, lease_key: LeaseKey, policy: Policy, snapshot: UsageSnapshot, local: Mapping[UsageKey, Usage],
                 now: datetime) -> Lowering | None:  # fmt: skip
        """Under the check lock: lower ``granted`` for a lease whose spare should go back; what to write then."""
        due = self.spare_due(lease_key, policy, snapshot, local, now)
        if due is None:
            return None
        held, written, current = due
        with self._lock:
            self._granted[lease_key] = held
            if not current:
                key = (lease_key.budget, lease_key.subject)
                self._last_used.pop(lease_key, None)
                self._grow_locks.pop(lease_key, None)
                self._others.pop(key, None)
                self._others_read_at.pop(key, None)
        return Lowering(lease_key, held, written)

    def spare_due(self, lease_key: LeaseKey, policy: Policy, snapshot: UsageSnapshot, local: Mapping[UsageKey, Usage],
                  now: datetime) -> tuple[Usage, Usage, bool] | None:  # fmt: skip
        """(what this replica holds, what it wrote, the lease is of the current period) when the lease's spare
        should go back, else None. Changes nothing."""
        budget = _budget(policy, lease_key.budget)
        start = period_bounds(budget.period, now, policy.zone)[0] if budget is not None else None
        with self._lock:
            last_used = self._last_used.get(lease_key, float("-inf"))
            others = self._others.get((lease_key.budget, lease_key.subject), _ZERO)
        return self._spare(lease_key, budget, start, written=self.coordinator.own(lease_key), last_used=last_used,
                           others=others, snapshot=snapshot, local=local, moment=self._clock())  # fmt: skip

    def due_leases(self, policy: Policy, snapshot: UsageSnapshot, local: Mapping[UsageKey, Usage],
                   now: datetime) -> list[LeaseKey]:  # fmt: skip
        """The leases whose spare should go back (:meth:`spare_due` of each), in one pass over copies: the
        refresh thread scans thousands of leases without the check lock, then lowers the few due under it."""
        budgets = {budget.name: (budget, period_bounds(budget.period, now, policy.zone)[0])
                   for budget in policy.budgets}  # fmt: skip
        written = self.coordinator.own_leases()
        with self._lock:
            last_used = dict(self._last_used)
            others = dict(self._others)
        moment, never = self._clock(), float("-inf")
        due = []
        for lease_key, lease in written.items():
            budget, start = budgets.get(lease_key.budget, (None, None))
            others_held = others.get((lease_key.budget, lease_key.subject), _ZERO)
            spare = self._spare(lease_key, budget, start, written=lease, last_used=last_used.get(lease_key, never),
                                others=others_held, snapshot=snapshot, local=local, moment=moment)  # fmt: skip
            if spare is not None:
                due.append(lease_key)
        return due

    def _spare(self, lease_key: LeaseKey, budget: Budget | None, period_start: datetime | None, *, written: Usage,
               last_used: float, others: Usage, snapshot: UsageSnapshot, local: Mapping[UsageKey, Usage],
               moment: float) -> tuple[Usage, Usage, bool] | None:  # fmt: skip
        key = (lease_key.budget, lease_key.subject)
        current = budget is not None and period_start == lease_key.period_start
        held = _non_negative(local.get(key, _ZERO)) if current else _ZERO
        if covers(held, written):
            return None  # no spare
        idle = moment - last_used >= self._idle_seconds
        if current and budget is not None and not idle:
            limit = budget.overrides.get(key[1], budget.limit) if budget.overrides else budget.limit
            taken = _used(snapshot, key, lease_key).plus(others).plus(written)
            spare = written.minus(held)
            if _room_calls(limit, taken, spare, 1, 1) >= 1:
                return None  # in use, and the others still have more free room than this spare: keep it
        return held, written, current

    def lower(self, lowering: Lowering) -> None:
        """Write a lowered lease (without the check lock); a lease grown meanwhile is left as it is."""
        try:
            self.coordinator.set_own(lowering.lease_key, lowering.target, expected=lowering.written)
            self.lowerings += 1
        except Exception as exc:
            self._failed(exc)
        else:
            if not self.coordinator.problems():
                self._recovered()

    # --- health ------------------------------------------------------------------

    def problems(self) -> list[str]:
        problems = self.coordinator.problems()
        if self.last_failure is not None:
            problems.append(f"coordination failed lately ({self.failures} times; last: {self.last_failure}); "
                            "this replica decided on its own numbers")  # fmt: skip
        return problems

    def _failed(self, exc: BaseException) -> None:
        self.failures += 1
        message = f"{type(exc).__name__}: {exc}"
        if self.last_failure is None:
            logger.error("tokenmeter: cannot coordinate budget headroom with the other replicas (%s); deciding "
                         "on this replica's numbers until it works again", message)  # fmt: skip
        self.last_failure = message

    def _recovered(self) -> None:
        if self.last_failure is not None:
            logger.warning("tokenmeter: coordinating budget headroom works again")
        self.last_failure = None


def _budget(policy: Policy, name: str) -> Budget | None:
    return next((budget for budget in policy.budgets if budget.name == name), None)


def _used(snapshot: UsageSnapshot, key: UsageKey, lease_key: LeaseKey) -> Usage:
    current = snapshot.period_starts.get(key[0]) == lease_key.period_start
    return snapshot.used.get(key, _ZERO) if current else _ZERO


def _room_calls(limit: Limit, taken: Usage, per_call: Usage, share: int, most: int) -> int:
    """How many of ``per_call`` fit in 1/``share`` of what ``limit`` leaves after ``taken`` (``most`` at most)."""
    calls = most
    if limit.tokens is not None and per_call.tokens > 0:
        calls = min(calls, (limit.tokens - taken.tokens) // (share * per_call.tokens))
    amount = per_call.cost.get(limit.currency) if limit.cost is not None and limit.currency else None
    if amount and limit.cost is not None and limit.currency is not None:
        left = limit.cost - taken.cost.get(limit.currency, Decimal(0))
        calls = min(calls, int(left // (share * amount)))
    return max(int(calls), 0)


def _non_negative(usage: Usage) -> Usage:
    return Usage(max(usage.tokens, 0), {c: a for c, a in usage.cost.items() if a > 0})
