"""The credits core: burn-down order, expiry, rollover, debt, idempotent replay, conversion through prices."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenmeter.credits.burn_down import wallet_balance
from tokenmeter.credits.conversion import WalletUnit, in_wallet_units
from tokenmeter.credits.ledger import LedgerEntry, LedgerError, recorded_once
from tokenmeter.store.usage_queries import CostAmount

WALLET = "department:研发部"
YEAR_START = datetime(2026, 1, 1, tzinfo=UTC)
D = Decimal


def _days(n: float) -> datetime:
    return YEAR_START + timedelta(days=n)


def _grant(entry_id: str, amount: str, start: float, days: float, priority: int = 0, rolls_over: bool = False,
           kind: str = "grant") -> LedgerEntry:  # fmt: skip
    return LedgerEntry(entry_id, WALLET, kind, D(amount), _days(start), "policy", "yearly allowance",  # type: ignore[arg-type]
                       valid_until=_days(start + days), priority=priority, rolls_over=rolls_over)  # fmt: skip


def _charge(entry_id: str, amount: str, day: float) -> LedgerEntry:
    return LedgerEntry(entry_id, WALLET, "charge", D(amount), _days(day), "enforcer", "usage")


def _remaining(entries: list[LedgerEntry], day: float) -> dict[str, Decimal]:
    return {left.entry_id: left.remaining for left in wallet_balance(WALLET, entries, _days(day)).grants}


def test_spending_burns_the_lowest_priority_number_first_then_the_earliest_expiry() -> None:
    entries = [
        _grant("year", "1000", 0, 365, priority=1),
        _grant("bonus-late", "100", 0, 200, priority=0),
        _grant("bonus-early", "100", 0, 100, priority=0),
        _charge("jan", "150", 10),
    ]
    assert _remaining(entries, 11) == {"bonus-late": D(50), "year": D(1000)}
    entries.append(_charge("feb", "80", 40))
    assert _remaining(entries, 41) == {"year": D(970)}


def test_an_unused_rest_expires_unless_it_rolls_over_and_then_only_once() -> None:
    entries = [_grant("kept", "100", 0, 30, rolls_over=True), _grant("lost", "100", 0, 30), _charge("c", "30", 5)]
    before = wallet_balance(WALLET, entries, _days(29))
    assert (before.available, before.expired) == (D(170), D(0))
    # "kept" has the lower expiry tie broken by start then id: it was spent first ("kept" < "lost").
    assert _remaining(entries, 29) == {"kept": D(70), "lost": D(100)}
    after = wallet_balance(WALLET, entries, _days(30))
    assert (after.available, after.expired) == (D(70), D(100))
    (rolled,) = after.grants
    assert rolled.rolled_over and rolled.valid_until == _days(60)
    gone = wallet_balance(WALLET, entries, _days(60))
    assert (gone.available, gone.expired, gone.grants) == (D(0), D(170), ())


def test_usage_past_zero_is_a_recorded_debt_that_the_next_top_up_pays_first() -> None:
    entries = [_grant("year", "100", 0, 365), _charge("c1", "130", 3)]
    broke = wallet_balance(WALLET, entries, _days(4))
    assert (broke.available, broke.debt, broke.spent) == (D(-30), D(30), D(130))
    entries.append(_grant("top-up-1", "50", 5, 30, kind="top_up"))
    paid = wallet_balance(WALLET, entries, _days(6))
    assert (paid.available, paid.debt) == (D(20), D(0))
    assert _remaining(entries, 6) == {"top-up-1": D(20)}


def test_credits_granted_for_later_are_not_usable_yet() -> None:
    entries = [_grant("2026", "100", 0, 365), _grant("2027", "100", 365, 365), _charge("c", "40", 364)]
    assert wallet_balance(WALLET, entries, _days(364)).available == D(60)
    assert wallet_balance(WALLET, entries, _days(365)).available == D(100)  # 2026's rest expired


def test_an_entry_sent_twice_is_recorded_once_and_a_changed_repeat_is_refused() -> None:
    entries = [_grant("year", "100", 0, 365), _charge("c1", "30", 3)]
    assert wallet_balance(WALLET, entries + entries, _days(5)) == wallet_balance(WALLET, entries, _days(5))
    with pytest.raises(LedgerError, match="'c1' was recorded before with other content"):
        recorded_once([*entries, _charge("c1", "31", 3)])


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        (replace(_charge("c", "1", 1), at=datetime(2026, 1, 2)), "time zone"),
        (replace(_grant("g", "1", 0, 1), valid_until=None), "need a valid_until after their start"),
        (replace(_grant("g", "1", 0, 1), valid_until=_days(0)), "need a valid_until after their start"),
        (_charge("c", "0", 1), "a charge's amount must be above 0"),
        (_charge("c", "NaN", 1), "finite"),
        (replace(_charge("c", "1", 1), kind="adjustment", amount=D(0)), "an adjustment not 0"),
        (replace(_charge("c", "1", 1), actor=""), "actor are required"),
    ],
)
def test_a_bad_entry_is_refused_with_what_is_wrong(entry: LedgerEntry, problem: str) -> None:
    with pytest.raises(LedgerError, match=problem):
        recorded_once([entry])


def test_a_negative_adjustment_takes_credits_like_a_charge_and_records_who() -> None:
    taken = LedgerEntry("adj-1", WALLET, "adjustment", D(-25), _days(2), "finance:wang", "wrongly granted")
    balance = wallet_balance(WALLET, [_grant("year", "100", 0, 365), taken], _days(3))
    assert (balance.available, balance.spent) == (D(75), D(25))


def test_another_wallets_entries_are_refused() -> None:
    other = replace(_charge("c", "1", 1), wallet="department:销售部")
    with pytest.raises(LedgerError, match="other wallets given for 'department:研发部': department:销售部"):
        wallet_balance(WALLET, [other], _days(2))


def test_costs_convert_through_the_wallets_rates_virtual_prices_included() -> None:
    costs = [CostAmount("CNY", False, D("12.5")), CostAmount("USD", False, D("0.10")), CostAmount("CNY", True, D("3"))]
    credits = WalletUnit(rates={"CNY": D(10), "USD": D(72)})
    assert in_wallet_units(costs, credits) == D("125") + D("7.20") + D("30")
    assert in_wallet_units(costs, WalletUnit(rates={"CNY": D(10), "USD": D(72)}, charges_virtual=False)) == D("132.20")
    assert in_wallet_units(costs[:1], WalletUnit(unit="CNY")) == D("12.5")  # a CNY wallet needs no rate for CNY
    with pytest.raises(LedgerError, match="no rate from USD to CNY"):
        in_wallet_units(costs, WalletUnit(unit="CNY"))


# --- invariants over any ledger

_AMOUNTS = st.decimals(min_value=D("0.000000001"), max_value=D(10_000), places=9)


@st.composite
def _ledgers(draw: st.DrawFn) -> list[LedgerEntry]:
    entries = []
    for index in range(draw(st.integers(min_value=0, max_value=25))):
        day, amount = draw(st.integers(min_value=0, max_value=400)), draw(_AMOUNTS)
        if draw(st.booleans()):
            entries.append(_grant(f"g{index}", str(amount), day, draw(st.integers(1, 400)),
                                  priority=draw(st.integers(0, 3)), rolls_over=draw(st.booleans())))  # fmt: skip
        else:
            entries.append(_charge(f"c{index}", str(amount), day))
    return entries


@settings(max_examples=300, deadline=None)
@given(entries=_ledgers(), day=st.integers(min_value=0, max_value=900), seed=st.integers())
def test_the_balance_is_what_was_granted_less_what_was_spent_and_expired(
    entries: list[LedgerEntry], day: int, seed: int
) -> None:
    balance = wallet_balance(WALLET, entries, _days(day))
    assert balance.available == balance.granted - balance.spent - balance.expired
    assert all(left.remaining > 0 for left in balance.grants)
    assert sum((left.remaining for left in balance.grants), D(0)) - balance.debt == balance.available
    # Below zero only by a recorded charge, and never by more than was charged.
    if balance.available < 0:
        assert balance.debt > 0 and not balance.grants and balance.debt <= balance.spent
    # A replay in any order, with repeats, is the same balance.
    replayed = entries * 2
    random.Random(seed).shuffle(replayed)
    assert wallet_balance(WALLET, replayed, _days(day)) == balance


@settings(max_examples=200, deadline=None)
@given(entries=_ledgers(), day=st.integers(min_value=0, max_value=400), amount=_AMOUNTS)
def test_a_charge_never_adds_credits(entries: list[LedgerEntry], day: int, amount: Decimal) -> None:
    before = wallet_balance(WALLET, entries, _days(day))
    after = wallet_balance(WALLET, [*entries, _charge("extra", str(amount), day)], _days(day))
    assert after.available == before.available - amount


def test_a_wallet_runs_out_at_the_rate_of_its_recent_charges() -> None:
    from datetime import date
    from zoneinfo import ZoneInfo

    from tokenmeter.credits.projection import projection

    zone = ZoneInfo("Asia/Shanghai")

    def charge(day: int, amount: str) -> LedgerEntry:
        at = datetime(2026, 11, day, tzinfo=zone)
        return LedgerEntry(f"c{day}", WALLET, "charge", D(amount), at, "enforcer", "usage")

    today = date(2026, 11, 21)
    # 10 days of history (from the 11th), 500 credits in all: 50 a day; 1,000 left last 20 days
    charges = [charge(11, "100"), charge(15, "250"), charge(20, "150"), charge(21, "999")]  # today's: not yet a rate
    ahead = projection(charges, D(1000), today, zone)
    assert (ahead.daily_rate, ahead.days_left, ahead.runs_out_on) == (D(50), 20, date(2026, 12, 11))
    # only the last 30 days count
    old = [charge(1, "10000"), *charges]
    assert projection(old, D(1000), today, zone, window=10).daily_rate == D(50)
    assert projection([], D(1000), today, zone).runs_out_on is None  # no usage: nothing says it runs out
    assert projection(charges, D(0), today, zone).runs_out_on == today  # nothing left
