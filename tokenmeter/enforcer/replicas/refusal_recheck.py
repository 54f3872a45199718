"""Reading what the others hold again before a refusal stands.

A check refused with what the other replicas held at the last read may be refused on stale
numbers: they may have given spare room back since. So the enforcer reads afresh (without the
check lock) before it refuses, but only when the others held something at the last read (else a
read cannot lower the total), and at most once per ``RECHECK_AFTER_SECONDS`` per budget and
subject; concurrent refusals meanwhile decide with the last numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Final

from tokenmeter.enforcer.decision import UsageKey, period_bounds
from tokenmeter.enforcer.policy import Policy
from tokenmeter.enforcer.replicas.coordination import Coordinator, LeaseKey
from tokenmeter.enforcer.replicas.headroom_book import HeadroomBook
from tokenmeter.enforcer.replicas.headroom_health import HeadroomHealth
from tokenmeter.enforcer.replicas.spare_room import budget_named

# A refusal made with what the others held is read again before it stands, at most once in this
# long per budget and subject: a script hammering a spent budget must not cost a round trip per check.
RECHECK_AFTER_SECONDS: Final = 0.5


class RefusalRecheck:
    def __init__(self, coordinator: Coordinator, book: HeadroomBook, health: HeadroomHealth,
                 clock: Callable[[], float]) -> None:  # fmt: skip
        self._coordinator = coordinator
        self._book = book
        self._health = health
        self._clock = clock

    def worth_rechecking(self, key: UsageKey, *, claim: bool) -> bool:
        """Whether a refusal on ``key`` should wait for a fresh read of what the others hold: only when they
        held something at the last read (else a read cannot lower the total) and that read is older than
        ``RECHECK_AFTER_SECONDS``. ``claim``: the caller will read now, so concurrent refusals decide
        with the last numbers."""
        return self._book.claim_read(key, self._clock(), after=RECHECK_AFTER_SECONDS, claim=claim)

    def recheck(self, policy: Policy, key: UsageKey, now: datetime) -> bool:
        """Read what the others hold on ``key`` afresh (without the check lock); True when it changed.

        A refusal made with what the others held at the last read may be stale (they gave spare room
        back since): the enforcer reads again before it refuses.
        """
        budget = budget_named(policy, key[0])
        if budget is None:
            return False
        lease_key = LeaseKey(key[0], key[1], period_bounds(budget.period, now, policy.zone)[0])
        try:
            fresh = self._coordinator.others(lease_key)
        except Exception as exc:
            self._health.failed(exc)
            return False
        return self._book.note_others(key, fresh, self._clock())
