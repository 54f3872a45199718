"""When a wallet runs out at its current rate: the average of its recent daily charges, projected forward.

The rate is what the ledger charged over the last ``window`` local days before today (fewer when the
wallet is younger: from its first charge on), per day. A wallet with no charges in the window has no
rate and no date: nothing says it will run out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Final
from zoneinfo import ZoneInfo

from tokenmeter.credits.burn_down import ZERO
from tokenmeter.credits.charges import charge_day
from tokenmeter.credits.ledger import LedgerEntry

DEFAULT_WINDOW_DAYS: Final = 30


@dataclass(frozen=True, slots=True)
class Projection:
    daily_rate: Decimal  # credits a day, over the window
    days_left: int | None  # whole days the available credits last at that rate (None: no rate)
    runs_out_on: date | None  # the local day the credits are gone (today when nothing is left)


def projection(charges: Iterable[LedgerEntry], available: Decimal, today: date, zone: ZoneInfo,
               window: int = DEFAULT_WINDOW_DAYS) -> Projection:  # fmt: skip
    """``available`` credits projected from ``today`` at the rate of the charges for the ``window`` days before."""
    start = today - timedelta(days=window)
    days = [(charge_day(e, zone), e.amount) for e in charges if e.kind == "charge"]
    recent = [(day, amount) for day, amount in days if start <= day < today]
    if available <= 0:
        return Projection(_rate(recent, today), 0, today)
    if not recent:
        return Projection(ZERO, None, None)
    rate = _rate(recent, today)
    left = math.floor(available / rate)
    return Projection(rate, left, today + timedelta(days=left))


def _rate(recent: list[tuple[date, Decimal]], today: date) -> Decimal:
    if not recent:
        return ZERO
    first = min(day for day, _ in recent)
    return sum((amount for _, amount in recent), ZERO) / (today - first).days
