"""The pure decision core: thresholds, actions, model groups, hierarchy, periods, reservations."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenmeter.enforcer.decision import (
    CheckRequest,
    Usage,
    UsageSnapshot,
    decide,
    period_bounds,
    reservation_for,
)
from tokenmeter.enforcer.policy import Policy, parse_policy

SHANGHAI = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 11, 18, 6, 0, tzinfo=UTC)  # Wednesday 14:00 in Shanghai

POLICY = parse_policy("""
model_groups:
  remote-paid: ["gpt-*"]
routes:
  gpt-4o: gpt-4o-mini
  gpt-4o-mini: qwen2.5-7b-instruct
budgets:
  - name: paid
    scope: department
    models: remote-paid
    limit: {cost: 100, currency: CNY}
    warn_at: [0.5, 0.8]
    action: downgrade
  - name: users
    scope: user
    period: day
    limit: {tokens: 1000}
    action: deny
    exempt: [root]
    overrides:
      vip: {tokens: 5000}
  - name: research
    scope: department
    subject: 研发部
    limit: {tokens: 10000}
    action: degrade
""")


def request(model: str = "gpt-4o", user: str = "alice", department: str = "sales", tokens: int = 10) -> CheckRequest:
    return CheckRequest(user=user, department=department, app="kb", model=model, input_tokens=tokens,
                        max_output_tokens=0)  # fmt: skip


def snapshot(policy: Policy = POLICY, now: datetime = NOW, **used: Usage) -> UsageSnapshot:
    """Usage keyed 'budget__subject' -> Usage, stamped with each budget's current period."""
    starts = {b.name: period_bounds(b.period, now, policy.zone)[0] for b in policy.budgets}
    keyed = {tuple(key.split("__", 1)): value for key, value in used.items()}
    return UsageSnapshot(used=keyed, period_starts=starts)  # type: ignore[arg-type]


def cny(amount: str) -> Usage:
    return Usage(cost={"CNY": Decimal(amount)})


def test_allow_when_everything_has_room() -> None:
    decision = decide(POLICY, snapshot(), {}, request(), NOW)
    assert (decision.action, decision.effective_model, decision.budget) == ("allow", "gpt-4o", None)


def test_warn_names_the_highest_threshold_crossed() -> None:
    decision = decide(POLICY, snapshot(paid__sales=cny("85")), {}, request(), NOW)
    assert (decision.action, decision.budget, decision.threshold) == ("warn", "paid", 0.8)
    assert decision.used_cost == Decimal(85) and decision.limit_cost == Decimal(100) and decision.currency == "CNY"
    assert decide(POLICY, snapshot(paid__sales=cny("55")), {}, request(), NOW).threshold == 0.5
    assert decide(POLICY, snapshot(paid__sales=cny("45")), {}, request(), NOW).action == "allow"


def test_downgrade_follows_the_route_chain_until_a_budget_allows() -> None:
    decision = decide(POLICY, snapshot(paid__sales=cny("100")), {}, request(), NOW)
    # gpt-4o-mini is still remote-paid: the chain goes on to the local model
    assert (decision.action, decision.effective_model, decision.budget) == ("downgrade", "qwen2.5-7b-instruct", "paid")
    assert decision.requested_model == "gpt-4o" and "downgraded to 'qwen2.5-7b-instruct'" in decision.reason


def test_a_paid_budget_never_blocks_a_local_model() -> None:
    decision = decide(POLICY, snapshot(paid__sales=cny("1000")), {}, request(model="qwen2.5-7b-instruct"), NOW)
    assert decision.action == "allow"


def test_downgrade_without_a_route_uses_the_fallback() -> None:
    decision = decide(POLICY, snapshot(paid__sales=cny("100")), {}, request(model="gpt-3.5-turbo"), NOW)
    assert decision.action == "deny" and "no cheaper model" in decision.reason


def test_the_most_restrictive_budget_wins() -> None:
    used = {"paid__sales": cny("100"), "users__alice": Usage(tokens=1000)}
    decision = decide(POLICY, snapshot(**used), {}, request(), NOW)
    assert (decision.action, decision.budget) == ("deny", "users")
    research = {"research__研发部": Usage(tokens=10_000), "paid__研发部": cny("100")}
    decision = decide(POLICY, snapshot(**research), {}, request(department="研发部"), NOW)
    assert (decision.action, decision.budget) == ("degrade", "research")


def test_exemptions_and_overrides() -> None:
    assert decide(POLICY, snapshot(users__root=Usage(tokens=99_999)), {}, request(user="root"), NOW).action == "allow"
    assert decide(POLICY, snapshot(users__vip=Usage(tokens=3000)), {}, request(user="vip"), NOW).action == "allow"
    decision = decide(POLICY, snapshot(users__vip=Usage(tokens=5000)), {}, request(user="vip"), NOW)
    assert (decision.action, decision.limit_tokens) == ("deny", 5000)


def test_a_budget_for_one_department_leaves_the_others_alone() -> None:
    used = {"research__研发部": Usage(tokens=20_000)}
    assert decide(POLICY, snapshot(**used), {}, request(department="sales", model="qwen2.5-7b-instruct"),
                  NOW).action == "allow"  # fmt: skip


def test_periods_are_local_calendar_periods() -> None:
    assert period_bounds("month", NOW, SHANGHAI) == (datetime(2026, 10, 31, 16, tzinfo=UTC),
                                                     datetime(2026, 11, 30, 16, tzinfo=UTC))  # fmt: skip
    assert period_bounds("week", NOW, SHANGHAI)[0] == datetime(2026, 11, 15, 16, tzinfo=UTC)  # Monday 00:00 local
    assert period_bounds("day", datetime(2026, 11, 18, 16, 30, tzinfo=UTC), SHANGHAI)[0] == datetime(
        2026, 11, 18, 16, tzinfo=UTC)  # 00:30 local on the 19th  # fmt: skip


def test_rollover_is_exact_at_the_boundary() -> None:
    """A day budget exhausted at 23:59:59 local is fresh at 00:00:00, before any new snapshot."""
    midnight = datetime(2026, 11, 18, 16, 0, tzinfo=UTC)  # 2026-11-19 00:00 in Shanghai
    before = midnight - timedelta(seconds=1)
    stale = snapshot(now=before, users__alice=Usage(tokens=1000))
    assert decide(POLICY, stale, {}, request(model="qwen2.5-7b-instruct"), before).action == "deny"
    decision = decide(POLICY, stale, {}, request(model="qwen2.5-7b-instruct"), midnight)
    assert decision.action == "allow"


def test_resets_at_is_the_end_of_the_budget_period() -> None:
    decision = decide(POLICY, snapshot(users__alice=Usage(tokens=1000)), {}, request(), NOW)
    assert decision.resets_at == datetime(2026, 11, 18, 16, tzinfo=UTC)


def test_unattributed_calls_count_against_no_department_or_user() -> None:
    decision = decide(POLICY, snapshot(paid__=cny("1000")), {}, request(user="", department=""), NOW)
    assert decision.action == "allow"


def test_reservations_count_like_usage_and_deny_or_degrade_reserve_nothing() -> None:
    reserved = {("users", "alice"): Usage(tokens=995)}
    assert decide(POLICY, snapshot(users__alice=Usage(tokens=5)), reserved, request(), NOW).action == "deny"
    allowed = decide(POLICY, snapshot(), {}, request(tokens=40), NOW)
    assert reservation_for(POLICY, request(tokens=40), allowed, NOW) == {
        ("users", "alice"): Usage(tokens=40),
        ("paid", "sales"): Usage(tokens=40),
    }
    denied = decide(POLICY, snapshot(users__alice=Usage(tokens=1000)), {}, request(), NOW)
    assert reservation_for(POLICY, request(), denied, NOW) == {}


@settings(max_examples=300, deadline=None)
@given(room=st.integers(1, 50_000), estimate=st.integers(1, 2_000), callers=st.integers(1, 200))
def test_reservations_bound_the_overshoot_to_one_estimate(room: int, estimate: int, callers: int) -> None:
    """Checks one after another (as a replica's ledger serialises them), each reserving what it was allowed:
    total admitted stays under limit + one estimate, and every check that found room was admitted."""
    policy = parse_policy(f"budgets:\n  - {{name: b, scope: user, period: day, limit: {{tokens: {room}}}}}\n")
    reserved: dict = {}
    admitted = 0
    for _ in range(callers):
        call = CheckRequest(user="u", department="d", app="a", model="m", input_tokens=estimate, max_output_tokens=0)
        decision = decide(policy, snapshot(policy=policy), reserved, call, NOW)
        if decision.action == "deny":
            assert admitted >= room
            continue
        admitted += estimate
        for key, usage in reservation_for(policy, call, decision, NOW).items():
            reserved[key] = reserved.get(key, Usage()).plus(usage)
    assert admitted < room + estimate
    assert admitted >= min(room, callers * estimate)


@settings(max_examples=300, deadline=None)
@given(
    paid=st.decimals(0, 300, places=2),
    user_tokens=st.integers(0, 3000),
    extra=st.integers(0, 3000),
    model=st.sampled_from(["gpt-4o", "gpt-4o-mini", "gpt-3.5-turbo", "qwen2.5-7b-instruct"]),
)
def test_more_usage_never_gives_a_milder_decision(paid: Decimal, user_tokens: int, extra: int, model: str) -> None:
    order = ["allow", "warn", "downgrade", "degrade", "deny"]
    less = decide(POLICY, snapshot(paid__sales=cny(str(paid)), users__alice=Usage(tokens=user_tokens)), {},
                  request(model=model), NOW)  # fmt: skip
    more = decide(POLICY, snapshot(paid__sales=cny(str(paid + extra)), users__alice=Usage(tokens=user_tokens + extra)),
                  {}, request(model=model), NOW)  # fmt: skip
    assert order.index(more.action) >= order.index(less.action)


@pytest.mark.parametrize("period", ["day", "week", "month"])
def test_every_instant_falls_in_exactly_one_period(period: str) -> None:
    moment = datetime(2026, 12, 31, 15, 59, 59, tzinfo=UTC)  # 23:59:59 local on new year's eve
    start, end = period_bounds(period, moment, SHANGHAI)  # type: ignore[arg-type]
    assert start <= moment < end
    following_start, _ = period_bounds(period, end, SHANGHAI)  # type: ignore[arg-type]
    assert following_start == end
