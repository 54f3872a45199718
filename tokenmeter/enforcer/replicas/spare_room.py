"""Spare room in shared headroom's leases: what a grown lease takes beyond the call, and when that
spare goes back (:mod:`~tokenmeter.enforcer.replicas.shared_headroom` explains why).

Plain functions over plain data; the state they are asked about is
:class:`~tokenmeter.enforcer.replicas.headroom_book.HeadroomBook` and the coordination server's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Final

from tokenmeter.enforcer.decision import Usage, UsageKey, UsageSnapshot, ratio_of
from tokenmeter.enforcer.policy import Budget, Limit, Policy
from tokenmeter.enforcer.replicas.lease_document import LeaseKey

ZERO: Final = Usage()
# Given what the other replicas hold (read afresh), the lease this replica wants; None: the budget is exceeded.
Admission = Callable[[Usage], Usage | None]
# A lease whose spare should go back: (what this replica's reservations hold of it: the lease is lowered to that,
# what the server holds for this replica, the lease is of its budget's current period). A plain tuple: the
# refresh scans thousands of leases, and a NamedTuple per lease slows that scan.
SpareDue = tuple[Usage, Usage, bool]


def covers(lease: Usage, need: Usage) -> bool:
    return need.tokens <= lease.tokens and all(amount <= lease.cost.get(c, Decimal(0)) for c, amount in
                                               need.cost.items())  # fmt: skip


def budget_named(policy: Policy, name: str) -> Budget | None:
    return next((budget for budget in policy.budgets if budget.name == name), None)


def limit_of(budget: Budget, subject: str) -> Limit:
    return budget.overrides.get(subject, budget.limit) if budget.overrides else budget.limit


def used_in_period(snapshot: UsageSnapshot, key: UsageKey, lease_key: LeaseKey) -> Usage:
    """What the store shows used on ``key``, when the snapshot is of the lease's period (else nothing yet)."""
    current = snapshot.period_starts.get(key[0]) == lease_key.period_start
    return snapshot.used.get(key, ZERO) if current else ZERO


def room_calls(limit: Limit, taken: Usage, per_call: Usage, share: int, most: int) -> int:
    """How many of ``per_call`` fit in 1/``share`` of what ``limit`` leaves after ``taken`` (``most`` at most)."""
    calls = most
    if limit.tokens is not None and per_call.tokens > 0:
        calls = min(calls, (limit.tokens - taken.tokens) // (share * per_call.tokens))
    amount = per_call.cost.get(limit.currency) if limit.cost is not None and limit.currency else None
    if amount and limit.cost is not None and limit.currency is not None:
        left = limit.cost - taken.cost.get(limit.currency, Decimal(0))
        calls = min(calls, int(left // (share * amount)))
    return max(int(calls), 0)


def non_negative(usage: Usage) -> Usage:
    return Usage(max(usage.tokens, 0), {c: a for c, a in usage.cost.items() if a > 0})


def admission(limit: Limit, used: Usage, before: Usage, amount: Usage, *, share: int, most: int) -> Admission:
    """The lease to ask for a call of ``amount`` on top of this replica's ``before``: the call and spare room for
    up to ``most`` more like it in 1/``share`` of what is left; None when the budget is exceeded already."""

    def admit(others: Usage) -> Usage | None:
        if ratio_of(limit, used.plus(others).plus(before)) >= 1.0:
            return None  # exceeded: this call is not admitted here
        after = before.plus(amount)
        spare = room_calls(limit, used.plus(others).plus(after), amount, share, most)
        return after.plus(amount.times(spare))

    return admit


def spare_due(lease_key: LeaseKey, budget: Budget | None, period_start: datetime | None, *, written: Usage,
              last_used: float, others: Usage, snapshot: UsageSnapshot, local: Mapping[UsageKey, Usage],
              moment: float, idle_seconds: float) -> SpareDue | None:  # fmt: skip
    """The lease's spare is due back when this replica ``written`` more than its reservations hold and the lease
    is idle, of a past period, or its spare is more than the room left to the others; None: it is kept."""
    key = (lease_key.budget, lease_key.subject)
    current = budget is not None and period_start == lease_key.period_start
    held = non_negative(local.get(key, ZERO)) if current else ZERO
    if covers(held, written):
        return None  # no spare
    idle = moment - last_used >= idle_seconds
    if current and budget is not None and not idle:
        taken = used_in_period(snapshot, key, lease_key).plus(others).plus(written)
        if room_calls(limit_of(budget, key[1]), taken, written.minus(held), 1, 1) >= 1:
            return None  # in use, and the others still have more free room than this spare: keep it
    return held, written, current
