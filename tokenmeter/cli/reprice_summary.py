"""What a reprice found: per UTC day x model x currency, the calls, their cost before and after, the prices used.

A call's old cost counts under the currency it was priced in, its new cost under the currency it is priced in
now; a call is counted under its new currency (``''``: no price now). So each currency's difference is exact
even when a price changed currency or a call gained or lost its price. Virtual prices are kept apart.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Final

from tokenmeter.cli.reprice_calls import CallCost, RepricedCall, Skipped, price_from_text

UNPRICED: Final = ""  # the "currency" of calls without a price
COUNTERS_UNCHANGED: Final = (
    "The usage counters are not changed: they keep the cost as charged when each call was made, which budgets, "
    "quotas, credit charges and statements used. Reprice rewrites the per-call cost in llm_usage only."
)


@dataclass(frozen=True, order=True)
class GroupKey:
    day: date
    model: str
    currency: str
    virtual: bool


@dataclass
class GroupTally:
    """The calls of one day, model and currency."""

    calls: int = 0  # priced in this currency now (UNPRICED: without a price now)
    rewritten: int = 0  # whose stored cost, price or tier changes
    became_priced: int = 0
    became_unpriced: int = 0
    old_cost: Decimal = Decimal(0)  # of the calls priced in this currency before
    new_cost: Decimal = Decimal(0)  # of the calls priced in this currency now
    prices: set[tuple[datetime | None, int | None]] = field(default_factory=set)  # (from, tier) used now

    @property
    def difference(self) -> Decimal:
        return self.new_cost - self.old_cost


@dataclass
class RepriceSummary:
    """Every call a reprice read, tallied; plus what it left alone and could not see."""

    first: date
    last: date
    model_filter: str | None
    catalog: str
    groups: dict[GroupKey, GroupTally] = field(default_factory=lambda: defaultdict(GroupTally))
    left_alone: dict[str, int] = field(default_factory=lambda: {"answer_cache_hit": 0, "not_billed": 0})
    cut: int = 0  # calls whose exact cost had more than 12 decimals: stored cut to 12, as ClickHouse stores costs
    calls_sent_seen: int = 0  # rows of calls that were sent (not refused), for the counters' comparison
    counted_calls: int | None = None  # the usage counters' calls in the range, when asked
    applied: bool = False

    def add(self, call: RepricedCall) -> None:
        new_key = _key(call, call.new)
        tally = self.groups[new_key]
        tally.calls += 1
        tally.rewritten += call.changed
        tally.became_priced += call.new.priced and not call.old.priced
        tally.became_unpriced += call.old.priced and not call.new.priced
        if call.new.amount is not None:
            tally.new_cost += call.new.amount
            tally.prices.add((call.new.price_from, call.new.tier))
        if call.old.amount is not None:
            self.groups[_key(call, call.old)].old_cost += call.old.amount
        self.cut += call.cut

    def leave(self, reason: Skipped) -> None:
        self.left_alone[reason] += 1

    @property
    def rewritten(self) -> int:
        return sum(tally.rewritten for tally in self.groups.values())

    @property
    def not_seen(self) -> int:
        """Calls the counters hold in the range that llm_usage has no row for (sampled-out traces)."""
        return 0 if self.counted_calls is None else max(0, self.counted_calls - self.calls_sent_seen)

    def rows(self) -> list[tuple[GroupKey, GroupTally]]:
        return sorted(self.groups.items())

    def totals(self) -> list[tuple[tuple[str, bool], GroupTally]]:
        """Per (currency, virtual): the groups added up (prices not kept)."""
        totals: dict[tuple[str, bool], GroupTally] = defaultdict(GroupTally)
        for key, tally in self.groups.items():
            total = totals[(key.currency, key.virtual)]
            total.calls += tally.calls
            total.rewritten += tally.rewritten
            total.became_priced += tally.became_priced
            total.became_unpriced += tally.became_unpriced
            total.old_cost += tally.old_cost
            total.new_cost += tally.new_cost
        return sorted(totals.items())

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (``--format json``); amounts are decimal strings."""
        rows = [{"day": key.day.isoformat(), "model": key.model, **_money_key(key.currency, key.virtual),
                 **_tally_dict(tally), "prices_now": price_list(tally)} for key, tally in self.rows()]  # fmt: skip
        totals = [
            {**_money_key(currency, virtual), **_tally_dict(tally)} for (currency, virtual), tally in self.totals()
        ]
        counters = None
        if self.counted_calls is not None:
            counters = {"calls": self.counted_calls, "calls_in_llm_usage": self.calls_sent_seen,
                        "not_seen": self.not_seen}  # fmt: skip
        return {
            "from": self.first.isoformat(),
            "to": self.last.isoformat(),
            "model": self.model_filter,
            "catalog": self.catalog,
            "applied": self.applied,
            "rows": rows,
            "totals": totals,
            "rewritten": self.rewritten,
            "left_as_they_are": dict(self.left_alone),
            "cut_to_12_decimals": self.cut,
            "counters": counters,
            "note": COUNTERS_UNCHANGED,
        }


def _key(call: RepricedCall, cost: CallCost) -> GroupKey:
    return GroupKey(call.day, call.model, cost.currency if cost.priced else UNPRICED, cost.virtual and cost.priced)


def price_list(tally: GroupTally) -> list[dict[str, Any]]:
    """The prices the group's calls are priced at now: effective date (None: undated) and tier (None: no tiers)."""
    ordered = sorted(tally.prices, key=lambda price: (price[0] is not None, price[0] or datetime.min, price[1] or -1))
    return [{"from": price_from_text(when) or None, "tier": tier} for when, tier in ordered]


def decimal_text(amount: Decimal) -> str:
    """Plain digits, never an exponent, without trailing zeros: 0.0000006, 1.5, 0."""
    text = format(amount.normalize(), "f")
    return text if amount else "0"


def _money_key(currency: str, virtual: bool) -> dict[str, Any]:
    return {"currency": currency or None, "virtual": virtual, "unpriced": currency == UNPRICED}


def _tally_dict(tally: GroupTally) -> dict[str, Any]:
    return {
        "calls": tally.calls,
        "rewritten": tally.rewritten,
        "became_priced": tally.became_priced,
        "became_unpriced": tally.became_unpriced,
        "old_cost": decimal_text(tally.old_cost),
        "new_cost": decimal_text(tally.new_cost),
        "difference": decimal_text(tally.difference),
    }
