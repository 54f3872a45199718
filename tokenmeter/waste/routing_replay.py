"""The routing rules replayed over stored chat calls: which rule would have moved which calls, and what they
would have cost at the catalog's prices (docs/waste.md).

Each stored call's features go through :func:`tokenmeter.routing.rules.route` as the check would have given them,
with no budget known (a ``budget_left`` condition never holds). Calls without recorded features (before the app
recorded them) and calls in an experiment are not routed, as in the check. A call is *moved* when its rule
chooses another model than the one it ran on; its cost before is the catalog's price of the model it ran on,
after: of the model chosen, for the same tokens (costs are linear in tokens, so calls with the same features
are priced together exactly).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal

from tokenmeter.pricing import Price, cost_of
from tokenmeter.quota_wire import RouteFeatures
from tokenmeter.routing.routing_policy import RouteRule, Routing
from tokenmeter.routing.rules import RouteInput, route
from tokenmeter.waste.spend import Money, PriceKey, added, difference, money_list


@dataclass(frozen=True)
class RoutedCalls:
    """Stored chat calls with the same features (the store's rows for the replay)."""

    app: str
    department: str
    model: str  # requested
    effective_model: str  # the model that answered
    input_tokens: int  # per call
    features: RouteFeatures
    calls: int
    output_tokens: int  # of all the calls


@dataclass(frozen=True)
class RuleReplay:
    rule: str
    target: str  # "tier small", "down 1", "up 1"
    matched: int = 0  # calls the rule was the first to hold for
    moved: int = 0  # of those, calls it would have sent to another model than the one they ran on
    before: tuple[Money, ...] = ()  # the moved calls at the catalog's price of the model they ran on
    after: tuple[Money, ...] = ()  # the same tokens at the price of the model chosen
    unpriced_moved: int = 0  # moved calls with a model the catalog has no price for: not in before/after

    @property
    def saved(self) -> tuple[Money, ...]:
        return difference(self.before, self.after)


@dataclass(frozen=True)
class RoutingReplay:
    policy: str  # where the routing section came from
    calls: int  # chat calls replayed: with recorded features, not in an experiment
    calls_with_intent: int
    calls_without_features: int
    calls_in_experiments: int
    rules: tuple[RuleReplay, ...]

    @property
    def saved(self) -> tuple[Money, ...]:
        return added(*(rule.saved for rule in self.rules))


def _target(rule: RouteRule) -> str:
    return f"tier {rule.tier}" if rule.tier is not None else f"down {rule.down}" if rule.down else f"up {rule.up}"


@dataclass
class _Tally:
    matched: int = 0
    moved: int = 0
    unpriced_moved: int = 0
    before: dict[PriceKey, Decimal] = field(default_factory=dict)
    after: dict[PriceKey, Decimal] = field(default_factory=dict)


def _no_budget(_name: str | None) -> float | None:
    return None  # the store keeps no budget's state at the time of a call


def replay_routing(
    routing: Routing, rows: Iterable[RoutedCalls], price_for: Callable[[str], Price | None], *, policy: str,
    without_features: int = 0, in_experiments: int = 0,
) -> RoutingReplay:  # fmt: skip
    """Each row through the rules; per rule what it matched, moved and what that would have saved."""
    tallies = {rule.name: _Tally() for rule in routing.rules}
    calls = with_intent = 0
    for row in rows:
        calls += row.calls
        with_intent += row.calls if row.features.intent else 0
        choice = route(routing, RouteInput(row.app, row.department, row.model, row.input_tokens, row.features,
                                           _no_budget))  # fmt: skip
        if choice is None:
            continue
        tally = tallies[choice.rule]
        tally.matched += row.calls
        if choice.model == row.effective_model:
            continue
        tally.moved += row.calls
        if not _add_costs(tally, row, price_for(row.effective_model), price_for(choice.model)):
            tally.unpriced_moved += row.calls
    rules = tuple(RuleReplay(rule.name, _target(rule), t.matched, t.moved, money_list(t.before), money_list(t.after),
                             t.unpriced_moved) for rule in routing.rules for t in (tallies[rule.name],))  # fmt: skip
    return RoutingReplay(policy, calls, with_intent, without_features, in_experiments, rules)


def _add_costs(tally: _Tally, row: RoutedCalls, ran: Price | None, chosen: Price | None) -> bool:
    """The row's cost on both models into the tally; False (nothing added) when either has no price."""
    if ran is None or chosen is None:
        return False
    for price, into in ((ran, tally.before), (chosen, tally.after)):
        cost = cost_of(price, row.input_tokens * row.calls, row.output_tokens)
        key = (price.currency, price.virtual)
        into[key] = into.get(key, Decimal(0)) + (cost.amount or Decimal(0))
    return True


@dataclass(frozen=True)
class ReplayPolicy:
    """The routing section to replay, where it came from, and the catalog's prices to reprice calls at."""

    routing: Routing
    label: str  # e.g. the policy file's path, or "the policy serve enforces"
    price_for: Callable[[str], Price | None]
