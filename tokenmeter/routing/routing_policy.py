"""The policy's ``routing:`` section: model tiers, intents, and the rules that map a call to a tier.

Read strictly like the rest of the policy file (docs/routing.md has the format)::

    routing:
      tiers:                       # cheapest first: the only models a rule may choose
        - {name: small,  model: qwen2.5-7b-instruct}
        - {name: remote, model: deepseek-chat}
      critical_apps: [legal-qa]    # never routed to a cheaper tier than asked
      intents:
        - {name: lookup, keywords: ["是什么", "what is"]}
      rules:                       # first match wins
        - name: short-lookup
          when: {intent: [lookup], question_chars: {max: 80}, top_score: {min: 0.6}}
          tier: small
        - name: brownout
          when: {budget_left: {max: 0.2}}
          down: 1
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tokenmeter.routing.intent_rules import INTENT_NAME_PATTERN, IntentRule

ProblemList = list[tuple[tuple[int | str, ...], str]]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Range(_Strict):
    """Both ends inclusive, either optional."""

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.min is None and self.max is None:
            raise ValueError("give min:, max: or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max})")
        return self


class BudgetLeft(Range):
    """The share of a budget left before this call: ``budget:`` names one, else the smallest of the call's."""

    budget: str | None = None


class RouteConditions(_Strict):
    """All must hold; a condition on something the call did not report does not hold."""

    apps: tuple[str, ...] | None = None  # globs
    app_routes: tuple[str, ...] | None = None  # globs over the app's HTTP route
    models: tuple[str, ...] | None = None  # globs over the requested model
    departments: tuple[str, ...] | None = None
    intent: tuple[str, ...] | None = None
    question_chars: Range | None = None
    input_tokens: Range | None = None
    depth: Range | None = None
    passages: Range | None = None
    top_score: Range | None = None
    budget_left: BudgetLeft | None = None


class Tier(_Strict):
    name: str = Field(pattern=INTENT_NAME_PATTERN, max_length=64)
    model: str = Field(min_length=1)


class RouteRule(_Strict):
    name: str = Field(pattern=INTENT_NAME_PATTERN, max_length=64)
    when: RouteConditions = Field(default_factory=RouteConditions)
    tier: str | None = None  # this tier
    down: int | None = Field(default=None, ge=1)  # or this many tiers cheaper than the one asked for
    up: int | None = Field(default=None, ge=1)  # or dearer

    @model_validator(mode="after")
    def _one_target(self) -> RouteRule:
        if sum(target is not None for target in (self.tier, self.down, self.up)) != 1:
            raise ValueError("give exactly one of tier:, down: or up:")
        return self


class Routing(_Strict):
    tiers: tuple[Tier, ...] = Field(min_length=1)
    apps: tuple[str, ...] = ("*",)  # globs: whose calls are routed
    critical_apps: tuple[str, ...] = ()  # globs: never routed down
    intents: tuple[IntentRule, ...] = ()
    classifier: str | None = None  # a trained intent classifier (JSON), relative to the policy file
    rules: tuple[RouteRule, ...] = ()


def routing_problems(routing: Routing, budget_names: set[str], classifier_labels: tuple[str, ...] = ()
                     ) -> ProblemList:  # fmt: skip
    """Names used twice, tiers and budgets that are not defined, intents no one can name."""
    problems: ProblemList = []
    problems += _duplicates([tier.name for tier in routing.tiers], ("routing", "tiers"), "name", "tier names")
    problems += _duplicates([tier.model for tier in routing.tiers], ("routing", "tiers"), "model", "tier models")
    problems += _duplicates([rule.name for rule in routing.rules], ("routing", "rules"), "name", "rule names")
    problems += _duplicates([intent.name for intent in routing.intents], ("routing", "intents"), "name",
                            "intent names")  # fmt: skip
    tiers = {tier.name for tier in routing.tiers}
    known_intents = {intent.name for intent in routing.intents} | set(classifier_labels)
    for index, rule in enumerate(routing.rules):
        where = ("routing", "rules", index)
        if rule.tier is not None and rule.tier not in tiers:
            problems.append(((*where, "tier"), f"tier {rule.tier!r} is not one of routing.tiers: {sorted(tiers)}"))
        for name in rule.when.intent or ():
            if name not in known_intents:
                problems.append(((*where, "when", "intent"), (
                    f"intent {name!r} is neither in routing.intents nor a label of the classifier "
                    f"(known: {sorted(known_intents)})")))  # fmt: skip
        left = rule.when.budget_left
        if left is not None and left.budget is not None and left.budget not in budget_names:
            problems.append(((*where, "when", "budget_left", "budget"), f"budget {left.budget!r} is not defined"))
    return problems


def _duplicates(names: list[str], where: tuple[str, ...], field: str, what: str) -> ProblemList:
    seen: set[str] = set()
    problems: ProblemList = []
    for index, name in enumerate(names):
        if name in seen:
            problems.append(((*where, index, field), f"{what} must be unique; {name!r} is used twice"))
        seen.add(name)
    return problems


def routing_summary(routing: Routing) -> dict[str, Any]:
    """Tiers and rules in a few words each (``/v1/policy`` and ``tokenmeter routing check``)."""
    return {
        "tiers": [f"{tier.name}: {tier.model}" for tier in routing.tiers],
        "rules": [f"{rule.name} -> {_target(rule)}" for rule in routing.rules],
        "critical_apps": list(routing.critical_apps),
    }


def _target(rule: RouteRule) -> str:
    if rule.tier is not None:
        return f"tier {rule.tier}"
    return f"{rule.down} tier(s) down" if rule.down is not None else f"{rule.up} tier(s) up"
