"""What some calls spent: tokens, and cost per price (currency, real or virtual); unpriced calls apart.

An unpriced call's cost is unknown, never 0: it is counted in ``unpriced_calls`` and left out of ``costs``.
Amounts are Decimal and travel in JSON as decimal strings.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from tokenmeter.comparison.answer_rows import CostTotal

PriceKey = tuple[str, bool]  # (currency, virtual)


# A sum of money at one price (currency, real or virtual): the comparison's, with the same JSON.
Money = CostTotal


def decimal_text(amount: Decimal) -> str:
    """``0.0015`` for 0.001500000000, ``12`` for 12.000 (never exponent notation)."""
    tidy = amount.normalize()
    exponent = tidy.as_tuple().exponent
    return f"{tidy.quantize(Decimal(1)) if isinstance(exponent, int) and exponent > 0 else tidy:f}"


def money_list(amounts: Mapping[PriceKey, Decimal]) -> tuple[Money, ...]:
    """Sorted by currency, real before virtual."""
    return tuple(Money(currency, virtual, Decimal(amount)) for (currency, virtual), amount in sorted(amounts.items()))


def added(*lists: Iterable[Money]) -> tuple[Money, ...]:
    totals: dict[PriceKey, Decimal] = {}
    for money in (money for one in lists for money in one):
        key = (money.currency, money.virtual)
        totals[key] = totals.get(key, Decimal(0)) + money.amount
    return money_list(totals)


def difference(before: Iterable[Money], after: Iterable[Money]) -> tuple[Money, ...]:
    """``before - after`` per price (a price only one side has counts as 0 on the other)."""
    return added(before, (Money(m.currency, m.virtual, -m.amount) for m in after))


def rank_amount(costs: Iterable[Money]) -> Decimal:
    """The amounts added across prices, for ranking only (currencies are not converted)."""
    return sum((money.amount for money in costs), Decimal(0))


@dataclass(frozen=True)
class Spend:
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    costs: tuple[Money, ...] = ()
    unpriced_calls: int = 0  # calls whose cost is unknown: not in costs

    def to_dict(self) -> dict[str, Any]:
        return {"calls": self.calls, "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "costs": [money.to_dict() for money in self.costs], "unpriced_calls": self.unpriced_calls}  # fmt: skip

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> Spend:
        return cls(
            int(document["calls"]),
            int(document["input_tokens"]),
            int(document["output_tokens"]),
            tuple(Money.from_dict(one) for one in document["costs"]),
            int(document["unpriced_calls"]),
        )
