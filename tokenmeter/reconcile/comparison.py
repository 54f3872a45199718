"""tokenmeter's calls beside the provider's export, per day x model (docs/reconcile.md).

Per day (in the provider's time zone) and model key: the provider's values of each token type (added up over
its workspaces and API keys, the split kept for the report) and tokenmeter's (calls, tokens by type, cost in
the provider's currency). A token type is compared when the export reports it anywhere in the period; where a
side has no value it counts 0. Each difference is tokenmeter minus the provider: positive, tokenmeter counted
more than the invoice; negative, less. Per month, the totals and their relative difference against the
threshold (percent).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Final

from tokenmeter.reconcile.cells import (
    ProviderCell,
    ProviderSide,
    TokenmeterCell,
    TokenmeterSide,
    tokenmeter_is_provider,
)
from tokenmeter.reconcile.model_names import model_key
from tokenmeter.reconcile.periods import ReconcilePeriod
from tokenmeter.reconcile.token_types import COMPARED, COST

DEFAULT_THRESHOLD: Final = Decimal("0.5")  # percent
RATIO_PLACES: Final = Decimal("0.000001")


@dataclass(frozen=True)
class Difference:
    token_type: str
    tokenmeter: Decimal
    provider: Decimal

    @property
    def difference(self) -> Decimal:
        """tokenmeter minus the provider: > 0, tokenmeter counted more than the invoice."""
        return self.tokenmeter - self.provider


@dataclass(frozen=True)
class DayModelRow:
    day: date
    model_key: str
    provider: ProviderSide | None
    tokenmeter: TokenmeterSide | None
    differences: tuple[Difference, ...]

    @property
    def kind(self) -> str:
        """``both``, ``provider only`` (no call of tokenmeter's) or ``tokenmeter only`` (nothing billed)."""
        return "both" if self.provider and self.tokenmeter else "provider only" if self.provider else "tokenmeter only"


@dataclass(frozen=True)
class MonthTotal:
    month: str
    token_type: str
    tokenmeter: Decimal
    provider: Decimal
    relative: Decimal | None  # (tokenmeter - provider) / provider; None when the provider's total is 0
    past_threshold: bool


@dataclass
class Reconciliation:
    provider: str
    period: ReconcilePeriod
    currency: str  # the provider's cost currency ('' when the export has no cost)
    compared: tuple[str, ...]  # the token types the export reports, in report order
    not_compared: tuple[str, ...]  # types tokenmeter counted that the export does not report
    rows: list[DayModelRow]
    totals: list[MonthTotal]
    threshold: Decimal
    notes: list[str] = field(default_factory=list)  # what the import left out, and the like

    def of_kind(self, kind: str) -> list[DayModelRow]:
        return [row for row in self.rows if row.kind == kind]

    @property
    def differing(self) -> list[DayModelRow]:
        """Day x model rows both sides have, with a difference."""
        return [row for row in self.of_kind("both") if row.differences]

    @property
    def past_threshold(self) -> list[MonthTotal]:
        return [total for total in self.totals if total.past_threshold]


def compare(
    provider: str,
    period: ReconcilePeriod,
    provider_cells: Iterable[ProviderCell],
    tokenmeter_cells: Iterable[TokenmeterCell],
    *,
    billed: set[str],
    provider_of: Mapping[str, str | None],
    threshold: Decimal = DEFAULT_THRESHOLD,
) -> Reconciliation:
    """The reconciliation of ``provider``'s cells with tokenmeter's over ``period`` (both read for that period)."""
    provider_cells = list(provider_cells)
    currency = cost_currency(provider_cells)
    compared = tuple(t for t in COMPARED if t in {cell.token_type for cell in provider_cells})
    theirs = provider_sides(provider_cells)
    ours: dict[tuple[date, str], TokenmeterSide] = {}
    for cell in tokenmeter_cells:
        key = model_key(cell.model)
        if tokenmeter_is_provider(cell, key, provider, billed, provider_of):
            ours.setdefault((cell.day, key), TokenmeterSide()).add_cell(cell, currency)
    rows = [DayModelRow(day, key, theirs.get((day, key)), ours.get((day, key)),
                        differences(theirs.get((day, key)), ours.get((day, key)), compared))
            for day, key in sorted(theirs.keys() | ours.keys())]  # fmt: skip
    notes = [] if provider_cells else [f"no export of {provider} is imported for these days: nothing compared"]
    totals = month_totals(rows, compared, period, threshold)
    return Reconciliation(provider, period, currency, compared, _not_compared(rows, compared), rows, totals,
                          threshold, notes + tokenmeter_cost_notes(rows, currency))  # fmt: skip


def provider_sides(cells: list[ProviderCell]) -> dict[tuple[date, str], ProviderSide]:
    """Per day and model key: the provider's values, added over its workspaces and keys, the split kept."""
    sides: dict[tuple[date, str], ProviderSide] = {}
    for cell in cells:
        side = sides.setdefault((cell.day, cell.model_key), ProviderSide())
        side.models.add(cell.model)
        side.add(cell.token_type, cell.quantity)
        split = side.split.setdefault((cell.workspace, cell.api_key), {})
        split[cell.token_type] = split.get(cell.token_type, Decimal(0)) + cell.quantity
    return sides


def cost_currency(cells: list[ProviderCell]) -> str:
    currencies = sorted({cell.currency for cell in cells if cell.token_type == COST})
    if len(currencies) > 1:
        raise ValueError(
            f"the imported export bills in several currencies ({', '.join(currencies)}); "
            "reconcile one currency at a time"
        )
    return currencies[0] if currencies else ""


def differences(
    provider: ProviderSide | None, tokenmeter: TokenmeterSide | None, compared: tuple[str, ...]
) -> tuple[Difference, ...]:
    found = []
    for token_type in compared:
        theirs = provider.values.get(token_type, Decimal(0)) if provider else Decimal(0)
        ours = tokenmeter.values.get(token_type, Decimal(0)) if tokenmeter else Decimal(0)
        if ours != theirs:
            found.append(Difference(token_type, ours, theirs))
    return tuple(found)


def month_totals(
    rows: list[DayModelRow], compared: tuple[str, ...], period: ReconcilePeriod, threshold: Decimal
) -> list[MonthTotal]:
    totals = []
    for month in period.months:
        in_month = [row for row in rows if f"{row.day:%Y-%m}" == month]
        for token_type in compared:
            ours = sum((r.tokenmeter.values.get(token_type, Decimal(0)) for r in in_month if r.tokenmeter), Decimal(0))
            theirs = sum((r.provider.values.get(token_type, Decimal(0)) for r in in_month if r.provider), Decimal(0))
            relative = ((ours - theirs) / theirs).quantize(RATIO_PLACES) if theirs else None
            past = ours != theirs if not theirs else abs(ours - theirs) * 100 > threshold * theirs
            totals.append(MonthTotal(month, token_type, ours, theirs, relative, past))
    return totals


def _not_compared(rows: list[DayModelRow], compared: tuple[str, ...]) -> tuple[str, ...]:
    counted = {t for row in rows if row.tokenmeter for t, value in row.tokenmeter.values.items() if value}
    return tuple(t for t in COMPARED if t in counted - set(compared))


def tokenmeter_cost_notes(rows: list[DayModelRow], currency: str) -> list[str]:
    """What tokenmeter's cost leaves out: calls without a price, and costs in another currency than the bill's."""
    sides = [row.tokenmeter for row in rows if row.tokenmeter]
    notes = []
    unpriced = sum(side.unpriced_calls for side in sides)
    if unpriced:
        notes.append(f"tokenmeter has {unpriced} unpriced calls of these models: their cost is unknown, not counted")
    others: dict[str, Decimal] = {}
    for side in sides:
        for other, amount in side.other_costs.items():
            others[other] = others.get(other, Decimal(0)) + amount
    if others:
        listed = ", ".join(f"{amount.normalize():f} {other}" for other, amount in sorted(others.items()))
        notes.append(
            f"tokenmeter priced some calls in another currency than {currency or 'the bill'}'s: {listed} "
            "(not in the cost compared)"
        )
    return notes
