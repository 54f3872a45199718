"""The enforcer's JSON documents: ``GET /v1/usage``, ``GET /v1/policy``, its part of the health checks.

Plain functions over what the service holds: the replica's :class:`~tokenmeter.enforcer.admission.Enforcer`,
the policy file as loaded, and the last errors.
"""

from __future__ import annotations

from typing import Any

from tokenmeter.enforcer.admission import Enforcer
from tokenmeter.enforcer.decision import BudgetUsage
from tokenmeter.enforcer.policy_file import LoadedPolicy
from tokenmeter.enforcer.quota_utilisation import cost_in
from tokenmeter.enforcer.replicas.replica_presence import ReplicaPresence
from tokenmeter.enforcer.wire import decimal_text


def usage_document(enforcer: Enforcer, stale_after: float, budget: str | None = None,
                   subject: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Used, reserved, limit and ratio per budget and subject (``GET /v1/usage``), optionally of one of each."""
    rows = [
        _usage_row(state)
        for state in enforcer.budget_states()
        if (budget is None or state.budget.name == budget) and (subject is None or state.subject == subject)
    ]
    return {
        "at": enforcer.now().isoformat(),
        "snapshot_age_seconds": _seconds(enforcer.snapshot_age()),
        "stale": enforcer.snapshot_age() > stale_after,
        "budgets": rows,
    }


def policy_document(loaded: LoadedPolicy, last_error: str | None) -> dict[str, Any]:
    """The policy in force, its file and checksum, and why the last changed file was refused (``GET /v1/policy``)."""
    return {
        "source": loaded.source,
        "checksum": loaded.checksum,
        "loaded_at": loaded.loaded_at.isoformat(),
        "last_error": last_error,
        "policy": loaded.policy.model_dump(mode="json"),
    }


def health_document(loaded: LoadedPolicy, policy_error: str | None, store_error: str | None, enforcer: Enforcer,
                    presence: ReplicaPresence) -> dict[str, Any]:  # fmt: skip
    """The enforcer's part of ``/healthz`` (and of the web page's status)."""
    return {
        "policy_loaded_at": loaded.loaded_at.isoformat(),
        "policy_error": policy_error,
        "store_error": store_error,
        "snapshot_age_seconds": _seconds(enforcer.snapshot_age()),
        "replica": presence.replica,
        "warnings": list(presence.warnings),
    }


def store_problems(store_error: str | None, enforcer: Enforcer, stale_after: float) -> list[str]:
    """Why the enforcer cannot count on the store now (for health checks); empty when it can."""
    problems = []
    if store_error is not None:
        problems.append(f"the enforcer cannot read usage from the store: {store_error}")
    age = enforcer.snapshot_age()
    if age > stale_after:
        known = "none yet" if age == float("inf") else f"{age:.0f} s old"
        problems.append(f"the enforcer's usage snapshot is stale ({known}; stale after {stale_after:g} s)")
    if enforcer.headroom is not None:
        problems += enforcer.headroom.problems()
    return problems


def _seconds(value: float) -> float | None:
    return None if value == float("inf") else round(value, 3)


def _usage_row(state: BudgetUsage) -> dict[str, Any]:
    limit, currency = state.limit, state.limit.currency
    return {
        "budget": state.budget.name,
        "scope": state.budget.scope,
        "subject": state.subject,
        "period": state.budget.period,
        "period_start": state.period_start.isoformat(),
        "resets_at": state.resets_at.isoformat(),
        "used_tokens": state.used.tokens,
        "reserved_tokens": state.reserved.tokens,
        "limit_tokens": limit.tokens,
        "used_cost": decimal_text(cost_in(state.used, currency)),
        "reserved_cost": decimal_text(cost_in(state.reserved, currency)),
        "limit_cost": decimal_text(limit.cost),
        "currency": currency,
        "ratio": round(state.ratio, 6),
        "action": state.budget.action,
    }
