"""Prices and the cost of a call: pure functions over Decimal, never floats.

A ``Price`` says what ``per`` tokens of input and of output cost, in one currency.
``cost_of`` turns token counts into a ``Cost``; an unknown model has no price and
its cost is *unpriced* (amount ``None``), never a silent 0. ``cost_units`` turns an
amount into an exact integer count of billionths of the currency unit, which is what
the cost counters add up (integers add exactly, floats do not).
"""

from __future__ import annotations

import decimal
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Final

from tokenmeter.semconv import COST_UNITS_PER_CURRENCY_UNIT

# The two token blocks prices are quoted in.
PER_1K: Final = 1_000
PER_1M: Final = 1_000_000
_PER_EXPONENT: Final = {PER_1K: 3, PER_1M: 6}
_UNITS_EXPONENT: Final = len(str(COST_UNITS_PER_CURRENCY_UNIT)) - 1  # 9: billionths
# Wide enough that no realistic count times price is ever rounded; Inexact is trapped
# so a rounding would raise instead of silently changing a bill.
_EXACT = decimal.Context(prec=60, rounding=ROUND_HALF_EVEN, traps=[decimal.Inexact, decimal.InvalidOperation])


@dataclass(frozen=True)
class Price:
    """What ``per`` input and ``per`` output tokens cost, in ``currency``.

    ``virtual`` marks an internal price (e.g. for a free self-hosted model) that is
    accounted like a real one but must not be mistaken for an invoice.
    """

    input: Decimal
    output: Decimal
    per: int  # PER_1K or PER_1M tokens
    currency: str
    virtual: bool = False

    def __post_init__(self) -> None:
        if self.per not in _PER_EXPONENT:
            raise ValueError(f"Price.per must be {PER_1K} or {PER_1M} tokens, got {self.per!r}")
        for field_name in ("input", "output"):
            value = getattr(self, field_name)
            if not isinstance(value, Decimal) or not value.is_finite() or value < 0:
                raise ValueError(
                    f"Price.{field_name} must be a finite, non-negative Decimal, got {value!r}; "
                    'build it from a string, e.g. Decimal("0.0005")'
                )
        if not self.currency:
            raise ValueError('Price.currency must be a currency code such as "USD" or "CNY"')


@dataclass(frozen=True)
class Cost:
    """The cost of one call. ``unpriced`` calls have no amount and no currency."""

    amount: Decimal | None
    currency: str | None
    virtual: bool
    unpriced: bool


UNPRICED: Final = Cost(amount=None, currency=None, virtual=False, unpriced=True)


def _without_trailing_zeros(amount: Decimal) -> Decimal:
    """``0.0015000`` -> ``0.0015`` and ``10.00`` -> ``10`` (same value, never exponent notation)."""
    tidy = amount.normalize()
    exponent = tidy.as_tuple().exponent
    return tidy.quantize(Decimal(1)) if isinstance(exponent, int) and exponent > 0 else tidy


def cost_of(price: Price | None, input_tokens: int, output_tokens: int) -> Cost:
    """The exact cost of ``input_tokens`` and ``output_tokens`` at ``price``.

    ``price=None`` (model not in the catalog, or no price given) yields an unpriced
    cost with ``amount=None``: never 0.
    """
    if input_tokens < 0 or output_tokens < 0:
        raise ValueError(
            f"token counts must not be negative, got input_tokens={input_tokens}, output_tokens={output_tokens}"
        )
    if price is None:
        return UNPRICED
    with decimal.localcontext(_EXACT):
        total = Decimal(input_tokens) * price.input + Decimal(output_tokens) * price.output
        amount = _without_trailing_zeros(total.scaleb(-_PER_EXPONENT[price.per]))
    return Cost(amount=amount, currency=price.currency, virtual=price.virtual, unpriced=False)


def cost_units(amount: Decimal) -> int:
    """``amount`` as an integer number of billionths of its currency unit.

    Rounds half to even at the ninth decimal place: ``Decimal("0.0000000005")`` -> 0,
    ``Decimal("0.0000000015")`` -> 2.
    """
    if not amount.is_finite():
        raise ValueError(f"cost amount must be finite, got {amount!r}")
    with decimal.localcontext(decimal.Context(prec=60, traps=[decimal.InvalidOperation])):
        return int(amount.scaleb(_UNITS_EXPONENT).to_integral_value(rounding=ROUND_HALF_EVEN))
