"""Charging usage to wallets: which ledger entries a closed day's usage calls for, and a wallet's year.

Usage is charged per local day (the policy's time zone), once the day has closed: one charge per
account and day, dated at the day's start, for what the day's usage cost in the wallet's unit
(rounded to the ledger's 9 decimal places). Usage that reaches the store after its day was charged
is charged later as a further entry for that day (``#1``, ``#2``...) for the difference, so the
ledger's charges for a day always end equal to the day's usage. Usage since the last charged day is
not in the ledger yet: the enforcer counts it live on top of the balance (:func:`standing`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Final, Protocol
from zoneinfo import ZoneInfo

from tokenmeter.calendar_periods import midnight
from tokenmeter.credits.burn_down import ZERO, wallet_balance
from tokenmeter.credits.conversion import WalletUnit, in_wallet_units
from tokenmeter.credits.ledger import LedgerEntry, charge_id

LEDGER_PLACES: Final = Decimal("0.000000001")  # the ledger's amounts are Decimal(38, 9)
CHARGE_ACTOR: Final = "enforcer"


class DayCost(Protocol):
    """What one subject's usage cost on one local day in one currency (real or virtual)."""

    subject: str
    day: date | None
    currency: str
    virtual: bool
    amount: Decimal


def charge_day(entry: LedgerEntry, zone: ZoneInfo) -> date:
    """The local day a charge is for (it is dated at the day's start)."""
    return entry.at.astimezone(zone).date()


def charges_due(costs: Iterable[DayCost], unit: WalletUnit, account_of: Callable[[str], str],
                entries: Mapping[str, Iterable[LedgerEntry]], zone: ZoneInfo) -> list[LedgerEntry]:  # fmt: skip
    """The charges to record so that each (account, day) of ``costs`` is charged what its usage cost:
    the first charge of a day, or a further one for usage that arrived after the day was charged."""
    per_day: dict[tuple[str, date], list[DayCost]] = defaultdict(list)
    for cost in costs:
        if cost.day is not None:
            per_day[(cost.subject, cost.day)].append(cost)
    due = []
    for (subject, day), day_costs in sorted(per_day.items()):
        account = account_of(subject)
        charged = [e for e in entries.get(account, ()) if e.kind == "charge" and charge_day(e, zone) == day]
        owed = in_wallet_units(day_costs, unit).quantize(LEDGER_PLACES, rounding=ROUND_HALF_EVEN)
        missing = owed - sum((entry.amount for entry in charged), ZERO)
        if missing > 0:
            due.append(LedgerEntry(
                entry_id=charge_id(account, day.isoformat(), len(charged)), wallet=account, kind="charge",
                amount=missing, at=midnight(day, zone), actor=CHARGE_ACTOR,
                reason=f"usage on {day.isoformat()}" + (" (arrived after the day was charged)" if charged else ""),
            ))  # fmt: skip
    return due


@dataclass(frozen=True, slots=True)
class Standing:
    """One account in the current year, as a budget on its wallet sees it."""

    used: Decimal  # charged this year plus the usage not charged yet
    credits: Decimal  # this year's credits: what was used plus what is left (the budget's limit)
    available: Decimal  # left now: credits - used (below 0 only by usage in flight when it ran out)


def standing(account: str, entries: Iterable[LedgerEntry], year: tuple[datetime, datetime], now: datetime, *,
             uncharged: Decimal, grant_to_come: Decimal = ZERO) -> Standing:  # fmt: skip
    """The account's year: ``uncharged`` is its usage since its last charged day, in the wallet's unit;
    ``grant_to_come`` a yearly grant the policy gives that is not in the ledger yet."""
    entries = list(entries)
    balance = wallet_balance(account, entries, now)
    start, end = year
    charged = sum((e.amount for e in entries if e.kind == "charge" and start <= e.at < end), ZERO)
    available = balance.available + grant_to_come - uncharged
    used = charged + uncharged
    return Standing(used=used, credits=used + available, available=available)
