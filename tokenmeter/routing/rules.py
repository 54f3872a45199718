"""The routing rules evaluated over what is known of a call before it is made (docs/routing.md).

:class:`RoutingTable` is the policy's ``routing:`` section made ready for the check path: globs compiled,
tiers indexed by model, each rule's conditions as plain values. ``RoutingTable.route`` costs a few
microseconds per call; a call no rule can apply to (not a tier's model, an app routing does not cover)
costs one dictionary lookup.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from tokenmeter.quota_wire import RouteFeatures
from tokenmeter.routing.routing_policy import BudgetLeft, Range, RouteConditions, RouteRule, Routing

NO_FEATURES: Final = RouteFeatures()


@dataclass(frozen=True)
class RouteInput:
    """A call as routing sees it."""

    app: str
    department: str
    model: str  # the model the app asked for
    input_tokens: int
    features: RouteFeatures
    # A budget's name, or None for the smallest among the call's budgets -> the share left; None: none applies.
    budget_left: Callable[[str | None], float | None]


@dataclass(frozen=True)
class RouteChoice:
    rule: str
    tier: str
    model: str
    requested_model: str

    @property
    def moved(self) -> bool:
        return self.model != self.requested_model


def _globs(patterns: tuple[str, ...] | None) -> re.Pattern[str] | None:
    if patterns is None:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(pattern)})" for pattern in patterns) or "(?!)")


def _within(value: float | None, limits: Range | None) -> bool:
    if limits is None:
        return True
    if value is None:
        return False
    return (limits.min is None or value >= limits.min) and (limits.max is None or value <= limits.max)


class _CompiledRule:
    __slots__ = ("apps", "budget", "conditions", "departments", "intents", "models", "name", "routes", "rule")

    def __init__(self, rule: RouteRule) -> None:
        when: RouteConditions = rule.when
        self.rule, self.name, self.conditions = rule, rule.name, when
        self.apps, self.routes, self.models = _globs(when.apps), _globs(when.app_routes), _globs(when.models)
        self.departments = None if when.departments is None else frozenset(when.departments)
        self.intents = None if when.intent is None else frozenset(when.intent)
        self.budget: BudgetLeft | None = when.budget_left

    def holds(self, call: RouteInput) -> bool:
        when, features = self.conditions, call.features
        return (
            _globbed(self.apps, call.app) and _globbed(self.routes, features.app_route)
            and _globbed(self.models, call.model)
            and (self.departments is None or call.department in self.departments)
            and (self.intents is None or features.intent in self.intents)
            and _within(features.question_chars, when.question_chars) and _within(call.input_tokens, when.input_tokens)
            and _within(features.depth, when.depth) and _within(features.passages, when.passages)
            and _within(features.top_score, when.top_score)
            and (self.budget is None or _within(call.budget_left(self.budget.budget), self.budget))
        )  # fmt: skip


def _globbed(globs: re.Pattern[str] | None, value: str | None) -> bool:
    """No globs: anything; globs: a value that one of them matches."""
    return globs is None or (value is not None and globs.fullmatch(value) is not None)


class RoutingTable:
    """The routing section, ready to route calls."""

    def __init__(self, routing: Routing) -> None:
        self.routing = routing
        self._tier_of_model = {tier.model: index for index, tier in enumerate(routing.tiers)}
        self._tier_index = {tier.name: index for index, tier in enumerate(routing.tiers)}
        self._apps = _globs(routing.apps)
        self._critical = _globs(routing.critical_apps)
        self._rules = [_CompiledRule(rule) for rule in routing.rules]

    def covers(self, app: str, model: str) -> bool:
        """Whether a call of ``app`` asking for ``model`` can be routed at all."""
        return model in self._tier_of_model and bool(self._apps and self._apps.fullmatch(app))

    def route(self, call: RouteInput) -> RouteChoice | None:
        """The first rule that applies, with the tier it chooses; None: the call keeps its model."""
        asked = self._tier_of_model.get(call.model)
        if asked is None or not self._rules or not self.covers(call.app, call.model):
            return None
        critical = bool(self._critical and self._critical.fullmatch(call.app))
        tiers = self.routing.tiers
        for compiled in self._rules:
            target = self._target(compiled.rule, asked)
            if critical and target < asked:
                continue  # a critical app is never sent to a cheaper tier than it asked for
            if compiled.holds(call):
                tier = tiers[target]
                return RouteChoice(compiled.name, tier.name, tier.model, call.model)
        return None

    def _target(self, rule: RouteRule, asked: int) -> int:
        if rule.tier is not None:
            return self._tier_index[rule.tier]
        if rule.down is not None:
            return max(0, asked - rule.down)
        return min(len(self.routing.tiers) - 1, asked + (rule.up or 0))


_TABLES: dict[int, tuple[Routing, RoutingTable]] = {}


def route(routing: Routing, call: RouteInput) -> RouteChoice | None:
    """``RoutingTable(routing).route(call)``, with the table kept for the next call of the same routing."""
    held = _TABLES.get(id(routing))
    if held is None or held[0] is not routing:
        if len(_TABLES) > 64:
            _TABLES.clear()
        held = (routing, RoutingTable(routing))
        _TABLES[id(routing)] = held
    return held[1].route(call)
