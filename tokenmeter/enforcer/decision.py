"""The quota decision: a pure function of (policy, usage snapshot, reservations, request, now).

No I/O here. The sidecar gathers period-to-date usage per (budget, subject) from the store
and a ledger of in-flight reservations, and calls :func:`decide` for each check.

Rules (docs/quotas.md):

- A budget applies to a call when its scope's subject matches (organisation: every call),
  the user is not exempt, and the model is in its model group (a budget on "remote paid
  models" never blocks a local model).
- Usage counts in the budget's current period (day, ISO week, month or year in the policy's
  time zone). Numbers from an earlier period count as 0: the rollover is exact at the
  boundary even before the next snapshot arrives.
- A budget is exceeded when used + reserved reaches its limit (tokens or cost, whichever
  first). A call is allowed while there is room, whatever its own size, so a budget is
  passed by at most the last admitted call's estimate (each allowed check is reserved at
  once). A call that does not fit in what is left is still admitted: its estimate reserves
  ``max_tokens`` of output, usually far more than the call uses, so refusing by estimate
  would refuse calls that fit.
- A lease (:func:`lease_calls`): an ``allow`` far from every applicable budget's first
  warning threshold may reserve room for several calls like it at once; the app decides
  those locally. A lease takes at most a quarter of the room left before the threshold,
  so the calls that approach it are decided one by one.
- The most restrictive exceeded budget wins (deny > degrade > downgrade). A downgrade
  follows the route table (chains allowed) and re-checks the cheaper model; with no route
  left the budget's fallback applies. Without an exceeded budget, crossing a warning
  threshold gives ``warn``.
- A call in an experiment (the policy's ``experiments:``) comes with its arm: in the candidate arm
  ``request.model`` is the candidate already, so the candidate's budgets, routes and estimates
  decide it, and a downgrade still routes it on. The decision names the arm; an experiment is not
  a quota action.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Final, Literal, NamedTuple
from zoneinfo import ZoneInfo

from tokenmeter.calendar_periods import calendar_period, midnight
from tokenmeter.enforcer.experiment_policy import ExperimentArm
from tokenmeter.enforcer.policy import Budget, Limit, Period, Policy
from tokenmeter.routing.rules import RouteChoice

DecisionKind = Literal["allow", "warn", "downgrade", "degrade", "deny"]
_SEVERITY: Final[dict[str, int]] = {"allow": 0, "warn": 1, "downgrade": 2, "degrade": 3, "deny": 4}
UsageKey = tuple[str, str]  # (budget name, subject); the organisation's subject is ""


@dataclass(frozen=True)
class Usage:
    tokens: int = 0
    cost: Mapping[str, Decimal] = field(default_factory=dict)  # currency -> amount

    def plus(self, other: Usage) -> Usage:
        if not other.cost:  # the common case: share the (never mutated) cost mapping
            return self if not other.tokens else Usage(self.tokens + other.tokens, self.cost)
        if not self.cost:
            return Usage(self.tokens + other.tokens, other.cost)
        costs = dict(self.cost)
        for currency, amount in other.cost.items():
            costs[currency] = costs.get(currency, Decimal(0)) + amount
        return Usage(self.tokens + other.tokens, costs)

    def minus(self, other: Usage) -> Usage:
        costs = dict(self.cost)
        for currency, amount in other.cost.items():
            left = costs.get(currency, Decimal(0)) - amount
            if left:
                costs[currency] = left
            else:
                costs.pop(currency, None)
        return Usage(self.tokens - other.tokens, costs)

    def is_zero(self) -> bool:
        return self.tokens == 0 and not any(self.cost.values())

    def times(self, count: int) -> Usage:
        if count == 1:
            return self
        return Usage(self.tokens * count, {currency: amount * count for currency, amount in self.cost.items()})


_ZERO: Final = Usage()


@dataclass(frozen=True)
class UsageSnapshot:
    """Period-to-date usage per (budget, subject), and the period start each budget's numbers are for."""

    used: Mapping[UsageKey, Usage] = field(default_factory=dict)
    period_starts: Mapping[str, datetime] = field(default_factory=dict)
    # Limits read with the usage: a wallet budget's is the subject's credits this year (from the ledger).
    limits: Mapping[UsageKey, Limit] = field(default_factory=dict)


def limit_in_force(policy: Policy, snapshot: UsageSnapshot, budget: Budget, subject: str) -> Limit:
    """The limit a (budget, subject) is decided against: the snapshot's when it has one, else the policy's."""
    if snapshot.limits:
        limit = snapshot.limits.get((budget.name, subject))
        if limit is not None:
            return limit
    return policy.limit_for(budget, subject)


@dataclass(frozen=True)
class CheckRequest:
    user: str
    department: str
    app: str
    model: str
    input_tokens: int
    max_output_tokens: int
    # Estimated cost of this call per model it may run on (the requested one and its
    # downgrade targets): model -> (amount, currency). Missing: cost limits ignore it.
    estimated_costs: Mapping[str, tuple[Decimal, str]] = field(default_factory=dict)
    # The same cost in each wallet's unit: model -> {wallet cost key: amount}.
    estimated_wallet_costs: Mapping[str, Mapping[str, Decimal]] = field(default_factory=dict)
    # The call's experiment arm (policy ``experiments:``); ``model`` is then the arm's model (the candidate's
    # in the candidate arm), so budgets and estimates are judged on the model that will run.
    experiment: ExperimentArm | None = None
    # The routing rule that chose ``model`` (policy ``routing:``); None: no rule routed the call.
    route: RouteChoice | None = None

    @property
    def estimated_tokens(self) -> int:
        return self.input_tokens + self.max_output_tokens

    @property
    def requested_model(self) -> str:
        """The model the app asked for."""
        if self.route is not None:
            return self.route.requested_model
        return self.model if self.experiment is None else self.experiment.requested_model


@dataclass(frozen=True)
class Decision:
    action: DecisionKind
    requested_model: str
    effective_model: str
    budget: str | None = None
    scope: str | None = None
    subject: str | None = None
    period: str | None = None
    used_tokens: int = 0
    limit_tokens: int | None = None
    used_cost: Decimal | None = None
    limit_cost: Decimal | None = None
    currency: str | None = None
    ratio: float = 0.0
    threshold: float | None = None  # the warning threshold crossed
    period_start: datetime | None = None
    resets_at: datetime | None = None
    reason: str = ""
    experiment: ExperimentArm | None = None  # the call's experiment and arm (not a quota action)
    route: RouteChoice | None = None  # the routing rule that chose the model (not a quota action)


class _BudgetState(NamedTuple):  # a tuple: built for every budget of every check
    budget: Budget
    subject: str
    limit: Limit
    used: Usage
    ratio: float
    period_start: datetime
    period_end: datetime

    @property
    def exceeded(self) -> bool:
        return self.ratio >= 1.0


def period_bounds(period: Period, now: datetime, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """``[start, end)`` of the day, ISO week, month or year holding ``now``, in ``zone``, returned in UTC."""
    return _bounds_of_day(period, now.astimezone(zone).date(), zone)


@functools.lru_cache(maxsize=256)
def _bounds_of_day(period: Period, day: date, zone: ZoneInfo) -> tuple[datetime, datetime]:
    # Cached: every check needs the bounds of each budget, and they change once a day.
    first, last = calendar_period(period, day)
    return midnight(first, zone).astimezone(UTC), midnight(last, zone).astimezone(UTC)


def subject_of(budget: Budget, request: CheckRequest) -> str | None:
    """The subject this budget counts the call against, or None when it does not apply."""
    if request.user and request.user in budget.exempt:
        return None
    scope = budget.scope
    subject = (
        "" if scope == "organisation" else request.user if scope == "user"
        else request.department if scope == "department" else request.app
    )  # fmt: skip
    if budget.subject is not None and subject != budget.subject:
        return None
    if scope != "organisation" and not subject:
        return None  # an unattributed call is not any department's (the organisation budget still sees it)
    return subject


def ratio_of(limit: Limit, used: Usage) -> float:
    """How much of ``limit`` is used: the larger of the token and the cost ratio."""
    ratio = used.tokens / limit.tokens if limit.tokens is not None else 0.0
    if limit.cost is not None and limit.currency is not None:
        if limit.cost <= 0:  # a wallet with nothing left this year
            return max(ratio, 1.0)
        if used.cost:
            ratio = max(ratio, float(used.cost.get(limit.currency, 0) / limit.cost))
    return ratio


def _states(
    policy: Policy, snapshot: UsageSnapshot, reservations: Mapping[UsageKey, Usage], request: CheckRequest,
    *, model: str, now: datetime,
) -> list[_BudgetState]:  # fmt: skip
    states = []
    zone = policy.zone
    local_day = now.astimezone(zone).date()  # once per decision, not per budget
    period_starts, snapshot_used = snapshot.period_starts, snapshot.used
    for budget in policy.budgets:
        if budget.models is not None and not policy.in_group(model, budget.models):
            continue
        subject = subject_of(budget, request)
        if subject is None:
            continue
        start, end = _bounds_of_day(budget.period, local_day, zone)
        key = (budget.name, subject)
        used = snapshot_used.get(key, _ZERO) if period_starts.get(budget.name) == start else _ZERO
        held = reservations.get(key)
        if held is not None:
            used = used.plus(held)
        limit = limit_in_force(policy, snapshot, budget, subject)
        states.append(_BudgetState(budget, subject, limit, used, ratio_of(limit, used), start, end))
    return states


def used_shares(policy: Policy, snapshot: UsageSnapshot, reservations: Mapping[UsageKey, Usage],
                request: CheckRequest, now: datetime) -> dict[str, float]:  # fmt: skip
    """Each budget that applies to the call (on its model) -> its used share (routing's ``budget_left``)."""
    return {state.budget.name: state.ratio
            for state in _states(policy, snapshot, reservations, request, model=request.model, now=now)}  # fmt: skip


def _decision(action: DecisionKind, request: CheckRequest, model: str, state: _BudgetState | None,
              reason: str, *, threshold: float | None = None) -> Decision:  # fmt: skip
    if state is None:
        return Decision(
            action, request.requested_model, model, reason=reason, experiment=request.experiment, route=request.route
        )
    limit = state.limit
    return Decision(
        action=action,
        requested_model=request.requested_model,
        effective_model=model,
        budget=state.budget.name,
        scope=state.budget.scope,
        subject=state.subject,
        period=state.budget.period,
        used_tokens=state.used.tokens,
        limit_tokens=limit.tokens,
        used_cost=state.used.cost.get(limit.currency, Decimal(0)) if limit.currency else None,
        limit_cost=limit.cost,
        currency=limit.currency,
        ratio=state.ratio,
        threshold=threshold,
        period_start=state.period_start,
        resets_at=state.period_end,
        reason=reason,
        experiment=request.experiment,
        route=request.route,
    )


def _describe(state: _BudgetState) -> str:
    who = f"{state.budget.scope} {state.subject}" if state.subject else "the organisation"
    return f"budget {state.budget.name!r} ({who}, per {state.budget.period}) is at {state.ratio:.0%} of its limit"


def decide(
    policy: Policy,
    snapshot: UsageSnapshot,
    reservations: Mapping[UsageKey, Usage],
    request: CheckRequest,
    now: datetime,
) -> Decision:
    """The decision for one call. ``now`` is timezone-aware."""
    return _decide(policy, snapshot, reservations, request, now)[0]


# A lease takes at most 1/LEASE_SHARE of the room left before a budget's first warning threshold.
LEASE_SHARE: Final = 4


def decide_and_lease(
    policy: Policy,
    snapshot: UsageSnapshot,
    reservations: Mapping[UsageKey, Usage],
    request: CheckRequest,
    now: datetime,
    *,
    max_calls: int = 1,
) -> tuple[Decision, dict[UsageKey, Usage], int]:
    """The decision, what to reserve for it (the estimate against every budget that applies to the effective
    model, :func:`reservation_for`, from the same pass), and for how many calls like it room may be held
    (``max_calls`` at most; 1: this call only; 0: nothing, the call does not go ahead)."""
    decision, states = _decide(policy, snapshot, reservations, request, now)
    if decision.action in {"degrade", "deny"}:
        return decision, {}, 0
    estimate = _estimate(request, decision)
    hold = {(state.budget.name, state.subject): estimate for state in states}
    calls = lease_calls(policy, states, estimate, max_calls) if decision.action == "allow" and max_calls > 1 else 1
    return decision, hold, calls


def lease_calls(policy: Policy, states: list[_BudgetState], estimate: Usage, max_calls: int) -> int:
    """How many calls of ``estimate`` one lease may hold room for (1: decide each call by itself).

    Every applicable budget must have room for them within a quarter of what is left before its
    first warning threshold: many app processes can hold leases, and the calls that come near a
    threshold or the limit are decided one by one. No applicable budget: ``max_calls`` (nothing held).
    """
    calls = max_calls
    for state in states:
        first = min(policy.warn_thresholds(state.budget), default=1.0)
        limit, used = state.limit, state.used
        if limit.tokens is not None and estimate.tokens > 0:
            room = first * limit.tokens - used.tokens
            calls = min(calls, int(room // (LEASE_SHARE * estimate.tokens)))
        amount = estimate.cost.get(limit.currency) if limit.cost is not None and limit.currency else None
        if amount and limit.cost is not None and limit.currency is not None:
            room_cost = Decimal(str(first)) * limit.cost - used.cost.get(limit.currency, Decimal(0))
            calls = min(calls, int(room_cost // (LEASE_SHARE * amount)))
        if calls <= 1:
            return 1
    return max(calls, 1)


def _estimate(request: CheckRequest, decision: Decision) -> Usage:
    model = decision.effective_model
    cost = request.estimated_costs.get(model)
    costs = {cost[1]: cost[0]} if cost is not None else {}
    if request.estimated_wallet_costs:
        costs.update(request.estimated_wallet_costs.get(model, {}))
    return Usage(request.estimated_tokens, costs)


def _decide(
    policy: Policy,
    snapshot: UsageSnapshot,
    reservations: Mapping[UsageKey, Usage],
    request: CheckRequest,
    now: datetime,
) -> tuple[Decision, list[_BudgetState]]:
    """The decision and the budget states of the effective model."""
    model = request.model
    visited = {model}
    downgraded_by: _BudgetState | None = None
    while True:
        states = _states(policy, snapshot, reservations, request, model=model, now=now)
        exceeded = [state for state in states if state.exceeded]
        if not exceeded:
            break
        strictest = max(exceeded, key=lambda s: (_SEVERITY[s.budget.action], s.ratio))
        if strictest.budget.action != "downgrade":
            return _decision(strictest.budget.action, request, model, strictest,
                             f"{_describe(strictest)}: {strictest.budget.action}"), states  # fmt: skip
        cheaper = policy.routes.get(model)
        if cheaper is None or cheaper in visited:
            fallback = strictest.budget.fallback
            reason = f"{_describe(strictest)}; no cheaper model to route {model!r} to: {fallback}"
            return _decision(fallback, request, model, strictest, reason), states
        downgraded_by = downgraded_by or strictest
        visited.add(cheaper)
        model = cheaper
    if downgraded_by is not None:
        return _decision("downgrade", request, model, downgraded_by,
                         f"{_describe(downgraded_by)}: {request.model!r} downgraded to {model!r}"), states  # fmt: skip
    crossed = [
        (max(t for t in policy.warn_thresholds(s.budget) if t <= s.ratio), s)
        for s in states
        if any(t <= s.ratio for t in policy.warn_thresholds(s.budget))
    ]
    if crossed:
        threshold, state = max(crossed, key=lambda pair: (pair[1].ratio, pair[0]))
        return _decision("warn", request, model, state, f"{_describe(state)} (warning at {threshold:.0%})",
                         threshold=threshold), states  # fmt: skip
    return _decision("allow", request, model, None, "within every applicable budget"), states


def reservation_for(policy: Policy, request: CheckRequest, decision: Decision, now: datetime) -> dict[UsageKey, Usage]:
    """What the ledger holds for a call that goes ahead, until its real usage is in the store.

    Every budget that applies to the effective model is charged the call's estimate:
    input tokens plus ``max_output_tokens``, and its estimated cost on that model.
    Nothing for ``degrade`` or ``deny``: those calls do not reach a model.
    """
    if decision.action in {"degrade", "deny"}:
        return {}
    usage = _estimate(request, decision)
    return {
        (state.budget.name, state.subject): usage
        for state in _states(policy, UsageSnapshot(), {}, request, model=decision.effective_model, now=now)
    }


@dataclass(frozen=True)
class BudgetUsage:
    """One (budget, subject) in its current period: what ``GET /v1/usage`` and /metrics show."""

    budget: Budget
    subject: str
    limit: Limit
    used: Usage  # what the store showed in the last snapshot
    reserved: Usage  # in-flight calls not yet in the store
    ratio: float  # of used + reserved
    period_start: datetime
    resets_at: datetime


def budget_usages(
    policy: Policy, snapshot: UsageSnapshot, reservations: Mapping[UsageKey, Usage], now: datetime
) -> list[BudgetUsage]:
    """Every (budget, subject) with usage or reservations in its current period."""
    budgets = {budget.name: budget for budget in policy.budgets}
    rows = []
    for key in sorted({*snapshot.used, *reservations}):
        budget = budgets.get(key[0])
        if budget is None:
            continue
        start, end = period_bounds(budget.period, now, policy.zone)
        used = snapshot.used.get(key, Usage()) if snapshot.period_starts.get(budget.name) == start else Usage()
        reserved = reservations.get(key, Usage())
        limit = limit_in_force(policy, snapshot, budget, key[1])
        ratio = ratio_of(limit, used.plus(reserved))
        rows.append(BudgetUsage(budget, key[1], limit, used, reserved, ratio, start, end))
    return rows
