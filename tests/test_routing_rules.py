"""The routing rules' decisions on a table of cases (docs/routing.md): each condition, first match wins,
absolute and relative targets, critical apps never routed down, and no rule ever choosing a model outside
the policy's tiers."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenmeter.enforcer.policy import parse_policy
from tokenmeter.quota_wire import RouteFeatures
from tokenmeter.routing.routing_policy import Routing
from tokenmeter.routing.rules import RouteInput, RoutingTable, route

# The design's example: a short factual question with a strong retrieval hit goes to the local 7B, a long
# multi-step question to the remote model, and below 20 % of the department's budget left everything goes
# one tier cheaper, except the critical apps.
POLICY = """
budgets:
  - {name: rd-month, scope: department, subject: 研发部, limit: {tokens: 1000000}}
  - {name: org-month, scope: organisation, limit: {tokens: 100000000}}
routing:
  tiers:
    - {name: small, model: qwen2.5-7b-instruct}
    - {name: large, model: qwen2.5-72b-instruct}
    - {name: remote, model: deepseek-chat}
  apps: ["kb-*", "legal-qa"]
  critical_apps: [legal-qa]
  intents:
    - {name: reasoning, patterns: ["为什么|如何|比较|分析"]}
    - {name: lookup, keywords: ["是什么", "多少"]}
  rules:
    - name: short-lookup
      when: {intent: [lookup], question_chars: {max: 80}, passages: {min: 1}, top_score: {min: 0.6}}
      tier: small
    - name: long-reasoning
      when: {intent: [reasoning], input_tokens: {min: 2000}}
      tier: remote
    - name: rd-brownout
      when: {budget_left: {max: 0.2, budget: rd-month}}
      down: 1
    - name: kb-routes
      when: {app_routes: ["/chat/kb_*"], departments: [销售部], depth: {min: 3}}
      up: 1
"""
ROUTING = parse_policy(POLICY).routing
assert ROUTING is not None
TIER_MODELS = {tier.model for tier in ROUTING.tiers}


def _call(model: str = "qwen2.5-72b-instruct", *, app: str = "kb-assistant", department: str = "研发部",
          input_tokens: int = 500, left: dict[str | None, float] | None = None, **features: Any
          ) -> RouteInput:  # fmt: skip
    shares = left or {}
    return RouteInput(app, department, model, input_tokens, RouteFeatures(**features), shares.get)


LOOKUP = {"intent": "lookup", "question_chars": 20, "passages": 3, "top_score": 0.8}
CASES = [
    # (what, call, expected (rule, model) or None)
    ("short lookup with a strong hit -> the local 7B", _call(**LOOKUP), ("short-lookup", "qwen2.5-7b-instruct")),
    ("a weak retrieval hit is not enough", _call(**{**LOOKUP, "top_score": 0.3}), None),
    (
        "no retrieval reported: the condition does not hold",
        _call(**{**LOOKUP, "passages": None, "top_score": None}),
        None,
    ),
    ("a long question is not a short lookup", _call(**{**LOOKUP, "question_chars": 81}), None),
    (
        "80 characters is still short (max is inclusive)",
        _call(**{**LOOKUP, "question_chars": 80}),
        ("short-lookup", "qwen2.5-7b-instruct"),
    ),
    (
        "long multi-step question -> the remote model",
        _call(intent="reasoning", input_tokens=2500),
        ("long-reasoning", "deepseek-chat"),
    ),
    ("short reasoning stays", _call(intent="reasoning", input_tokens=1999), None),
    ("no intent classified: intent rules do not hold", _call(input_tokens=5000), None),
    (
        "below 20 % of the department's budget left: one tier down",
        _call(left={"rd-month": 0.15}),
        ("rd-brownout", "qwen2.5-7b-instruct"),
    ),
    (
        "20 % left exactly still counts (max inclusive)",
        _call(left={"rd-month": 0.2}),
        ("rd-brownout", "qwen2.5-7b-instruct"),
    ),
    ("plenty left: no brownout", _call(left={"rd-month": 0.5}), None),
    ("another budget's share does not count for a named budget", _call(left={None: 0.1, "org-month": 0.1}), None),
    (
        "one tier down from the cheapest stays on the cheapest (recorded)",
        _call("qwen2.5-7b-instruct", left={"rd-month": 0.1}),
        ("rd-brownout", "qwen2.5-7b-instruct"),
    ),
    ("critical app: never routed down by brownout", _call(app="legal-qa", left={"rd-month": 0.1}), None),
    ("critical app: never routed down by a tier rule", _call(app="legal-qa", **LOOKUP), None),
    (
        "critical app: may be routed up",
        _call(app="legal-qa", intent="reasoning", input_tokens=3000),
        ("long-reasoning", "deepseek-chat"),
    ),
    ("an app routing does not cover", _call(app="hr-bot", **LOOKUP), None),
    ("a model outside the tiers is never routed", _call("gpt-4o", **LOOKUP), None),
    (
        "route, department and depth: one tier up",
        _call(department="销售部", app_route="/chat/kb_chat", depth=3),
        ("kb-routes", "deepseek-chat"),
    ),
    (
        "up from the dearest stays there",
        _call("deepseek-chat", department="销售部", app_route="/chat/kb_chat", depth=4),
        ("kb-routes", "deepseek-chat"),
    ),
    ("route not reported: an app_routes condition does not hold", _call(department="销售部", depth=3), None),
    ("first match wins", _call(**LOOKUP, left={"rd-month": 0.1}), ("short-lookup", "qwen2.5-7b-instruct")),
]


@pytest.mark.parametrize(("what", "call", "expected"), CASES, ids=[case[0] for case in CASES])
def test_rule_decisions(what: str, call: RouteInput, expected: tuple[str, str] | None) -> None:
    choice = route(ROUTING, call)
    assert (None if choice is None else (choice.rule, choice.model)) == expected, what
    if choice is not None:
        assert choice.requested_model == call.model
        assert choice.moved == (choice.model != call.model)
        assert choice.tier == next(tier.name for tier in ROUTING.tiers if tier.model == choice.model)


def test_a_budget_left_without_a_name_is_the_smallest_share_of_the_calls_budgets() -> None:
    routing = parse_policy(POLICY.replace("{max: 0.2, budget: rd-month}", "{max: 0.2}")).routing
    assert routing is not None
    seen: list[str | None] = []

    def left(name: str | None) -> float | None:
        seen.append(name)
        return 0.1 if name is None else None

    choice = RoutingTable(routing).route(RouteInput("kb-x", "研发部", "deepseek-chat", 10, RouteFeatures(), left))
    assert choice is not None and (choice.rule, choice.model) == ("rd-brownout", "qwen2.5-72b-instruct")
    assert seen == [None]  # asked once, for the smallest share


def test_no_budget_applying_means_the_condition_does_not_hold() -> None:
    assert route(ROUTING, _call(left={})) is None


@settings(max_examples=300, deadline=None)
@given(
    model=st.sampled_from([*sorted(TIER_MODELS), "gpt-4o", "qwen-max"]),
    app=st.sampled_from(["kb-assistant", "legal-qa", "hr-bot", "kb-'quoted\""]),
    department=st.sampled_from(["研发部", "销售部", ""]),
    input_tokens=st.integers(0, 10_000),
    intent=st.sampled_from([None, "lookup", "reasoning", "other"]),
    chars=st.integers(0, 500),
    depth=st.integers(0, 6),
    passages=st.one_of(st.none(), st.integers(0, 8)),
    score=st.one_of(st.none(), st.floats(0, 1)),
    app_route=st.sampled_from([None, "/chat/kb_chat", "/chat/chat"]),
    left=st.one_of(st.none(), st.floats(0, 1)),
)
def test_a_rule_only_ever_chooses_a_tier_and_never_routes_a_critical_app_down(
    model: str, app: str, department: str, input_tokens: int, intent: str | None, chars: int, depth: int,
    passages: int | None, score: float | None, app_route: str | None, left: float | None,
) -> None:  # fmt: skip
    features = RouteFeatures(intent=intent, question_chars=chars, depth=depth, passages=passages, top_score=score,
                             app_route=app_route)  # fmt: skip
    choice = route(ROUTING, RouteInput(app, department, model, input_tokens, features, lambda _name: left))
    if choice is None:
        return
    assert model in TIER_MODELS, "a model outside the tiers is never routed"
    assert choice.model in TIER_MODELS
    order = [tier.model for tier in ROUTING.tiers]
    if app == "legal-qa":
        assert order.index(choice.model) >= order.index(model)


def test_an_empty_rule_list_routes_nothing() -> None:
    routing = Routing.model_validate({"tiers": [{"name": "a", "model": "m"}]})
    assert route(routing, _call("m")) is None
