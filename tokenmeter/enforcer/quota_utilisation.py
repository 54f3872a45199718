"""Rows for the ``quota_utilisation`` table: every budget's state, written every 30 s.

Dashboards read limits and ratios there. The same cadence writes this enforcer's heartbeat
(:class:`~tokenmeter.enforcer.replicas.replica_presence.ReplicaPresence`), so other enforcers on the
store are seen within 90 s.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

from tokenmeter.enforcer.admission import Enforcer
from tokenmeter.enforcer.decision import BudgetUsage, Usage
from tokenmeter.enforcer.replicas.replica_presence import ReplicaPresence

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

UTILISATION_WRITE_SECONDS: Final = 30.0
UTILISATION_COLUMNS: Final = (
    "updated_at", "budget", "scope", "subject", "period", "period_start", "resets_at", "used_tokens",
    "reserved_tokens", "limit_tokens", "used_cost", "reserved_cost", "limit_cost", "currency", "ratio", "action",
    "replica",
)  # fmt: skip


class UtilisationWriter:
    """Writes the rows (and the heartbeat) when :meth:`due`, on the refresh thread; and at stop."""

    def __init__(self, enforcer: Enforcer, presence: ReplicaPresence, replica: str,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self._enforcer = enforcer
        self._presence = presence
        self._replica = replica  # the name quota_events and quota_utilisation rows carry
        self._clock = clock
        self._next_write = float("-inf")

    def due(self) -> bool:
        return self._clock() >= self._next_write

    def write(self, client: Client) -> int:
        """Every budget's state into ``quota_utilisation``; the number of rows written."""
        self._next_write = self._clock() + UTILISATION_WRITE_SECONDS
        self._presence.beat(client)  # the same cadence: other enforcers on this store are seen within 90 s
        states = self._enforcer.budget_states()
        if not states:
            return 0
        now = datetime.now(UTC).replace(tzinfo=None)
        rows = [utilisation_row(state, now, self._replica) for state in states]
        client.insert("quota_utilisation", rows, column_names=list(UTILISATION_COLUMNS))
        return len(rows)


def utilisation_row(state: BudgetUsage, updated_at: datetime, replica: str) -> list[Any]:
    """One (budget, subject) as a ``quota_utilisation`` row (UTILISATION_COLUMNS; naive UTC times)."""
    currency = state.limit.currency
    return [updated_at, state.budget.name, state.budget.scope, state.subject, state.budget.period,
            state.period_start.replace(tzinfo=None), state.resets_at.replace(tzinfo=None),
            state.used.tokens, state.reserved.tokens, state.limit.tokens,
            cost_in(state.used, currency), cost_in(state.reserved, currency), state.limit.cost,
            currency or "", state.ratio, state.budget.action, replica]  # fmt: skip


def cost_in(usage: Usage, currency: str | None) -> Decimal | None:
    """``usage``'s cost in a limit's currency; None for a limit without one (tokens only)."""
    return usage.cost.get(currency, Decimal(0)) if currency else None
