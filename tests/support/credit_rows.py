"""A store with wallets' ledgers and top-up requests, written through tokenmeter's own store functions
(``record_entry``, ``open_request``, ``act_on``), for the Credits board's and the credit alerts' tests.

Everything is placed relative to the real clock (the queries use ClickHouse's ``now()``), in this year of
Asia/Shanghai. Accounts (``dept-credits/<department>``, and the organisation's ``org-credits``):

- 研发部: a 100,000 grant, 40 days of charges (one day charged twice: late usage), one charge row written
  twice (a retried write), finance's -500 and +2,000 adjustments, and two approved top-ups;
- 销售部: 20,000, 900 a day for 20 days: 2,000 left, runs out in 2 days;
- 客服部: 5,000, 300 a day for 20 days: 1,000 below 0;
- 法务部: 10,000 and no charges (and next year's grant, not valid yet);
- org-credits: 1,000, charges 35 and 45 days ago only (none in the projection's window).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from tokenmeter.calendar_periods import midnight
from tokenmeter.credits.approvals import Action, TopUpRequest, requested_event
from tokenmeter.credits.ledger import LedgerEntry, charge_id, yearly_grant_id
from tokenmeter.enforcer.wallet_policy import Approvals
from tokenmeter.store.credit_ledger import record_entry
from tokenmeter.store.credit_requests import act_on, open_request

ZONE = ZoneInfo("Asia/Shanghai")
RULES = Approvals(approvers=("dept-heads-{subject}",), second_level_above=Decimal(50000),
                  second_level_approvers=("finance",))  # fmt: skip
ACCOUNTS = ("dept-credits/研发部", "dept-credits/销售部", "dept-credits/客服部", "dept-credits/法务部", "org-credits")


@dataclass(frozen=True)
class CreditRows:
    now: datetime  # when the rows were written (the queries run moments later)
    today: date  # local (Asia/Shanghai)

    @property
    def year(self) -> tuple[datetime, datetime]:
        return midnight(date(self.today.year, 1, 1), ZONE), midnight(date(self.today.year + 1, 1, 1), ZONE)


def _grant(account: str, amount: int, year: int) -> LedgerEntry:
    return LedgerEntry(yearly_grant_id(account, year), account, "grant", Decimal(amount),
                       midnight(date(year, 1, 1), ZONE), "policy", f"yearly grant {year}",
                       valid_until=midnight(date(year + 1, 1, 1), ZONE))  # fmt: skip


def _charge(account: str, day: date, amount: Decimal, number: int = 0) -> LedgerEntry:
    return LedgerEntry(charge_id(account, day.isoformat(), number), account, "charge", amount, midnight(day, ZONE),
                       "enforcer", f"usage on {day.isoformat()}")  # fmt: skip


def _days_back(today: date, first: int, last: int) -> list[date]:
    """The local days ``first`` .. ``last`` days before today (first > last >= 1) that are in today's year."""
    return [day for ago in range(first, last - 1, -1) if (day := today - timedelta(days=ago)).year == today.year]


def _ledgers(store: Any, rows: CreditRows) -> None:
    year, today, now = rows.today.year, rows.today, rows.now
    research, sales, service, legal, org = ACCOUNTS
    entries = [_grant(research, 100000, year), _grant(sales, 20000, year), _grant(service, 5000, year),
               _grant(legal, 10000, year), _grant(legal, 10000, year + 1), _grant(org, 1000, year)]  # fmt: skip
    for index, day in enumerate(_days_back(today, 40, 1)):
        entries.append(_charge(research, day, Decimal("1000.123456789") + index))
    entries.append(_charge(research, today - timedelta(days=1), Decimal("12.5"), number=1))  # arrived late
    entries += [_charge(sales, day, Decimal(900)) for day in _days_back(today, 20, 1)]
    entries += [_charge(service, day, Decimal(300)) for day in _days_back(today, 20, 1)]
    entries += [_charge(org, day, Decimal(100)) for day in (*_days_back(today, 45, 45), *_days_back(today, 35, 35))]
    entries += [
        LedgerEntry("adjust:research:1", research, "adjustment", Decimal(-500), now - timedelta(days=3), "fiona",
                    "a correction"),
        LedgerEntry("adjust:research:2", research, "adjustment", Decimal(2000), now - timedelta(days=2), "fiona",
                    "a project", valid_until=rows.year[1]),
    ]  # fmt: skip
    for entry in entries:
        record_entry(store, entry)
    # A retried write left one charge's row twice (record_entry itself writes once).
    store.command(
        "INSERT INTO credit_ledger SELECT * FROM credit_ledger WHERE entry_id = {id:String} LIMIT 1",
        parameters={"id": charge_id(sales, (today - timedelta(days=1)).isoformat(), 0)},
    )


def _ask(store: Any, request_id: str, subject: str, amount: int, requester: str, created: datetime) -> TopUpRequest:
    request = TopUpRequest(request_id, f"dept-credits/{subject}", "dept-credits", subject, Decimal(amount),
                           f"{request_id}: more reports", requester, created, created + timedelta(days=7))  # fmt: skip
    open_request(store, requested_event(request), RULES, created)
    return request


def _requests(store: Any, now: datetime) -> None:
    head = Action("approved", "dora", ("dept-heads-研发部",), "fine")
    minutes = lambda n: now - timedelta(minutes=n)  # noqa: E731

    def act(request_id: str, action: Action, at: datetime) -> None:
        act_on(store, request_id, action, RULES, zone=ZONE, now=at)

    _ask(store, "r-pending-1", "研发部", 60000, "alice", minutes(60))
    act("r-pending-1", head, minutes(50))  # level 1 of 2
    store.command("INSERT INTO credit_request_events SELECT * FROM credit_request_events "
                  "WHERE request_id = 'r-pending-1' AND kind = 'approved'")  # a retried write  # fmt: skip
    _ask(store, "r-pending-2", "销售部", 5000, "bob", minutes(10))
    _ask(store, "r-approved", "研发部", 3000, "carol", minutes(30))
    act("r-approved", head, minutes(5))
    _ask(store, "r-approved-long-ago", "研发部", 1000, "carol", minutes(180))
    act("r-approved-long-ago", head, minutes(120))
    _ask(store, "r-rejected", "销售部", 7000, "bob", minutes(20))
    act("r-rejected", Action("rejected", "sam", ("dept-heads-销售部",), "not this quarter"), minutes(4))
    _ask(store, "r-rejected-earlier", "销售部", 8000, "bob", minutes(90))
    act("r-rejected-earlier", Action("rejected", "sam", ("dept-heads-销售部",), "no"), minutes(40))
    _ask(store, "r-cancelled", "研发部", 500, "alice", minutes(30))
    act("r-cancelled", Action("cancelled", "alice"), minutes(3))
    _ask(store, "r-expired", "客服部", 900, "erin", now - timedelta(days=8))
    _ask(store, "r-expired-now", "客服部", 800, "erin", now - timedelta(days=7, minutes=5))  # expired 5 min ago


def write_credit_rows(store: Any) -> CreditRows:
    """Write the ledgers and requests above; the moment they are placed around."""
    seconds_to_local_midnight = 86400 - (time.time() + 8 * 3600) % 86400
    if seconds_to_local_midnight < 120:  # the queries' "today" must be the day the rows were placed around
        time.sleep(seconds_to_local_midnight + 1)
    now = datetime.now(UTC).replace(microsecond=0)
    rows = CreditRows(now, now.astimezone(ZONE).date())
    _ledgers(store, rows)
    _requests(store, now)
    return rows
