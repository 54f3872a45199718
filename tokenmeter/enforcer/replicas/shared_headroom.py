"""The decision rule across replicas: what the other replicas hold counts as reserved, and a replica
admits a call only within the leases it holds (:mod:`~tokenmeter.enforcer.replicas.coordination`).

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
while the budget is far from its limit and the last calls are decided one by one. A lease holds only
what its budget's limit counts (:func:`~tokenmeter.enforcer.replicas.spare_room.limited_part`): a
cost in another currency never makes it grow. The spare goes
back when the budget has been idle on this replica for ``idle_seconds``, when the free room left
to the others is smaller than it, or when the period ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from tokenmeter.enforcer.decision import Usage, UsageKey, UsageSnapshot, period_bounds
from tokenmeter.enforcer.policy import Policy
from tokenmeter.enforcer.replicas.coordination import Coordinator, LeaseKey
from tokenmeter.enforcer.replicas.headroom_book import HeadroomBook
from tokenmeter.enforcer.replicas.headroom_health import HeadroomHealth
from tokenmeter.enforcer.replicas.refusal_recheck import RECHECK_AFTER_SECONDS, RefusalRecheck
from tokenmeter.enforcer.replicas.spare_return import Lowering, SpareReturn
from tokenmeter.enforcer.replicas.spare_room import (
    ZERO,
    Admission,
    SpareDue,
    admission,
    budget_named,
    covers,
    limit_of,
    limited_part,
    used_in_period,
)

# The enforcer and the tests import these from here (some are defined in the modules of its parts).
__all__ = [
    "DEFAULT_IDLE_SECONDS",
    "DEFAULT_SPARE_MAX_CALLS",
    "RECHECK_AFTER_SECONDS",
    "Growth",
    "Lowering",
    "SharedHeadroom",
    "SpareDue",
    "WithOthers",
    "covers",
]

DEFAULT_SPARE_MAX_CALLS: Final = 1024
DEFAULT_IDLE_SECONDS: Final = 30.0


class WithOthers(Mapping[UsageKey, Usage]):
    """This replica's reservations plus what the other replicas hold, per (budget, subject)."""

    def __init__(self, local: Mapping[UsageKey, Usage], others: Mapping[UsageKey, Usage]) -> None:
        self._local = local
        self._others = others

    def __getitem__(self, key: UsageKey) -> Usage:
        local, others = self._local.get(key), self._others.get(key)
        if local is None and others is None:
            raise KeyError(key)
        return (local or ZERO).plus(others or ZERO)

    def __iter__(self) -> Iterator[UsageKey]:
        return iter({*self._local, *self._others})

    def __len__(self) -> int:
        return len({*self._local, *self._others})


@dataclass(frozen=True)
class Growth:
    """A lease a check needs grown before it can be admitted."""

    key: UsageKey
    lease_key: LeaseKey
    need: Usage  # what the lease must cover: this replica's reservations on it, and the call
    admit: Admission


class SharedHeadroom:
    """One replica's shared headroom. Checks plan and grow leases here; a refusal is read again first by
    :class:`~tokenmeter.enforcer.replicas.refusal_recheck.RefusalRecheck`, the refresh gives spare back through
    :class:`~tokenmeter.enforcer.replicas.spare_return.SpareReturn`; all three keep their numbers in one
    :class:`~tokenmeter.enforcer.replicas.headroom_book.HeadroomBook`."""

    def __init__(
        self,
        coordinator: Coordinator,
        spare_max_calls: int = DEFAULT_SPARE_MAX_CALLS,
        idle_seconds: float = DEFAULT_IDLE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.coordinator = coordinator
        self._spare_max_calls = spare_max_calls
        self._clock = clock
        self._book = HeadroomBook()
        self._health = HeadroomHealth()
        self._recheck = RefusalRecheck(coordinator, self._book, self._health, clock)
        self._spare = SpareReturn(coordinator, self._book, self._health, idle_seconds, clock)
        self.grows = 0  # leases grown on the server (writes)

    @property
    def lowerings(self) -> int:
        """Spare given back (writes)."""
        return self._spare.lowerings

    @property
    def failures(self) -> int:
        return self._health.failures

    @property
    def last_failure(self) -> str | None:
        return self._health.last_failure

    def held(self, local: Mapping[UsageKey, Usage]) -> Mapping[UsageKey, Usage]:
        return WithOthers(local, self._book.others)

    def others_now(self) -> dict[UsageKey, Usage]:
        """A copy of what the others held at the last reads."""
        return self._book.others_copy()

    # --- a check (the caller holds the check lock, except in grow and recheck) ----

    def plan(self, policy: Policy, snapshot: UsageSnapshot, local: Mapping[UsageKey, Usage],
             hold: Mapping[UsageKey, Usage], now: datetime) -> list[Growth]:  # fmt: skip
        """The leases to grow before ``hold`` can be reserved on top of ``local``; empty: reserve now."""
        growths = []
        moment = self._clock()
        for key, amount in hold.items():
            budget = budget_named(policy, key[0])
            if budget is None:
                continue
            lease_key = LeaseKey(key[0], key[1], period_bounds(budget.period, now, policy.zone)[0])
            limit = limit_of(policy, snapshot, budget, key[1])
            before, call = limited_part(local.get(key, ZERO), limit), limited_part(amount, limit)
            granted = self._book.use(lease_key, moment)
            if not covers(granted, before.plus(call)):
                admit = admission(limit, used_in_period(snapshot, key, lease_key), before, call,
                                  share=2 * self.coordinator.live_replicas(), most=self._spare_max_calls)  # fmt: skip
                growths.append(Growth(key, lease_key, before.plus(call), admit))
        return growths

    def grow(self, growths: list[Growth]) -> bool:
        """Grow the leases (network calls: without the check lock). False when a budget turned out to be
        exceeded with the others' fresh numbers: decide again (they are in :meth:`held` now).

        When the coordination server cannot be used the leases are granted on what this replica knows
        (counted, logged, in /healthz): a Keeper outage must not refuse every call.
        """
        for growth in growths:
            with self._book.grow_lock(growth.lease_key):  # one grow per lease at a time: the others wait, then see it
                if not self._grow(growth):
                    return False
        return True

    def _grow(self, growth: Growth) -> bool:
        if self._book.covers(growth.lease_key, growth.need):
            return True  # another check grew it enough while this one waited
        try:
            granted, others, lease = self.coordinator.grow(growth.lease_key, growth.admit)
        except Exception as exc:
            self._health.failed(exc)
            wanted = growth.admit(self._book.others_of(growth.key))
            if wanted is None:
                return False
            granted, lease = True, wanted
        else:
            self._book.note_others(growth.key, others, self._clock())
            self.grows += int(granted)
        if not granted:
            return False
        self._book.raise_granted(growth.lease_key, lease)
        return True

    def grant_unconfirmed(self, growths: list[Growth]) -> None:
        """After a check could not be settled with the server (it kept changing): admit on this replica's
        numbers, counted like a coordination failure."""
        self._health.failed(RuntimeError("the leases kept changing under a check"))
        for growth in growths:
            self._book.raise_granted(growth.lease_key, growth.need)

    def worth_rechecking(self, key: UsageKey, *, claim: bool) -> bool:
        return self._recheck.worth_rechecking(key, claim=claim)

    def recheck(self, policy: Policy, key: UsageKey, now: datetime) -> bool:
        return self._recheck.recheck(policy, key, now)

    # --- giving spare back (refresh thread): :class:`~tokenmeter.enforcer.replicas.spare_return.SpareReturn` ---

    def due_leases(self, policy: Policy, snapshot: UsageSnapshot, local: Mapping[UsageKey, Usage],
                   now: datetime) -> list[LeaseKey]:  # fmt: skip
        return self._spare.due_leases(policy, snapshot, local, now)

    def spare_due(self, lease_key: LeaseKey, policy: Policy, snapshot: UsageSnapshot, local: Mapping[UsageKey, Usage],
                  now: datetime) -> SpareDue | None:  # fmt: skip
        return self._spare.spare_due(lease_key, policy, snapshot, local, now)

    def lowering(self, lease_key: LeaseKey, policy: Policy, snapshot: UsageSnapshot, local: Mapping[UsageKey, Usage],
                 now: datetime) -> Lowering | None:  # fmt: skip
        return self._spare.lowering(lease_key, policy, snapshot, local, now)

    def lower(self, lowering: Lowering) -> None:
        self._spare.lower(lowering)

    # --- health ------------------------------------------------------------------

    def problems(self) -> list[str]:
        return self.coordinator.problems() + self._health.problems()
