# ruff: noqa: S608 - alert SQL is built from this module's own constants
"""The SQL of the credits' Grafana alert rules (alert_rules/grafana/tokenmeter-alerts.yaml, group
tokenmeter-credits), over the same queries as the Credits board (:mod:`tokenmeter.dashboards.credit_queries`).

Each returns one row per alert instance: string columns become its labels, the one number its value.
Grafana's alerts go to channels by their labels, not to people: a request's labels name its account,
wallet, subject, requester and the level it waits for, so a notification policy can route it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from tokenmeter.dashboards.credit_queries import projection, requests, standing

# How far back the "decided" rule looks; its condition fires for the decisions of the last 15 minutes.
DECIDED_LOOKBACK: Final = "INTERVAL 1 HOUR"
_REQUEST_LABELS: Final = ("account, wallet, subject, request_id, toString(amount) AS amount, requester, "
                          "toString(toDateTime(expires_at)) AS expires")  # fmt: skip


def wallet_runs_out() -> str:
    """Per account with credits left and charges in the last 30 days: the whole days they last at that rate."""
    return f"""
SELECT account, wallet, subject, assumeNotNull(days_left) AS days_left
FROM (SELECT * FROM ({projection()}) WHERE left > 0 AND days_left IS NOT NULL)"""


def wallet_empty() -> str:
    """Per account: the credits left this year (the ledger approximation)."""
    return f"""
SELECT account, wallet, subject, toFloat64(left) AS left FROM ({standing()})"""


def top_up_pending() -> str:
    """Per pending request: the hours until it expires; ``next_level`` is the approval level it waits for."""
    return f"""
SELECT {_REQUEST_LABELS}, toString(levels_approved + 1) AS next_level, approved_by,
round(dateDiff('second', now64(6), expires_at) / 3600, 1) AS hours_left
FROM ({requests()})
WHERE state = 'pending'"""


def top_up_decided() -> str:
    """Per request approved, rejected or expired in the last hour: the minutes since, who decided and why."""
    return f"""
SELECT {_REQUEST_LABELS}, state AS decision, decided_by, approved_by, comment,
round(dateDiff('second', decided_at, now64(6)) / 60, 1) AS minutes_ago
FROM ({requests()})
WHERE state IN ('approved', 'rejected', 'expired') AND decided_at >= now64(6) - {DECIDED_LOOKBACK}
AND decided_at <= now64(6)"""


# Rule uid -> the SQL of its query A.
CREDIT_ALERT_QUERIES: Final[dict[str, Callable[[], str]]] = {
    "tokenmeter-wallet-runs-out": wallet_runs_out,
    "tokenmeter-wallet-empty": wallet_empty,
    "tokenmeter-topup-pending": top_up_pending,
    "tokenmeter-topup-decided": top_up_decided,
}
