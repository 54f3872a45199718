"""Transparent intents (docs/intents.md): keywords match as substrings ignoring case, patterns by re.search,
the first matching intent wins, and a rule that could never work (or would match everything) is refused."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tokenmeter.routing.intent_rules import IntentRule, first_intent
from tokenmeter.routing.intents import CLASSIFIER, IntentClassifier

REASONING = IntentRule(name="reasoning", patterns=("为什么|如何|比较|分析", r"(?i)\bwhy\b", "step by step"))
LOOKUP = IntentRule(name="lookup", keywords=("是什么", "多少", "What is", "VPN"))
CHITCHAT = IntentRule(name="chitchat", keywords=("你好", "谢谢", "hello"), patterns=(r"^\s*(hi|thanks)\b",))
RULES = (REASONING, LOOKUP, CHITCHAT)


@pytest.mark.parametrize(
    ("question", "intent"),
    [
        ("年假有多少天？", "lookup"),
        ("WHAT IS the vpn address?", "lookup"),  # keywords ignore case both ways
        ("what is the vpn address?", "lookup"),
        ("Straße vpn", "lookup"),
        ("为什么成本上升了？", "reasoning"),
        ("Why is it slow?", "reasoning"),
        ("explain it STEP BY STEP", None),  # a pattern without (?i) is case-sensitive
        ("explain it step by step", "reasoning"),
        ("somewhy", None),  # \b: not inside a word
        ("hi there", "chitchat"),
        ("oh hi", None),  # anchored pattern
        ("你好", "chitchat"),
        ("Hello!", "chitchat"),
        ("年假政策", None),
        ("", None),
    ],
)
def test_keywords_and_patterns(question: str, intent: str | None) -> None:
    assert first_intent(RULES, question) == intent


def test_keywords_casefold_rather_than_lower() -> None:
    rule = IntentRule(name="street", keywords=("STRASSE",))
    assert rule.matches("die straße")  # casefold("ß") == "ss"
    assert rule.matches("Die Strasse")


def test_the_first_match_wins() -> None:
    question = "比较一下 VPN 是什么"  # both reasoning (比较) and lookup (是什么, VPN)
    assert first_intent(RULES, question) == "reasoning"
    assert first_intent((LOOKUP, REASONING), question) == "lookup"
    assert first_intent((), question) is None


def test_explain_names_the_rule_and_without_a_classifier_none() -> None:
    classifier = IntentClassifier.from_routing_document(
        {"intents": [rule.model_dump() for rule in RULES], "classifier": None}
    )
    assert classifier.explain("比较两个方案") == ("reasoning", "rule reasoning")
    assert classifier.classify("VPN 版本是多少") == "lookup"
    assert classifier.explain("年假政策") is None
    assert CLASSIFIER == "classifier"


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        ({"name": "lookup", "keywords": ["是什么", " "]}, "an empty keyword would match every question"),
        ({"name": "lookup", "keywords": [""]}, "an empty keyword would match every question"),
        ({"name": "lookup", "patterns": ["(unclosed"]}, "is not a regular expression"),
        ({"name": "lookup"}, "needs keywords: or patterns:"),
        ({"name": "lookup", "keywords": [], "patterns": []}, "needs keywords: or patterns:"),
        ({"name": "has space", "keywords": ["x"]}, "String should match pattern"),
        ({"name": "lookup", "keywords": ["x"], "examples": ["y"]}, "Extra inputs are not permitted"),
    ],
)
def test_rules_that_cannot_work_are_refused(rule: dict[str, object], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem.replace("(", r"\(")):
        IntentRule.model_validate(rule)
