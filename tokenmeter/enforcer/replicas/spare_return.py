"""Giving spare room back, on the refresh thread.

The refresh scans this replica's leases without the check lock (thousands of them must not keep
checks waiting), then, for each due, lowers what admissions may use under the check lock, deciding
again on the numbers of that moment, and writes the lowered lease without it. A lease a check
grew meanwhile is left as it is: the write expects the lease it lowered.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from tokenmeter.enforcer.decision import Usage, UsageKey, UsageSnapshot, period_bounds
from tokenmeter.enforcer.policy import Policy
from tokenmeter.enforcer.replicas.coordination import Coordinator, LeaseKey
from tokenmeter.enforcer.replicas.headroom_book import HeadroomBook
from tokenmeter.enforcer.replicas.headroom_health import HeadroomHealth
from tokenmeter.enforcer.replicas.spare_room import ZERO, SpareDue, budget_named, spare_due


@dataclass(frozen=True)
class Lowering:
    lease_key: LeaseKey
    target: Usage
    written: Usage  # what the server holds for this replica, expected unchanged when lowering


class SpareReturn:
    """The refresh side of :class:`~tokenmeter.enforcer.replicas.shared_headroom.SharedHeadroom`."""

    def __init__(self, coordinator: Coordinator, book: HeadroomBook, health: HeadroomHealth, idle_seconds: float,
                 clock: Callable[[], float]) -> None:  # fmt: skip
        self._coordinator = coordinator
        self._book = book
        self._health = health
        self._idle_seconds = idle_seconds
        self._clock = clock
        self.lowerings = 0  # spare given back (writes)

    def due_leases(self, policy: Policy, snapshot: UsageSnapshot, local: Mapping[UsageKey, Usage],
                   now: datetime) -> list[LeaseKey]:  # fmt: skip
        """The leases whose spare should go back (:meth:`spare_due` of each), in one pass over copies: the
        refresh thread scans thousands of leases without the check lock, then lowers the few due under it."""
        budgets = {budget.name: (budget, period_bounds(budget.period, now, policy.zone)[0])
                   for budget in policy.budgets}  # fmt: skip
        written = self._coordinator.own_leases()
        last_used, others = self._book.last_uses()
        moment, never, idle_seconds = self._clock(), float("-inf"), self._idle_seconds
        due = []
        for lease_key, lease in written.items():
            budget, start = budgets.get(lease_key.budget, (None, None))
            others_held = others.get((lease_key.budget, lease_key.subject), ZERO)
            spare = spare_due(lease_key, policy, budget, start, written=lease,
                              last_used=last_used.get(lease_key, never), others=others_held, snapshot=snapshot,
                              local=local, moment=moment, idle_seconds=idle_seconds)  # fmt: skip
            if spare is not None:
                due.append(lease_key)
        return due

    def spare_due(self, lease_key: LeaseKey, policy: Policy, snapshot: UsageSnapshot, local: Mapping[UsageKey, Usage],
                  now: datetime) -> SpareDue | None:  # fmt: skip
        """(what this replica holds, what it wrote, the lease is of the current period) when the lease's spare
        should go back, else None. Changes nothing."""
        budget = budget_named(policy, lease_key.budget)
        start = period_bounds(budget.period, now, policy.zone)[0] if budget is not None else None
        last_used, others = self._book.last_use(lease_key)
        return spare_due(lease_key, policy, budget, start, written=self._coordinator.own(lease_key),
                         last_used=last_used, others=others, snapshot=snapshot, local=local, moment=self._clock(),
                         idle_seconds=self._idle_seconds)  # fmt: skip

    def lowering(self, lease_key: LeaseKey, policy: Policy, snapshot: UsageSnapshot, local: Mapping[UsageKey, Usage],
                 now: datetime) -> Lowering | None:  # fmt: skip
        """Under the check lock: lower ``granted`` for a lease whose spare should go back; what to write then."""
        due = self.spare_due(lease_key, policy, snapshot, local, now)
        if due is None:
            return None
        held, written, current = due
        self._book.lower(lease_key, held, current=current)
        return Lowering(lease_key, held, written)

    def lower(self, lowering: Lowering) -> None:
        """Write a lowered lease (without the check lock); a lease grown meanwhile is left as it is."""
        try:
            self._coordinator.set_own(lowering.lease_key, lowering.target, expected=lowering.written)
            self.lowerings += 1
        except Exception as exc:
            self._health.failed(exc)
        else:
            if not self._coordinator.problems():
                self._health.recovered()
