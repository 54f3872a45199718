"""Rows for the ``quota_events`` table: threshold crossings and decision changes.

Crossings are judged on the usage the store shows (each snapshot), once per (budget,
subject, period, threshold); a restarted replica reads back what it wrote this period
so it does not repeat them. Decision changes are judged on checks, per (user,
department, app). Events wait in a bounded buffer and are written by the refresh loop;
when the store is down the oldest are dropped (and counted), never the checks.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from tokenmeter.enforcer.decision import CheckRequest, Decision, UsageSnapshot, limit_in_force, period_bounds, ratio_of
from tokenmeter.enforcer.policy import Policy

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

logger = logging.getLogger(__name__)

COLUMNS: Final = (
    "time", "event", "budget", "scope", "subject", "period_start", "resets_at", "threshold", "ratio",
    "used_tokens", "limit_tokens", "used_cost", "limit_cost", "currency", "action", "previous_action",
    "user", "department", "app", "requested_model", "effective_model", "reason", "replica",
)  # fmt: skip
THRESHOLD_CROSSED: Final = "threshold_crossed"
DECISION_CHANGED: Final = "decision_changed"
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_LEVELS_SQL: Final = """
SELECT budget, subject, period_start, max(threshold)
FROM quota_events
WHERE event = 'threshold_crossed' AND replica = {replica:String} AND period_start >= {since:DateTime('UTC')}
GROUP BY budget, subject, period_start
"""


class QuotaEventLog:
    def __init__(self, replica: str, max_pending: int = 10_000) -> None:
        self.replica = replica
        self._lock = threading.Lock()
        self._pending: deque[tuple[Any, ...]] = deque(maxlen=max_pending)
        self.dropped = 0
        self._last_action: dict[tuple[str, str, str], str] = {}
        self._levels: dict[tuple[str, str, datetime], float] = {}

    def load_levels(self, client: Client, now: datetime) -> None:
        """What this replica already recorded for periods that may still be current."""
        since = (now - timedelta(days=32)).strftime("%Y-%m-%d %H:%M:%S")
        rows = client.query(_LEVELS_SQL, parameters={"replica": self.replica, "since": since}).result_rows
        with self._lock:
            for budget, subject, period_start, threshold in rows:
                self._levels[(budget, subject, period_start.replace(tzinfo=UTC))] = float(threshold)

    def on_decision(self, request: CheckRequest, decision: Decision, now: datetime) -> None:
        who = (request.user, request.department, request.app)
        previous = self._last_action.get(who)
        self._last_action[who] = decision.action
        if previous == decision.action or (previous is None and decision.action == "allow"):
            return
        self._add(
            now, DECISION_CHANGED, decision, request=request, previous_action=previous or "",
            threshold=decision.threshold or 0.0,
        )  # fmt: skip

    def on_snapshot(self, policy: Policy, snapshot: UsageSnapshot, now: datetime) -> None:
        budgets = {budget.name: budget for budget in policy.budgets}
        for (name, subject), usage in snapshot.used.items():
            budget = budgets.get(name)
            start = snapshot.period_starts.get(name)
            if budget is None or start is None:
                continue
            limit = limit_in_force(policy, snapshot, budget, subject)
            ratio = ratio_of(limit, usage)
            key = (name, subject, start)
            already = self._levels.get(key, 0.0)
            crossed = [t for t in (*policy.warn_thresholds(budget), 1.0) if already < t <= ratio]
            if not crossed:
                continue
            self._levels[key] = crossed[-1]
            for threshold in crossed:
                self._add_row((
                    now, THRESHOLD_CROSSED, name, budget.scope, subject, start,
                    period_bounds(budget.period, start, policy.zone)[1], threshold, ratio,
                    usage.tokens, limit.tokens, usage.cost.get(limit.currency) if limit.currency else None,
                    limit.cost, limit.currency or "", "", "", "", "", "", "", "",
                    f"usage of budget {name!r} reached {threshold:.0%} of its limit", self.replica,
                ))  # fmt: skip
        # Forget the levels of periods that are over.
        self._levels = {
            key: level for key, level in self._levels.items()
            if key[2] >= snapshot.period_starts.get(key[0], key[2])
        }  # fmt: skip

    def _add(self, now: datetime, event: str, decision: Decision, *, request: CheckRequest,
             previous_action: str, threshold: float) -> None:  # fmt: skip
        self._add_row((
            now, event, decision.budget or "", decision.scope or "", decision.subject or "",
            decision.period_start or _EPOCH, decision.resets_at or _EPOCH, threshold, decision.ratio,
            decision.used_tokens, decision.limit_tokens,
            decision.used_cost, decision.limit_cost, decision.currency or "", decision.action, previous_action,
            request.user, request.department, request.app, decision.requested_model, decision.effective_model,
            decision.reason, self.replica,
        ))  # fmt: skip

    def _add_row(self, row: tuple[Any, ...]) -> None:
        with self._lock:
            if len(self._pending) == self._pending.maxlen:
                self.dropped += 1
            self._pending.append(row)

    def pending(self) -> int:
        return len(self._pending)

    def flush(self, client: Client) -> int:
        """Write what is pending; on failure it stays pending for the next try."""
        with self._lock:
            rows = list(self._pending)
            self._pending.clear()
        if not rows:
            return 0
        try:
            client.insert("quota_events", [_normalised(row) for row in rows], column_names=list(COLUMNS))
        except Exception:
            with self._lock:  # back in front of newer events, as far as the buffer allows
                for row in reversed(rows):
                    if len(self._pending) == self._pending.maxlen:
                        self.dropped += 1
                    else:
                        self._pending.appendleft(row)
            raise
        return len(rows)


def _normalised(row: tuple[Any, ...]) -> list[Any]:
    values = list(row)
    for index, value in enumerate(values):
        if isinstance(value, datetime):
            values[index] = value.astimezone(UTC).replace(tzinfo=None)
    return values
