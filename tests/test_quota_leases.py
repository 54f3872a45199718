"""Leases and given-up checks, piece by piece: the pure lease rule, the ledger, the receipts, the app's lease book."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from tokenmeter.enforcer.admission import Enforcer
from tokenmeter.enforcer.check_receipts import CheckReceipts
from tokenmeter.enforcer.decision import CheckRequest, Usage, UsageSnapshot, decide_and_lease
from tokenmeter.enforcer.ledger import ReservationLedger
from tokenmeter.enforcer.policy import parse_policy
from tokenmeter.instrumentation.quota.errors import QuotaVerdict
from tokenmeter.instrumentation.quota.leases import LeaseBook

NOW = datetime(2026, 12, 3, 4, 0, tzinfo=UTC)
POLICY = parse_policy("""
timezone: UTC
budgets:
  - {name: per-user, scope: user, period: day, limit: {tokens: 100000}}
  - {name: org-cost, scope: organisation, period: month, limit: {cost: 100, currency: USD}}
""")
KEY = ("per-user", "alice")


def _request(input_tokens: int = 900, output: int = 100, cost: str | None = None) -> CheckRequest:
    costs = {"gpt-4o": (Decimal(cost), "USD")} if cost is not None else {}
    return CheckRequest("alice", "ops", "kb", "gpt-4o", input_tokens, output, costs)


def _used(tokens: int, cost: str = "0") -> UsageSnapshot:
    starts = {"per-user": datetime(2026, 12, 3, tzinfo=UTC), "org-cost": datetime(2026, 12, 1, tzinfo=UTC)}
    return UsageSnapshot({KEY: Usage(tokens), ("org-cost", ""): Usage(0, {"USD": Decimal(cost)})}, starts)


@pytest.mark.parametrize(
    ("used", "cost", "calls"),
    [
        (0, None, 8),  # 80,000 tokens before the warning: room for 20 calls in a quarter; at most 8
        (60_000, None, 5),  # 20,000 left before the warning: a quarter holds 5
        (75_000, None, 1),  # 5,000 left: a quarter holds one call; decided one by one
        (79_500, None, 1),
        (0, "3", 6),  # cost: 80 USD before the warning, a quarter is 20 USD: 6 calls of 3 USD
        (0, "30", 1),
    ],
)
def test_a_lease_holds_at_most_a_quarter_of_the_room_before_the_first_warning(used: int, cost: str | None,
                                                                              calls: int) -> None:  # fmt: skip
    decision, hold, granted = decide_and_lease(POLICY, _used(used), {}, _request(cost=cost), NOW, max_calls=8)
    assert decision.action == "allow"
    assert granted == calls
    assert hold[KEY] == Usage(1000, {"USD": Decimal(cost)} if cost is not None else {})  # one call's estimate


def test_no_lease_past_a_warning_or_for_a_refused_call() -> None:
    decision, _hold, calls = decide_and_lease(POLICY, _used(85_000), {}, _request(), NOW, max_calls=8)
    assert (decision.action, calls) == ("warn", 1)
    decision, hold, calls = decide_and_lease(POLICY, _used(100_000), {}, _request(), NOW, max_calls=8)
    assert (decision.action, hold, calls) == ("deny", {}, 0)


def test_an_enforcer_holds_the_lease_and_a_release_gives_back_what_went_unused() -> None:
    clock = [0.0]
    ledger = ReservationLedger(settle_seconds=60, clock=lambda: clock[0])
    enforcer = Enforcer(POLICY, ledger, now=lambda: NOW, clock=lambda: clock[0])
    enforcer.update_snapshot(_used(0), started_at=0.0)
    result = enforcer.check(_request(), lease_max_calls=8, check_id="c1")
    assert result.lease_calls == 8
    assert ledger.totals(0.0)[KEY] == Usage(8000)
    assert enforcer.release(result.reservation_id, unused_tokens=5000)  # type: ignore[arg-type]
    assert ledger.totals(0.0)[KEY] == Usage(3000)  # unused room back at once; the 3 calls made settle
    clock[0] = 61.0
    assert KEY not in ledger.totals(61.0)


def test_cost_given_back_in_proportion() -> None:
    ledger = ReservationLedger()
    reservation = ledger.reserve({KEY: Usage(4000, {"USD": Decimal("4.0")})})
    assert reservation is not None and ledger.release(reservation, unused_tokens=1000)
    assert ledger.totals(float("-inf"))[KEY] == Usage(3000, {"USD": Decimal("3.0")})


def test_a_given_up_check_is_dropped_at_once_and_one_that_overtook_it_holds_nothing() -> None:
    ledger = ReservationLedger(settle_seconds=600)
    reservation = ledger.reserve({KEY: Usage(1000)}, check_id="late-answer")
    assert reservation is not None and ledger.release_check("late-answer")
    assert KEY not in ledger.totals(float("-inf"))  # dropped, not settling for 600 s
    assert not ledger.release_check("late-answer")  # once

    receipts = CheckReceipts()
    assert receipts.arrive("a") and receipts.give_up("a")  # arrived first: its reservation is dropped
    assert not receipts.give_up("b") and not receipts.arrive("b")  # given up first: it will hold nothing
    assert receipts.arrive("b")  # (a repeated id is a new check)


def _lease_book() -> tuple[LeaseBook, list[tuple[str, int]], list[float]]:
    released: list[tuple[str, int]] = []
    now = [0.0]
    return LeaseBook(lambda: now[0], lambda rid, unused: released.append((rid, unused))), released, now


def _granted(book: LeaseBook, tokens: int = 4000) -> QuotaVerdict:
    verdict = QuotaVerdict("allow", "m", "m", reservation_id="r1")
    return book.add(("u", "d", "a", "m"), verdict, tokens=tokens, first_estimate=1000, default_output_tokens=100,
                    seconds=2.0)  # fmt: skip


def test_the_app_spends_a_lease_until_it_runs_out_then_gives_back_the_rest_once() -> None:
    book, released, _now = _lease_book()
    first = _granted(book)
    assert (first.lease_id, first.reservation_id) == ("r1", None)
    key = ("u", "d", "a", "m")
    assert book.take(key, 900, None) is not None  # 900 + the default 100: 1,000 of the 3,000 left
    assert book.take(key, 1500, 500) is not None  # 2,000: 0 left
    assert book.take(key, 1, 0) is None  # it ran out: the next call asks the enforcer
    assert released == []  # three calls still running
    for _ in range(3):
        book.finished("r1")
    assert released == [("r1", 0)] and len(book) == 0


def test_an_expired_lease_gives_back_its_unused_room_when_its_calls_are_done() -> None:
    book, released, now = _lease_book()
    _granted(book)
    key = ("u", "d", "a", "m")
    assert book.take(key, 100, 0, spend=False) is not None  # a pre-check: nothing spent
    now[0] = 2.5
    assert book.take(key, 100, 0) is None  # expired
    book.finished("r1")  # the first call
    assert released == [("r1", 3000)]


def test_a_lease_expiring_while_idle_is_given_back_by_its_timer() -> None:
    book, released, _now = _lease_book()
    _granted(book)
    book.finished("r1")
    assert released == []  # not expired: it may still serve calls
    book.expire("r1")
    assert released == [("r1", 3000)]
    book.expire("r1")
    assert released == [("r1", 3000)]  # once
