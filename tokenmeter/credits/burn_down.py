"""A wallet's balance at a moment, replayed from its ledger entries.

Rules (docs/credits.md):

- What adds credits (a grant, a top-up, a positive adjustment) is usable from its ``at`` until
  its ``valid_until`` (exclusive).
- What takes credits (a charge for usage, a negative adjustment) burns the usable grants down by
  priority (lower first), then earliest expiry, then earliest start.
- A charge larger than what is usable leaves a debt: the usage happened (calls in flight when
  the wallet reached 0), so it is recorded, and the next credits added pay it first. A balance is
  below 0 only by such a recorded charge.
- At its expiry a grant's unused rest is lost, unless it rolls over: then it stays usable for one
  more window of the same length (once; a rolled-over rest does not roll again).

So at every moment: available = granted - spent - expired.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from tokenmeter.credits.ledger import LedgerEntry, LedgerError, recorded_once

ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class GrantLeft:
    """What is left of one grant (or top-up) that is usable at the balance's moment."""

    entry_id: str
    remaining: Decimal
    valid_until: datetime
    priority: int
    rolled_over: bool


@dataclass(frozen=True, slots=True)
class WalletBalance:
    wallet: str
    at: datetime
    available: Decimal  # usable credits minus debt; below 0 only by a recorded charge
    granted: Decimal  # everything added so far
    spent: Decimal  # everything taken so far (charges and negative adjustments)
    expired: Decimal  # unused rests lost at their grants' expiry
    debt: Decimal  # charged beyond what was usable, not yet paid by later credits
    grants: tuple[GrantLeft, ...]  # usable grants, in the order they are spent


@dataclass(slots=True)
class _Lot:
    entry_id: str
    remaining: Decimal
    start: datetime
    valid_until: datetime
    priority: int
    rolls_over: bool
    rolled_over: bool = False

    def spend_order(self) -> tuple[int, datetime, datetime, str]:
        return self.priority, self.valid_until, self.start, self.entry_id


class _Replay:
    def __init__(self) -> None:
        self.lots: list[_Lot] = []
        self.granted = self.spent = self.expired = self.debt = ZERO

    def expire_until(self, moment: datetime) -> None:
        while due := [lot for lot in self.lots if lot.valid_until <= moment]:
            lot = min(due, key=lambda lot: lot.valid_until)
            if lot.rolls_over and not lot.rolled_over:
                lot.start, lot.valid_until = lot.valid_until, lot.valid_until + (lot.valid_until - lot.start)
                lot.rolled_over = True
                continue
            self.expired += lot.remaining
            self.lots.remove(lot)

    def add(self, entry: LedgerEntry) -> None:
        assert entry.valid_until is not None  # checked by check_entry
        self.granted += entry.amount
        paid = min(self.debt, entry.amount)
        self.debt -= paid
        self.lots.append(_Lot(entry.entry_id, entry.amount - paid, entry.at, entry.valid_until,
                              entry.priority, entry.rolls_over))  # fmt: skip

    def take(self, amount: Decimal) -> None:
        self.spent += amount
        for lot in sorted(self.lots, key=_Lot.spend_order):
            burnt = min(lot.remaining, amount)
            lot.remaining -= burnt
            amount -= burnt
            if not amount:
                break
        self.debt += amount
        self.lots = [lot for lot in self.lots if lot.remaining]


def wallet_balance(wallet: str, entries: Iterable[LedgerEntry], at: datetime) -> WalletBalance:
    """The balance of ``wallet`` at ``at`` from its entries (any order, repeats recorded once)."""
    own = recorded_once(entries)
    if others := sorted({entry.wallet for entry in own} - {wallet}):
        raise LedgerError(f"entries of other wallets given for {wallet!r}: {', '.join(others)}")
    replay = _Replay()
    # At one moment, credits added come before credits taken: a top-up and the usage it was
    # granted for, recorded with the same time, leave no debt.
    for entry in sorted((entry for entry in own if entry.at <= at), key=lambda e: (e.at, not e.adds, e.entry_id)):
        replay.expire_until(entry.at)
        if entry.adds:
            replay.add(entry)
        else:
            replay.take(abs(entry.amount))
    replay.expire_until(at)
    lots = sorted((lot for lot in replay.lots if lot.remaining), key=_Lot.spend_order)
    usable = sum((lot.remaining for lot in lots), ZERO)
    left = tuple(GrantLeft(lot.entry_id, lot.remaining, lot.valid_until, lot.priority, lot.rolled_over) for lot in lots)
    return WalletBalance(wallet, at, usable - replay.debt, replay.granted, replay.spent, replay.expired,
                         replay.debt, left)  # fmt: skip
