"""What the credits ledger records, and the rule that makes recording idempotent.

Balances are never stored: they are derived from the entries (``burn_down``). An entry carries
an id made by whoever records it (a top-up request's id, the policy's yearly grant named by
wallet and year, a charge named by wallet and period), so an entry sent twice is recorded once.
The same id with different content is a conflict, never silently one or the other.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Final, Literal

from tokenmeter.errors import TokenmeterError

EntryKind = Literal["grant", "top_up", "adjustment", "charge"]
# Entries that add credits (an adjustment adds when positive, takes away when negative).
ADDING: Final = frozenset({"grant", "top_up"})


class LedgerError(TokenmeterError, ValueError):
    """An entry that cannot be recorded; the message names the entry and what is wrong."""


def wallet_account(wallet: str, subject: str) -> str:
    """The ledger's name for one subject's wallet: ``dept-credits/研发部`` (the organisation's: the wallet's
    name). Wallet names have no ``/``, so the subject is everything after the first one."""
    return f"{wallet}/{subject}" if subject else wallet


def charge_id(account: str, day: str, number: int) -> str:
    """The id of the ``number``-th charge (from 0) of ``account``'s usage on the local ``day`` (YYYY-MM-DD):
    the first is the day's usage when it closed; later ones add what arrived late."""
    return f"charge:{account}:{day}" + (f"#{number}" if number else "")


def yearly_grant_id(account: str, year: int) -> str:
    return f"grant:{account}:{year}"


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One recorded change to a wallet. Amounts are credits in the wallet's unit, exact."""

    entry_id: str
    wallet: str
    kind: EntryKind
    amount: Decimal  # > 0, except an adjustment, which is signed and not 0
    at: datetime  # when it takes effect (aware); a grant is usable from then
    actor: str  # a person (their SSO name), or "policy" / "enforcer" for what the system records
    reason: str
    valid_until: datetime | None = None  # what adds credits: the end of its validity (exclusive)
    priority: int = 0  # what adds credits: lower is spent first
    rolls_over: bool = False  # the unused rest carries into one more window of the same length

    @property
    def adds(self) -> bool:
        return self.kind in ADDING or (self.kind == "adjustment" and self.amount > 0)


def check_entry(entry: LedgerEntry) -> LedgerEntry:
    """The entry, or LedgerError saying what is wrong with it."""
    problems = []
    if not entry.entry_id or not entry.wallet or not entry.actor:
        problems.append("entry_id, wallet and actor are required")
    if entry.at.tzinfo is None or (entry.valid_until is not None and entry.valid_until.tzinfo is None):
        problems.append("times must carry a time zone")
    elif entry.adds and (entry.valid_until is None or entry.valid_until <= entry.at):
        problems.append("credits that are added need a valid_until after their start")
    if not entry.amount.is_finite() or (entry.kind == "adjustment" and entry.amount == 0):
        problems.append("the amount must be a finite number (an adjustment not 0)")
    elif entry.kind != "adjustment" and entry.amount <= 0:
        problems.append(f"a {entry.kind}'s amount must be above 0")
    if entry.kind == "charge" and (entry.valid_until is not None or entry.rolls_over):
        problems.append("a charge has no validity and does not roll over")
    if problems:
        raise LedgerError(f"ledger entry {entry.entry_id!r} of wallet {entry.wallet!r}: {'; '.join(problems)}")
    return entry


def recorded_once(entries: Iterable[LedgerEntry]) -> list[LedgerEntry]:
    """Each entry id once, in the order first seen; a repeat must equal the first (else LedgerError)."""
    seen: dict[str, LedgerEntry] = {}
    for entry in entries:
        first = seen.setdefault(entry.entry_id, check_entry(entry))
        if first != entry:
            raise LedgerError(f"ledger entry {entry.entry_id!r} was recorded before with other content: "
                              f"{first} / {entry}")  # fmt: skip
    return list(seen.values())
