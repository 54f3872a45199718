"""A decision as the quota API's answer (:class:`~tokenmeter.quota_wire.DecisionDocument`)."""

from __future__ import annotations

from decimal import Decimal

from tokenmeter.enforcer.decision import Decision
from tokenmeter.quota_wire import DecisionDocument, LeaseTerms


def decimal_text(value: Decimal | None) -> str | None:
    return None if value is None else format(value, "f")


def decision_document(
    decision: Decision,
    reservation_id: str | None,
    *,
    timezone: str,
    stale: bool = False,
    lease: LeaseTerms | None = None,
    routing_version: str | None = None,
) -> DecisionDocument:
    """``timezone``: the policy's. ``lease``: when the reservation holds room for several calls.
    ``routing_version``: the policy's routing document's (None: no routing section)."""
    return DecisionDocument(
        decision=decision.action,
        requested_model=decision.requested_model,
        effective_model=decision.effective_model,
        budget=decision.budget,
        scope=decision.scope,
        subject=decision.subject,
        period=decision.period,
        used_tokens=decision.used_tokens,
        limit_tokens=decision.limit_tokens,
        used_cost=decimal_text(decision.used_cost),
        limit_cost=decimal_text(decision.limit_cost),
        currency=decision.currency,
        ratio=round(decision.ratio, 6),
        threshold=decision.threshold,
        resets_at=decision.resets_at,
        timezone=timezone,
        reason=decision.reason,
        reservation_id=reservation_id,
        stale=stale,
        lease=lease,
        experiment=None if decision.experiment is None else decision.experiment.name,
        experiment_arm=None if decision.experiment is None else decision.experiment.arm,
        route_rule=None if decision.route is None else decision.route.rule,
        route_tier=None if decision.route is None else decision.route.tier,
        routing_version=routing_version,
    )
