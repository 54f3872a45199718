"""The policy's routing section is read strictly: every problem names its line and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tokenmeter.enforcer.policy import PolicyError, load_policy, parse_policy

BASE = """budgets:
  - {name: dept, scope: department, limit: {tokens: 1000}}
routing:
  tiers:
    - {name: small, model: qwen2.5-7b-instruct}
    - {name: remote, model: deepseek-chat}
  intents:
    - {name: lookup, keywords: ["是什么"]}
  rules:
"""


@pytest.mark.parametrize(
    ("rules", "problem"),
    [
        ("    - {name: r, tier: medium}\n", "line 10, routing.rules[0].tier: tier 'medium' is not one of"),
        ("    - {name: r, tier: small, down: 1}\n", "routing.rules[0]: give exactly one of tier:, down: or up:"),
        ("    - {name: r}\n", "give exactly one of tier:, down: or up:"),
        ("    - {name: r, down: 0}\n", "routing.rules[0].down: Input should be greater than or equal to 1"),
        (
            "    - {name: r, tier: small, when: {intent: [nope]}}\n",
            "routing.rules[0].when.intent: intent 'nope' is neither in routing.intents nor a label of the classifier",
        ),
        (
            "    - {name: r, tier: small, when: {budget_left: {max: 0.2, budget: nope}}}\n",
            "routing.rules[0].when.budget_left.budget: budget 'nope' is not defined",
        ),
        ("    - {name: r, tier: small, when: {question_chars: {min: 9, max: 3}}}\n", "min (9.0) is above max (3.0)"),
        ("    - {name: r, tier: small, when: {question_chars: {}}}\n", "give min:, max: or both"),
        ("    - {name: r, tier: small, when: {colour: blue}}\n", "routing.rules[0].when.colour: Extra inputs"),
        (
            "    - {name: r, tier: small}\n    - {name: r, tier: remote}\n",
            "line 11, routing.rules[1].name: rule names must be unique; 'r' is used twice",
        ),
    ],
)
def test_rule_problems_name_line_and_field(rules: str, problem: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(BASE + rules, "policy.yaml")
    assert problem in str(caught.value)


def test_tier_names_and_models_are_unique_and_intents_valid() -> None:
    text = BASE.replace("name: remote, model: deepseek-chat", "name: small, model: qwen2.5-7b-instruct") + "    []\n"
    with pytest.raises(PolicyError) as caught:
        parse_policy(text.replace("  rules:\n    []\n", "  rules: []\n"), "policy.yaml")
    assert "tier names must be unique" in str(caught.value) and "tier models must be unique" in str(caught.value)
    bad_intent = BASE.replace('keywords: ["是什么"]', 'patterns: ["(unclosed"]') + "    []\n"
    with pytest.raises(PolicyError, match="is not a regular expression"):
        parse_policy(bad_intent.replace("  rules:\n    []\n", "  rules: []\n"))


def test_the_classifier_is_read_relative_to_the_policy_file(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(BASE + "    - {name: r, tier: small, when: {intent: [billing]}}\n"
                      "  classifier: intents.json\n", encoding="utf-8")  # fmt: skip
    with pytest.raises(PolicyError) as caught:
        load_policy(policy)
    assert "routing.classifier:" in str(caught.value) and "intents.json: cannot read the intent classifier" in str(
        caught.value)  # fmt: skip
    (tmp_path / "intents.json").write_text('{"format": "something else"}', encoding="utf-8")
    with pytest.raises(PolicyError, match="not an intent classifier"):
        load_policy(policy)
    classifier = {"format": "tokenmeter-intent-classifier/1", "labels": ["billing", "other"], "analyzer": "char_wb",
                  "ngram_range": [1, 2], "lowercase": True, "vocabulary": {"a": 0, "b": 1}, "idf": [1.0, 1.0],
                  "coef": [[1.0, -1.0]], "intercept": [0.0], "min_confidence": 0.5}  # fmt: skip
    (tmp_path / "intents.json").write_text(json.dumps(classifier), encoding="utf-8")
    loaded = load_policy(policy)  # the rule's intent is one of the classifier's labels
    assert loaded.routing_document["classifier"] == classifier
    assert loaded.routing_table is not None


def test_the_example_in_docs_routing_md_is_a_valid_policy(tmp_path: Path) -> None:
    import re

    text = (Path(__file__).resolve().parents[1] / "docs" / "routing.md").read_text(encoding="utf-8")
    block = re.search(r"```yaml\n(.*?)```", text, re.DOTALL)
    assert block is not None
    example = block.group(1).replace("  classifier: intents.json", "  # classifier: intents.json")
    policy = parse_policy(example, "docs/routing.md")
    assert policy.routing is not None and [rule.name for rule in policy.routing.rules] == [
        "short-lookup", "long-reasoning", "brownout"]  # fmt: skip
