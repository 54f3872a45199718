"""A call's cost, as the catalog priced it, in a wallet's unit.

A wallet counts in credits or in one currency. ``rates`` says how many of the wallet's units one
unit of each currency costs (a CNY wallet's own currency is 1 unless given); virtual prices (what a
local model would cost) convert like real ones when the wallet charges them, so local models can
cost credits too. A cost in a currency with no rate is an error naming the currency, never 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Protocol

from tokenmeter.credits.ledger import LedgerError

CREDITS = "credits"


class PricedAmount(Protocol):
    """A cost from the catalog: an amount in a currency, real or virtual."""

    currency: str
    virtual: bool
    amount: Decimal


@dataclass(frozen=True, slots=True)
class WalletUnit:
    unit: str = CREDITS  # "credits" or a currency code such as CNY
    rates: Mapping[str, Decimal] = field(default_factory=dict)  # wallet units per unit of each currency
    charges_virtual: bool = True  # local models' virtual prices cost credits too

    def rate(self, currency: str) -> Decimal:
        if currency in self.rates:
            return self.rates[currency]
        if currency == self.unit:
            return Decimal(1)
        known = ", ".join(sorted({*self.rates, *([self.unit] if self.unit != CREDITS else [])})) or "none"
        raise LedgerError(f"no rate from {currency} to {self.unit} (rates known for: {known}); "
                          f"add it to the wallet's rates")  # fmt: skip


def in_wallet_units(costs: Iterable[PricedAmount], unit: WalletUnit) -> Decimal:
    """What ``costs`` take from a wallet counting in ``unit``: exact, in the wallet's unit."""
    return sum(
        (cost.amount * unit.rate(cost.currency) for cost in costs if unit.charges_virtual or not cost.virtual),
        Decimal(0),
    )
