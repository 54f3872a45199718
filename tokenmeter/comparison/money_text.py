"""Money and rating numbers as the comparison's sentences and table print them.

Amounts print with their currency code, as `tokenmeter report` prints them (no symbol: ¥ is both
yuan and yen): two decimals from one unit up, else up to six, so a cost per answer of 0.000315 CNY
does not print as 0.00.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Final

_CENTS: Final = Decimal("0.01")
_MICROS: Final = Decimal("0.000001")


def money_text(amount: Decimal, currency: str) -> str:
    """E.g. ``123.45 CNY``, ``0.000315 CNY``, ``0 CNY``."""
    places = _CENTS if abs(amount) >= 1 else _MICROS
    rounded = amount.quantize(places)
    if places is _MICROS:
        rounded = rounded.normalize()
    if rounded == 0:
        rounded = Decimal(0)
    return f"{rounded:f} {currency}"


def signed(value: float, places: int = 1) -> str:
    """A rating difference with its sign: ``+1.6``, ``-4.0``, ``0.0``."""
    text = f"{value:+.{places}f}"
    return text[1:] if text.lstrip("+-") == f"{0:.{places}f}" else text


def plain(value: float, places: int = 1) -> str:
    return f"{value:.{places}f}"
