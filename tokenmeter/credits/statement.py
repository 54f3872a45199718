"""A department's monthly statement for chargeback: its usage, what the usage costs in credits, and its ledger.

Pure: the caller reads the usage (per user and model, for the month in the policy's time zone) and the
wallets' ledger entries (:mod:`tokenmeter.store.statement_queries`) and hands them in as plain data.

For each of the department's wallets the statement says what the month's usage costs in the wallet's
unit (the wallet's conversion, :func:`~tokenmeter.credits.conversion.in_wallet_units`) and what the ledger
recorded: credits added in the month and in the year to date, the charges for the month's days, each
top-up and adjustment with who made it and why, and the balance at the month's end. The charges for a
month's days must equal its usage's credits to the last credit; when they do not (usage arriving after
its day was charged, not charged yet) the statement shows the difference.

The JSON document is here; the CSV file and the printable page are
:mod:`tokenmeter.credits.statement_renderings`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from decimal import Decimal
from typing import Any, Final, Protocol

from tokenmeter.credits.burn_down import wallet_balance
from tokenmeter.credits.conversion import PricedAmount, WalletUnit, in_wallet_units
from tokenmeter.credits.ledger import LedgerEntry

ZERO: Final = Decimal(0)
_MONTH: Final = re.compile(r"(\d{4})-(\d{2})")
# The month-end balance is taken at the month's last instant: before next year's grant (dated January 1, 00:00)
# arrives, and before this year's grant expires at the same moment.
_LAST_INSTANT: Final = timedelta(microseconds=1)


class StatementError(ValueError):
    """A statement that cannot be made as asked; the message names the field and the fix."""


class UsageOfUserAndModel(Protocol):
    """One user's usage of one model in the month (the store's :class:`UserModelUsage`)."""

    user: str
    model: str
    calls: int
    refused_calls: int
    input_tokens: int
    output_tokens: int

    @property
    def costs(self) -> Sequence[PricedAmount]: ...


class PolicyWallet(Protocol):
    """A wallet of the policy file (:class:`tokenmeter.enforcer.wallet_policy.Wallet`), as far as statements read it."""

    name: str
    scope: str
    subject: str | None
    unit: str

    @property
    def wallet_unit(self) -> WalletUnit: ...

    def account(self, subject: str) -> str: ...


@dataclass(frozen=True, slots=True)
class StatementMonth:
    """A calendar month in a time zone: ``[start, end)`` from local midnight to local midnight."""

    year: int
    month: int
    zone: tzinfo

    @classmethod
    def parse(cls, text: str, zone: tzinfo) -> StatementMonth:
        match = _MONTH.fullmatch(text or "")
        if match is None or not 1 <= int(match[2]) <= 12 or int(match[1]) < 2000:
            raise StatementError(f"month: {text!r} is not a month; use YYYY-MM, e.g. 2026-11")
        return cls(int(match[1]), int(match[2]), zone)

    @property
    def label(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    @property
    def start(self) -> datetime:
        return datetime(self.year, self.month, 1, tzinfo=self.zone)

    @property
    def end(self) -> datetime:
        after = (self.year + 1, 1) if self.month == 12 else (self.year, self.month + 1)
        return datetime(*after, 1, tzinfo=self.zone)

    @property
    def year_start(self) -> datetime:
        return datetime(self.year, 1, 1, tzinfo=self.zone)


def department_wallets(wallets: Iterable[PolicyWallet], department: str) -> list[PolicyWallet]:
    """The policy's department wallets that hold ``department``'s credits (one for every department, or its own)."""
    return [w for w in wallets if w.scope == "department" and w.subject in (None, department)]


@dataclass(frozen=True, slots=True)
class Cost:
    currency: str
    virtual: bool  # an internal price (a local model), not an invoice amount
    amount: Decimal


@dataclass(frozen=True, slots=True)
class UsageLine:
    """One user's usage of one model; ``credits``: what it costs in each wallet (by wallet name)."""

    user: str
    model: str
    calls: int  # sent to a model
    refused_calls: int  # refused by a quota before the request: never sent, never charged
    input_tokens: int
    output_tokens: int
    costs: tuple[Cost, ...]
    credits: Mapping[str, Decimal]


@dataclass(frozen=True, slots=True)
class CreditsAdded:
    """A top-up (its actor: the approver) or an adjustment (signed) recorded in the month."""

    entry_id: str
    kind: str
    amount: Decimal
    at: datetime
    actor: str
    reason: str


@dataclass(frozen=True, slots=True)
class WalletStatement:
    """One wallet's month: the usage's credits against the ledger, in the wallet's unit."""

    name: str
    account: str
    unit: str
    usage_credits: Decimal  # what the month's usage costs, converted by the wallet's rates
    yearly_grant: Decimal  # grants recorded in the month (the yearly grant, in January)
    top_ups: Decimal  # approved top-ups recorded in the month
    adjustments: Decimal  # finance's adjustments in the month, signed
    granted_year_to_date: Decimal  # grants, top-ups and adjustments from January 1 to the month's end
    charged: Decimal  # the charges for the month's days (late ones included)
    balance: Decimal  # available at the month's end: granted - spent - expired, below 0 only by debt
    added: tuple[CreditsAdded, ...]

    @property
    def granted_in_month(self) -> Decimal:
        return self.yearly_grant + self.top_ups + self.adjustments

    @property
    def not_yet_charged(self) -> Decimal:
        """The usage's credits minus the charges: 0 when the ledger agrees with the usage."""
        return self.usage_credits - self.charged


@dataclass(frozen=True, slots=True)
class Statement:
    department: str
    month: StatementMonth
    time_zone: str
    lines: tuple[UsageLine, ...]  # by user, then model
    wallets: tuple[WalletStatement, ...]  # none: the policy gives the department no wallet
    generated_at: datetime

    @property
    def totals(self) -> UsageLine:
        return UsageLine("", "", sum(line.calls for line in self.lines), sum(line.refused_calls for line in self.lines),
                         sum(line.input_tokens for line in self.lines), sum(line.output_tokens for line in self.lines),
                         _summed(cost for line in self.lines for cost in line.costs),
                         {w.name: w.usage_credits for w in self.wallets})  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (``--format json``); amounts are decimal strings, times ISO 8601 with their offset."""
        return {
            "department": self.department,
            "month": self.month.label,
            "time_zone": self.time_zone,
            "start": self.month.start.isoformat(),
            "end": self.month.end.isoformat(),
            "generated_at": self.generated_at.isoformat(),
            "lines": [_line_dict(line) for line in self.lines],
            "totals": _line_dict(self.totals),
            "wallets": [_wallet_dict(wallet) for wallet in self.wallets],
        }


def build_statement(
    department: str,
    month: StatementMonth,
    wallets: Sequence[PolicyWallet],
    usage: Iterable[UsageOfUserAndModel],
    *,
    ledgers: Mapping[str, Sequence[LedgerEntry]],
    now: datetime,
) -> Statement:
    """The statement of ``department`` for ``month``; ``ledgers``: each wallet account's entries.

    Raises LedgerError when a wallet has no rate for a currency the usage was priced in."""
    mine = department_wallets(wallets, department)
    lines = tuple(sorted((_usage_line(row, mine) for row in usage), key=lambda line: (line.user, line.model)))
    sections = tuple(
        _wallet_statement(wallet, wallet.account(department), month, lines, ledgers.get(wallet.account(department), ()))
        for wallet in mine
    )
    return Statement(department, month, str(month.zone), lines, sections, now.astimezone(month.zone))


def _usage_line(row: UsageOfUserAndModel, wallets: Sequence[PolicyWallet]) -> UsageLine:
    costs = _summed(Cost(c.currency, c.virtual, c.amount) for c in row.costs)
    credits = {wallet.name: in_wallet_units(costs, wallet.wallet_unit) for wallet in wallets}
    return UsageLine(row.user, row.model, row.calls, row.refused_calls, row.input_tokens, row.output_tokens,
                     costs, credits)  # fmt: skip


def _summed(costs: Iterable[Cost]) -> tuple[Cost, ...]:
    """Costs summed per (currency, virtual), real before virtual within a currency."""
    sums: dict[tuple[str, bool], Decimal] = {}
    for cost in costs:
        sums[(cost.currency, cost.virtual)] = sums.get((cost.currency, cost.virtual), ZERO) + cost.amount
    return tuple(Cost(currency, virtual, amount) for (currency, virtual), amount in sorted(sums.items()))


def _wallet_statement(wallet: PolicyWallet, account: str, month: StatementMonth, lines: Sequence[UsageLine],
                      entries: Sequence[LedgerEntry]) -> WalletStatement:  # fmt: skip
    def in_month(entry: LedgerEntry) -> bool:
        return month.start <= entry.at < month.end

    added = [entry for entry in entries if entry.kind != "charge" and month.year_start <= entry.at < month.end]
    # A day's charges (the first and those for usage that arrived late) are dated at the day's local start.
    charged = [entry for entry in entries if entry.kind == "charge" and in_month(entry)]
    return WalletStatement(
        name=wallet.name,
        account=account,
        unit=wallet.unit,
        usage_credits=sum((line.credits[wallet.name] for line in lines), ZERO),
        yearly_grant=_total(entry for entry in added if entry.kind == "grant" and in_month(entry)),
        top_ups=_total(entry for entry in added if entry.kind == "top_up" and in_month(entry)),
        adjustments=_total(entry for entry in added if entry.kind == "adjustment" and in_month(entry)),
        granted_year_to_date=_total(added),
        charged=_total(charged),
        balance=wallet_balance(account, entries, month.end - _LAST_INSTANT).available,
        added=tuple(CreditsAdded(entry.entry_id, entry.kind, entry.amount, entry.at.astimezone(month.zone),
                                 entry.actor, entry.reason)
                    for entry in added if entry.kind in ("top_up", "adjustment") and in_month(entry)),
    )  # fmt: skip


def _total(entries: Iterable[LedgerEntry]) -> Decimal:
    return sum((entry.amount for entry in entries), ZERO)


# --- the JSON document --------------------------------------------------------------------------------


def decimal_text(amount: Decimal) -> str:
    """Plain digits without trailing zeros, never an exponent: 0.0000006, 125, 12.5."""
    text = format(amount, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _cost_dict(cost: Cost) -> dict[str, Any]:
    return {"currency": cost.currency, "virtual": cost.virtual, "amount": decimal_text(cost.amount)}


def _line_dict(line: UsageLine) -> dict[str, Any]:
    return {
        "user": line.user,
        "model": line.model,
        "calls": line.calls,
        "refused_calls": line.refused_calls,
        "input_tokens": line.input_tokens,
        "output_tokens": line.output_tokens,
        "costs": [_cost_dict(cost) for cost in line.costs],
        "credits": {name: decimal_text(amount) for name, amount in line.credits.items()},
    }


def _wallet_dict(wallet: WalletStatement) -> dict[str, Any]:
    amounts = {name: decimal_text(amount) for name, amount in wallet_amounts(wallet)}
    added = [{"entry_id": a.entry_id, "kind": a.kind, "amount": decimal_text(a.amount), "at": a.at.isoformat(),
              "actor": a.actor, "reason": a.reason} for a in wallet.added]  # fmt: skip
    return {"name": wallet.name, "account": wallet.account, "unit": wallet.unit, **amounts,
            "charges_match_usage": wallet.not_yet_charged == 0, "added": added}  # fmt: skip


def wallet_amounts(wallet: WalletStatement) -> tuple[tuple[str, Decimal], ...]:
    """The wallet's figures by their names in every rendering, in the order a reader takes them."""
    return (
        ("usage_credits", wallet.usage_credits),
        ("charged_in_month", wallet.charged),
        ("not_yet_charged", wallet.not_yet_charged),
        ("yearly_grant_in_month", wallet.yearly_grant),
        ("top_ups_in_month", wallet.top_ups),
        ("adjustments_in_month", wallet.adjustments),
        ("granted_in_month", wallet.granted_in_month),
        ("granted_year_to_date", wallet.granted_year_to_date),
        ("balance_at_month_end", wallet.balance),
    )
