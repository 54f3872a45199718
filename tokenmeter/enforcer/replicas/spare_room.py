"""Spare room in shared headroom's leases: what a grown lease takes beyond the call, and when that
spare goes back (:mod:`~tokenmeter.enforcer.replicas.shared_headroom` explains why).

Plain functions over plain data; the state they are asked about is
:class:`~tokenmeter.enforcer.replicas.headroom_book.HeadroomBook` and the coordination server's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from decimal import ROUND_DOWN, Decimal
from typing import Final

from tokenmeter.enforcer.decision import Usage, UsageKey, UsageSnapshot, limit_in_force, ratio_of
from tokenmeter.enforcer.policy import Budget, Limit, Policy
from tokenmeter.enforcer.replicas.lease_document import LeaseKey

ZERO: Final = Usage()
_BILLIONTH: Final = Decimal("1e-9")
# Given what the other replicas hold (read afresh), the lease this replica wants; None: the budget is exceeded.
Admission = Callable[[Usage], Usage | None]
# A lease whose spare should go back: (what this replica's reservations hold of it: the lease is lowered to that,
# what the server holds for this replica, the lease is of its budget's current period). A plain tuple: the
# refresh scans thousands of leases, and a NamedTuple per lease slows that scan.
SpareDue = tuple[Usage, Usage, bool]


def covers(lease: Usage, need: Usage) -> bool:
    return need.tokens <= lease.tokens and all(amount <= lease.cost.get(c, Decimal(0)) for c, amount in
                                               need.cost.items())  # fmt: skip


def limited_part(usage: Usage, limit: Limit) -> Usage:
    """The part of ``usage`` that ``limit`` counts: its tokens when it limits tokens, its cost in the limit's
    currency when it limits cost. A lease holds only that: a call's cost in another currency, or its tokens
    on a cost-only budget, never bring the budget nearer its limit, so they must not make a lease grow."""
    tokens = usage.tokens if limit.tokens is not None else 0
    if limit.cost is None or limit.currency is None or not usage.cost:
        return usage if tokens == usage.tokens and not usage.cost else Usage(tokens)
    amount = usage.cost.get(limit.currency)
    if tokens == usage.tokens and len(usage.cost) == 1 and amount is not None:
        return usage
    return Usage(tokens, {limit.currency: amount} if amount is not None else {})


def budget_named(policy: Policy, name: str) -> Budget | None:
    return next((budget for budget in policy.budgets if budget.name == name), None)


def limit_of(policy: Policy, snapshot: UsageSnapshot, budget: Budget, subject: str) -> Limit:
    return limit_in_force(policy, snapshot, budget, subject)


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
        taken = used.plus(others).plus(after)
        spare = amount.times(room_calls(limit, taken, amount, share, most))
        return after.plus(spare).plus(_cost_share_alike(limit, taken, amount, spare))

    return admit


def _cost_share_alike(limit: Limit, taken: Usage, amount: Usage, spare: Usage) -> Usage:
    """Spare cost for a call that costs nothing in the limit's currency (another currency, or unpriced) on a
    budget limiting tokens and cost: the same share of the cost left as the spare takes of the tokens left.
    Without it the next call priced in that currency would find no spare and grow the lease again."""
    if limit.cost is None or limit.currency is None or limit.tokens is None or amount.cost.get(limit.currency):
        return ZERO
    tokens_left, cost_left = limit.tokens - taken.tokens, limit.cost - taken.cost.get(limit.currency, Decimal(0))
    if spare.tokens <= 0 or tokens_left <= 0 or cost_left <= 0:
        return ZERO
    share = Decimal(min(spare.tokens, tokens_left)) / tokens_left
    return Usage(0, {limit.currency: (share * cost_left).quantize(_BILLIONTH, rounding=ROUND_DOWN)})


def spare_due(lease_key: LeaseKey, policy: Policy, budget: Budget | None, period_start: datetime | None, *,
              written: Usage,
              last_used: float, others: Usage, snapshot: UsageSnapshot, local: Mapping[UsageKey, Usage],
              moment: float, idle_seconds: float) -> SpareDue | None:  # fmt: skip
    """The lease's spare is due back when this replica ``written`` more than its reservations hold and the lease
    is idle, of a past period, or its spare is more than the room left to the others; None: it is kept."""
    key = (lease_key.budget, lease_key.subject)
    current = budget is not None and period_start == lease_key.period_start
    held = ZERO
    if current and budget is not None:
        held = limited_part(non_negative(local.get(key, ZERO)), limit_of(policy, snapshot, budget, key[1]))
    if covers(held, written):
        return None  # no spare
    idle = moment - last_used >= idle_seconds
    if current and budget is not None and not idle:
        taken = used_in_period(snapshot, key, lease_key).plus(others).plus(written)
        if room_calls(limit_of(policy, snapshot, budget, key[1]), taken, written.minus(held), 1, 1) >= 1:
            return None  # in use, and the others still have more free room than this spare: keep it
    return held, written, current
