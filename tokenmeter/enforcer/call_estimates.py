"""What a check asks the enforcer to decide: the call as a :class:`~tokenmeter.enforcer.decision.CheckRequest`.

The app sends the call's tokens (:class:`~tokenmeter.quota_wire.CheckBody`); the decision needs its
estimates: the output tokens (the policy's estimate when the call gives no ``max_tokens``) and, for
budgets with cost limits, the call's cost on the requested model and on each model a downgrade may
route it to, at the model catalog's prices (each model's price looked up once).

A call in an experiment (the policy's ``experiments:``) gets its arm here, before anything is
estimated: in the candidate arm the call is the candidate's, so its estimates, budgets and routes are.
A chat call in no experiment is then routed (the policy's ``routing:``, docs/routing.md) the same way:
the tier a rule chooses is the call's model from here on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING

from tokenmeter.credits.ledger import LedgerError
from tokenmeter.enforcer.decision import CheckRequest
from tokenmeter.enforcer.policy import Policy
from tokenmeter.pricing import Price, cost_of
from tokenmeter.quota_wire import CheckBody
from tokenmeter.routing.rules import RouteChoice, RouteInput

if TYPE_CHECKING:
    from tokenmeter.catalog import ModelCatalog


# A check's call -> the used share (ratio) of each budget that applies to it, by budget name.
SharesUsed = Callable[[CheckBody], Mapping[str, float]]


def _utc_now() -> datetime:
    return datetime.now(UTC)


class CallEstimates:
    def __init__(self, catalog: ModelCatalog | None) -> None:
        """No catalog: no prices, so no call has a cost (cost limits see none)."""
        self._catalog = catalog
        self._prices: dict[str, Price | None] = {}

    def request(self, policy: Policy, body: CheckBody, now: Callable[[], datetime] = _utc_now,
                shares_used: SharesUsed | None = None) -> CheckRequest:  # fmt: skip
        """The call of ``body`` with its experiment arm or route and its estimates under ``policy``; ``now``:
        the enforcer's clock, asked only for a call of an experiment's app and model (its days);
        ``shares_used``: each budget's used share for a call, asked only by a rule on the budget left."""
        arm = policy.experiment_index.arm_for(body.user, body.department, body.app, body.model, now)
        model = body.model if arm is None else arm.model
        route = None if arm is not None else routed(policy, body, shares_used)
        if route is not None:
            model = route.model
        output = policy.output_estimate(model, body.max_output_tokens)
        costs = self.costs(policy, model, body.input_tokens, output)
        return CheckRequest(
            user=body.user,
            department=body.department,
            app=body.app,
            model=model,
            input_tokens=body.input_tokens,
            max_output_tokens=output,
            estimated_costs=costs,
            estimated_wallet_costs=self.wallet_costs(policy, costs),
            experiment=arm,
            route=route,
        )

    def costs(self, policy: Policy, model: str, input_tokens: int, output_tokens: int
              ) -> dict[str, tuple[Decimal, str]]:  # fmt: skip
        """The call's cost on the requested model and on each model a downgrade may route it to."""
        costs: dict[str, tuple[Decimal, str]] = {}
        if not policy.has_cost_limits:  # token limits only: the price does not matter
            return costs
        seen = set()
        current: str | None = model
        while current is not None and current not in seen:
            seen.add(current)
            cost = cost_of(self._price(current), input_tokens, output_tokens)
            if cost.amount is not None and cost.currency is not None:
                costs[current] = (cost.amount, cost.currency)
            current = policy.routes.get(current)
        return costs

    def wallet_costs(self, policy: Policy, costs: dict[str, tuple[Decimal, str]]
                     ) -> dict[str, dict[str, Decimal]]:  # fmt: skip
        """Each estimated cost in the unit of each wallet a budget draws on: model -> {wallet's cost key: amount}.
        A currency a wallet has no rate for is left out (the charge for the call's usage says so)."""
        if not policy.wallet_budgets:
            return {}
        converted: dict[str, dict[str, Decimal]] = {}
        for model, (amount, currency) in costs.items():
            price = self._price(model)
            virtual = price is not None and price.virtual
            for wallet in policy.wallets:
                if virtual and not wallet.charges_virtual:
                    continue
                with contextlib.suppress(LedgerError):
                    converted.setdefault(model, {})[wallet.cost_key] = amount * wallet.wallet_unit.rate(currency)
        return converted

    def _price(self, model: str) -> Price | None:
        if model not in self._prices:
            self._prices[model] = self._catalog.price_for(model) if self._catalog is not None else None
        return self._prices[model]


def routable(policy: Policy, body: CheckBody) -> bool:
    """Whether a routing rule may look at this check: a chat call's features, of an app and model routing covers."""
    table = policy.routing_table
    return body.route is not None and table is not None and table.covers(body.app, body.model)


def routed(policy: Policy, body: CheckBody, shares_used: SharesUsed | None) -> RouteChoice | None:
    """The rule and tier routing chooses for the call, or None (it keeps its model)."""
    if not routable(policy, body):
        return None
    assert policy.routing_table is not None and body.route is not None
    used: dict[str, float] | None = None

    def budget_left(name: str | None) -> float | None:
        nonlocal used
        if used is None:  # asked only when a rule gets as far as its budget_left condition
            used = dict(shares_used(body)) if shares_used is not None else {}
        shares = [max(0.0, 1.0 - ratio) for budget, ratio in used.items() if name is None or budget == name]
        return min(shares) if shares else None

    call = RouteInput(body.app, body.department, body.model, body.input_tokens, body.route, budget_left)
    return policy.routing_table.route(call)
