"""Wallets in the policy file: budgets drawing on them, approvals, and the errors a broken file gets."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tokenmeter.enforcer.policy import PolicyError, parse_policy

WALLETS = """\
version: 1
timezone: Asia/Shanghai
wallets:
  - name: dept-credits
    scope: department
    rates: {CNY: 10, USD: 72}
    yearly_grant: 100000
    grant_overrides: {研发部: 250000}
    approvals:
      approvers: ["dept-heads-{subject}"]
      second_level_above: 50000
      second_level_approvers: [finance]
budgets:
  - name: dept-wallet
    wallet: dept-credits
    action: degrade
"""


def test_a_budget_on_a_wallet_takes_its_scope_and_counts_per_year() -> None:
    policy = parse_policy(WALLETS)
    budget = policy.budgets[0]
    assert (budget.scope, budget.subject, budget.period, budget.limit) == ("department", None, "year", None)
    wallet = policy.wallets_by_name["dept-credits"]
    assert policy.limit_for(budget, "研发部").cost == Decimal(250000)
    assert policy.limit_for(budget, "销售部").cost == Decimal(100000)
    assert policy.limit_for(budget, "销售部").currency == wallet.cost_key == "credits (dept-credits)"
    assert policy.has_cost_limits  # checks price their calls, so the wallet can be charged for them
    assert wallet.account("研发部") == "dept-credits/研发部"


def test_approvals_name_groups_per_subject_and_a_second_level_above_an_amount() -> None:
    approvals = parse_policy(WALLETS).wallets[0].approvals
    assert approvals is not None
    assert approvals.groups_for("研发部") == ("dept-heads-研发部",)
    assert approvals.groups_for("研发部", second_level=True) == ("finance",)
    assert (approvals.levels_for(Decimal(50000)), approvals.levels_for(Decimal("50000.01"))) == (1, 2)
    assert approvals.expire_after_days == 7


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("    wallet: dept-credits\n", "    wallet: dept-credit\n"),
         "line 15, budgets[0].wallet: wallet 'dept-credit' is not defined in wallets (defined: dept-credits)"),
        (("    wallet: dept-credits\n", "    wallet: dept-credits\n    limit: {tokens: 5}\n"),
         "budgets[0]: give a limit: or a wallet: (not both)"),
        (("    wallet: dept-credits\n", "    wallet: dept-credits\n    period: month\n"),
         "leave out scope, subject and period"),
        (("    rates: {CNY: 10, USD: 72}\n", ""), "a wallet counting in credits needs rates"),
        (("      second_level_approvers: [finance]\n", ""),
         "second_level_above and second_level_approvers go together"),
        (("  - name: dept-credits\n", "  - name: dept credits\n"), "wallets[0].name: String should match pattern"),
    ],
)  # fmt: skip
def test_a_broken_wallet_is_refused_with_its_line_and_field(change: tuple[str, str], message: str) -> None:
    with pytest.raises(PolicyError) as error:
        parse_policy(WALLETS.replace(*change), "policy.yaml")
    assert message in str(error.value)


def test_a_yearly_token_budget_needs_no_wallet() -> None:
    text = "budgets:\n  - {name: year, scope: user, period: year, limit: {tokens: 1000000}}\n"
    assert parse_policy(text).budgets[0].period == "year"
