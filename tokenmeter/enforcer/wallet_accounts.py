"""The wallets a policy declares, kept in step with the store: their ledger, their charges, their standing.

On the refresh thread, every tick:

- :meth:`WalletAccounts.charge` records what the ledger is owed: each account's yearly grant, and the
  usage of each local day that closed (``CHARGE_GRACE`` after midnight, for exports still on their way)
  as a charge (:mod:`tokenmeter.credits.charges`); the last ``RECHECK_DAYS`` days are read again when a
  day closes, so usage that arrived late is charged too.
- :meth:`WalletAccounts.with_wallets` adds each wallet budget's (subject) to the usage snapshot: used =
  charged this year + usage since the last charged day; limit = this year's credits (used + left). A
  wallet at 0 is an exceeded budget; its warning thresholds work as on any budget.

The ledger is read incrementally (entries recorded since the last read, less a margin for writers whose
clocks differ), so a tick does not read a year of charges again. Only days are scanned, never the year.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Final

from tokenmeter.calendar_periods import midnight
from tokenmeter.credits.burn_down import ZERO
from tokenmeter.credits.charges import charge_day, charges_due, standing
from tokenmeter.credits.conversion import in_wallet_units
from tokenmeter.credits.ledger import LedgerEntry, LedgerError, yearly_grant_id
from tokenmeter.enforcer.decision import Usage, UsageSnapshot, period_bounds
from tokenmeter.enforcer.policy import Policy, wallet_limit
from tokenmeter.enforcer.wallet_policy import Wallet
from tokenmeter.log_once import LogOnce
from tokenmeter.store.credit_ledger import accounts_entries, record_entry
from tokenmeter.store.wallet_usage_queries import SubjectCost, costs_in_range, costs_per_day

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

_log = LogOnce(logging.getLogger(__name__))

CHARGE_GRACE: Final = timedelta(hours=1)  # a day is charged this long after it closed
RECHECK_DAYS: Final = 2  # days read again for late usage when a day closes
_RECORDED_MARGIN: Final = timedelta(minutes=5)  # writers' clocks may differ this much
GRANT_ACTOR: Final = "policy"


class WalletAccounts:
    def __init__(self) -> None:
        self._entries: dict[str, dict[str, dict[str, LedgerEntry]]] = {}  # wallet -> account -> id -> entry
        self._read_until: dict[str, datetime] = {}  # wallet -> the latest recorded_at read
        self._charged_through: dict[str, date] = {}  # wallet -> the last local day charged

    def entries(self, client: Client, wallet: str) -> dict[str, list[LedgerEntry]]:
        """Every account of ``wallet`` with its entries (new ones read from the store)."""
        known = self._entries.setdefault(wallet, defaultdict(dict))
        since = self._read_until.get(wallet)
        for entry, recorded_at in accounts_entries(client, wallet, since - _RECORDED_MARGIN if since else None):
            first = known[entry.wallet].setdefault(entry.entry_id, entry)
            if first != entry:
                raise LedgerError(f"ledger entry {entry.entry_id!r} was recorded twice with different content: "
                                  f"{first} / {entry}; correct it with an adjustment")  # fmt: skip
            self._read_until[wallet] = max(self._read_until.get(wallet, recorded_at), recorded_at)
        return {account: list(by_id.values()) for account, by_id in known.items()}

    def charge(self, client: Client, policy: Policy, now: datetime) -> int:
        """Record the yearly grants and the closed days' usage owed to the ledger; how many entries.

        A wallet that cannot be charged (usage in a currency it has no rate for) is logged and skipped; its
        days are read again on every tick until it can be.
        """
        written = 0
        for wallet in _charged_wallets(policy):
            try:
                written += self._charge_wallet(client, policy, wallet, now)
            except LedgerError as exc:
                _log.warning((wallet.name, str(exc)), "wallet %s is not charged: %s", wallet.name, exc)
        return written

    def _charge_wallet(self, client: Client, policy: Policy, wallet: Wallet, now: datetime) -> int:
        written = 0
        entries = self.entries(client, wallet.name)
        last_closed = (now - CHARGE_GRACE).astimezone(policy.zone).date() - timedelta(days=1)
        first = self._first_day_to_charge(wallet, entries, policy, last_closed)
        costs: list[SubjectCost] = []
        if first <= last_closed:
            end = midnight(last_closed + timedelta(days=1), policy.zone)
            costs = costs_per_day(client, wallet.scope, midnight(first, policy.zone), end, policy.timezone)
            costs = [cost for cost in costs if _is_wallets_subject(wallet, cost.subject)]
        due = charges_due(costs, wallet.wallet_unit, wallet.account, entries, policy.zone)
        subjects = _subjects(wallet, entries) | {cost.subject for cost in costs}
        due = _yearly_grants_due(wallet, subjects, entries, policy, now) + due
        for entry in due:
            written += record_entry(client, entry)
            self._entries[wallet.name][entry.wallet].setdefault(entry.entry_id, entry)
        self._charged_through[wallet.name] = last_closed
        return written

    def _first_day_to_charge(self, wallet: Wallet, entries: dict[str, list[LedgerEntry]], policy: Policy,
                             last_closed: date) -> date:  # fmt: skip
        through = self._charged_through.get(wallet.name)
        if through is not None:
            return through + timedelta(days=1) if through >= last_closed else through - timedelta(days=RECHECK_DAYS)
        last = _last_charged_day(entries, policy)
        if last is not None:  # after a restart: from the last charged day, reading the days before it again
            return last - timedelta(days=RECHECK_DAYS)
        return last_closed.replace(month=1, day=1)  # a new wallet: this year's days, once

    def with_wallets(self, client: Client, policy: Policy, snapshot: UsageSnapshot, now: datetime) -> UsageSnapshot:
        """``snapshot`` with every wallet budget's subjects: their usage this year and their credits."""
        if not policy.wallet_budgets:
            return snapshot
        used, limits, starts = dict(snapshot.used), dict(snapshot.limits), dict(snapshot.period_starts)
        for wallet in _charged_wallets(policy):
            year = period_bounds("year", now, policy.zone)
            for subject, used_credits, limit in self._standings(client, policy, wallet, year, now):
                for budget in policy.wallet_budgets:
                    if budget.wallet == wallet.name and budget.subject in (None, subject):
                        used[(budget.name, subject)] = Usage(0, {wallet.cost_key: used_credits})
                        limits[(budget.name, subject)] = wallet_limit(wallet, limit)
                        starts[budget.name] = year[0]
        return UsageSnapshot(used=used, period_starts=starts, limits=limits)

    def _standings(self, client: Client, policy: Policy, wallet: Wallet, year: tuple[datetime, datetime],
                   now: datetime) -> Iterable[tuple[str, Decimal, Decimal]]:  # fmt: skip
        entries = self.entries(client, wallet.name)
        # Usage after the last charged day is not in the ledger yet (with charging on another replica, that
        # day is the ledger's latest charge: a day with usage has one).
        through = self._charged_through.get(wallet.name) or _last_charged_day(entries, policy)
        since = year[0] if through is None else max(midnight(through + timedelta(days=1), policy.zone),
                                                    year[0] - timedelta(days=1))  # fmt: skip
        live: dict[str, list[SubjectCost]] = defaultdict(list)
        for cost in costs_in_range(client, wallet.scope, since, year[1]):
            if _is_wallets_subject(wallet, cost.subject):
                live[cost.subject].append(cost)
        year_number = year[0].astimezone(policy.zone).year
        for subject in sorted({*_subjects(wallet, entries), *live}):
            account = wallet.account(subject)
            own = entries.get(account, [])
            grant_id = yearly_grant_id(account, year_number)
            to_come = ZERO if any(e.entry_id == grant_id for e in own) else wallet.yearly_grant_for(subject)
            uncharged = in_wallet_units(_with_rates(wallet, live.get(subject, ())), wallet.wallet_unit)
            state = standing(account, own, year, now, uncharged=uncharged, grant_to_come=to_come)
            yield subject, state.used, state.credits


def _with_rates(wallet: Wallet, costs: Iterable[SubjectCost]) -> list[SubjectCost]:
    """The costs ``wallet`` can convert; the others are logged (and not charged: :meth:`WalletAccounts.charge`)."""
    known = []
    for cost in costs:
        try:
            wallet.wallet_unit.rate(cost.currency)
        except LedgerError as exc:
            _log.warning((wallet.name, cost.currency), "wallet %s: %s", wallet.name, exc)
            continue
        known.append(cost)
    return known


def _last_charged_day(entries: dict[str, list[LedgerEntry]], policy: Policy) -> date | None:
    days = [charge_day(e, policy.zone) for account in entries.values() for e in account if e.kind == "charge"]
    return max(days, default=None)


def _charged_wallets(policy: Policy) -> list[Wallet]:
    """The wallets some budget draws on (a wallet no budget uses is not charged)."""
    names = {budget.wallet for budget in policy.wallet_budgets}
    return [wallet for wallet in policy.wallets if wallet.name in names]


def _is_wallets_subject(wallet: Wallet, subject: str) -> bool:
    if wallet.scope == "organisation":
        return True
    return bool(subject) and (wallet.subject is None or subject == wallet.subject)  # unattributed: nobody's


def _subjects(wallet: Wallet, entries: dict[str, list[LedgerEntry]]) -> set[str]:
    """The subjects the ledger and the policy know for ``wallet``."""
    if wallet.scope == "organisation":
        return {""}
    known = {account.partition("/")[2] for account in entries if "/" in account}
    return known | set(wallet.grant_overrides) | ({wallet.subject} if wallet.subject else set())


def _yearly_grants_due(wallet: Wallet, subjects: set[str], entries: dict[str, list[LedgerEntry]],
                       policy: Policy, now: datetime) -> list[LedgerEntry]:  # fmt: skip
    start, end = period_bounds("year", now, policy.zone)
    year = start.astimezone(policy.zone).year
    due = []
    for subject in sorted(subjects):
        amount = wallet.yearly_grant_for(subject)
        account = wallet.account(subject)
        entry_id = yearly_grant_id(account, year)
        if amount <= 0 or any(e.entry_id == entry_id for e in entries.get(account, ())):
            continue
        due.append(LedgerEntry(entry_id, account, "grant", amount, start.astimezone(UTC), GRANT_ACTOR,
                               f"yearly grant of wallet {wallet.name} for {year}", valid_until=end.astimezone(UTC),
                               rolls_over=wallet.rolls_over))  # fmt: skip
    return due
