"""The policy file: a full example loads; every broken file is refused with its line and field."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path

import pytest

from tokenmeter.enforcer.policy import PolicyError, load_policy, parse_policy

EXAMPLE = """\
version: 1
timezone: Asia/Shanghai
defaults:
  warn_at: [0.8]
model_groups:
  remote-paid: ["gpt-*", "deepseek-chat", "qwen-max*"]
  local: ["qwen2.5-*-instruct", "chatglm3-6b"]
routes:
  gpt-4o: gpt-4o-mini
  gpt-4o-mini: qwen2.5-7b-instruct
budgets:
  - name: org-paid
    scope: organisation
    period: month
    models: remote-paid
    limit: {cost: 50000, currency: CNY}
    warn_at: [0.8, 0.95]
    action: downgrade
  - name: research
    scope: department
    subject: 研发部
    period: week
    limit: {tokens: 100000000}
    action: degrade
    exempt: [alice]
  - name: per-user
    scope: user
    period: day
    limit: {tokens: 2000000}
    action: deny
    overrides:
      "o'brien": {tokens: 5000000}
"""


def test_the_example_loads() -> None:
    policy = parse_policy(EXAMPLE)
    assert [b.name for b in policy.budgets] == ["org-paid", "research", "per-user"]
    org, research, per_user = policy.budgets
    assert org.limit.cost == Decimal(50000) and org.limit.currency == "CNY"
    assert policy.warn_thresholds(org) == (0.8, 0.95) and policy.warn_thresholds(research) == (0.8,)
    assert research.exempt == ("alice",) and research.period == "week"
    assert per_user.overrides["o'brien"].tokens == 5_000_000
    assert policy.in_group("gpt-4o-mini", "remote-paid") and not policy.in_group("qwen2.5-7b-instruct", "remote-paid")
    assert policy.zone.key == "Asia/Shanghai"


@pytest.mark.parametrize("text", ["", "\n  \n", "# budgets to come\n# more\n"])
def test_an_empty_or_comments_only_file_is_refused(tmp_path: Path, text: str) -> None:
    """It would allow every call; read while a file is rewritten in place, it switched quotas off."""
    path = tmp_path / "policy.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(PolicyError) as error:
        load_policy(path)
    assert str(error.value).startswith(f"{path} is empty (or only comments), and an empty policy would allow")
    assert "`budgets: []` to allow every call on purpose" in str(error.value)


def test_a_file_cut_off_before_its_budgets_is_refused_and_none_on_purpose_is_allowed() -> None:
    cut = EXAMPLE[: EXAMPLE.index("budgets:")]
    assert "routes:" in cut
    with pytest.raises(PolicyError, match=r"^policy.yaml: no budgets: list .*`budgets: \[\]` to allow every call"):
        parse_policy(cut, "policy.yaml")
    assert parse_policy("budgets: []\n").budgets == ()


def test_every_problem_is_shown_with_its_line_and_field() -> None:
    broken = (
        EXAMPLE.replace("limit: {tokens: 100000000}", "limit: {tokens: -5}")
        .replace("    action: degrade", "    action: refuse")
        .replace("timezone: Asia/Shanghai", "timezone: Mars/Olympus")
        .replace("    period: day", "    period: dai")
    )
    with pytest.raises(PolicyError) as error:
        parse_policy(broken, "policy.yaml")
    lines = str(error.value).splitlines()
    assert lines[0] == "policy.yaml: 4 problems:"
    assert lines[1] == "  line 2, timezone: unknown time zone 'Mars/Olympus'; use an IANA name such as Asia/Shanghai"
    assert lines[2] == "  line 23, budgets[1].limit.tokens: Input should be greater than 0"
    assert lines[3].startswith("  line 24, budgets[1].action: Input should be 'downgrade', 'degrade' or 'deny'")
    assert lines[4].startswith("  line 28, budgets[2].period: Input should be 'day', 'week', 'month' or 'year'")
    assert "more problems" not in str(error.value)


def test_every_reference_problem_is_shown() -> None:
    broken = (
        EXAMPLE.replace("    models: remote-paid", "    models: paid")
        .replace("  - name: per-user", "  - name: research")
        .replace("  gpt-4o-mini: qwen2.5-7b-instruct", "  gpt-4o-mini: gpt-4o")
    )
    with pytest.raises(PolicyError) as error:
        parse_policy(broken, "policy.yaml")
    assert str(error.value).splitlines() == [
        "policy.yaml: 3 problems:",
        "  line 9, routes.gpt-4o: routes loop: gpt-4o -> gpt-4o-mini -> gpt-4o",
        "  line 15, budgets[0].models: model group 'paid' is not defined in model_groups (defined: local, remote-paid)",
        "  line 26, budgets[2].name: budget names must be unique; 'research' is used twice",
    ]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("limit: {tokens: 100000000}", "limit: {tokens: -5}"),
         "line 23, budgets[1].limit.tokens: Input should be greater than 0"),
        (("    action: degrade", "    action: refuse"), "line 24, budgets[1].action"),
        (("timezone: Asia/Shanghai", "timezone: Mars/Olympus"), "line 2, timezone: unknown time zone 'Mars/Olympus'"),
        (("    warn_at: [0.8, 0.95]", "    warn_at: [0.8, 1.5]"),
         "line 17, budgets[0].warn_at: warning thresholds are ratios"),
        (("limit: {cost: 50000, currency: CNY}", "limit: {cost: 50000}"),
         "line 16, budgets[0].limit: cost needs a currency"),
        (("    models: remote-paid", "    models: paid"),
         "line 15, budgets[0].models: model group 'paid' is not defined in model_groups"),
        (("  gpt-4o-mini: qwen2.5-7b-instruct", "  gpt-4o-mini: gpt-4o"),
         "line 9, routes.gpt-4o: routes loop: gpt-4o -> gpt-4o-mini -> gpt-4o"),
        (("  - name: per-user", "  - name: research"),
         "line 26, budgets[2].name: budget names must be unique; 'research' is used twice"),
        (("    period: day", "    period: dai\n    colour: red"), "line 28, budgets[2].period"),
        (("    scope: organisation", "    scope: organisation\n    subject: x"),
         "an organisation budget has no subject"),
    ],
)  # fmt: skip
def test_broken_files_name_line_and_field(change: tuple[str, str], expected: str) -> None:
    old, new = change
    assert old in EXAMPLE
    with pytest.raises(PolicyError) as error:
        parse_policy(EXAMPLE.replace(old, new, 1), "policy.yaml")
    assert expected in str(error.value)
    assert str(error.value).startswith("policy.yaml")


def test_unknown_fields_are_refused_with_their_line() -> None:
    with pytest.raises(PolicyError, match=r"line 31, budgets\[2\]\.colour: Extra inputs are not permitted"):
        parse_policy(EXAMPLE.replace("    action: deny", "    action: deny\n    colour: red"), "policy.yaml")


def test_yaml_syntax_errors_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"policy.yaml line 3: not valid YAML"):
        parse_policy("budgets:\n  - name: x\n  scope: [", "policy.yaml")
    with pytest.raises(PolicyError, match="must be a mapping"):
        parse_policy("- just a list", "policy.yaml")
    with pytest.raises(PolicyError, match="cannot read the policy file"):
        load_policy(tmp_path / "missing.yaml")


def test_the_docs_example_policy_loads_and_decides() -> None:
    from datetime import UTC, datetime

    from tokenmeter.enforcer.decision import CheckRequest, UsageSnapshot, decide

    text = (Path(__file__).resolve().parents[1] / "docs" / "quotas.md").read_text(encoding="utf-8")
    [block] = [b for b in re.findall(r"```yaml\n(.*?)```", text, re.DOTALL) if "budgets:" in b]
    policy = parse_policy(block, "docs/quotas.md")
    assert len(policy.budgets) == 5 and {b.subject for b in policy.budgets} >= {"研发部", "销售部", "客服部"}
    call = CheckRequest(user="li.na", department="销售部", app="kb", model="gpt-4o", input_tokens=100,
                        max_output_tokens=100)  # fmt: skip
    assert decide(policy, UsageSnapshot(), {}, call, datetime(2026, 11, 28, tzinfo=UTC)).action == "allow"
