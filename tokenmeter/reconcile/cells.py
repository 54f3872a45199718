"""What the comparison reads from the store: the provider's values and tokenmeter's calls, per day and model."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal


@dataclass(frozen=True)
class ProviderCell:
    """One ``provider_usage`` value in the period (latest import of its key)."""

    day: date
    model_key: str
    model: str  # as the export names it
    workspace: str
    api_key: str
    token_type: str
    quantity: Decimal
    currency: str = ""


@dataclass(frozen=True)
class TokenmeterCell:
    """tokenmeter's calls of one day (in the provider's zone), effective model and price kind (virtual or not)."""

    day: date
    model: str
    virtual: bool
    counts: Mapping[str, int]  # token type -> tokens; "requests" -> calls
    costs: Mapping[str, Decimal] = field(default_factory=dict)  # currency -> cost of the priced calls
    unpriced_calls: int = 0


@dataclass
class Side:
    """One side's figures for a day x model: token type -> quantity, and where they came from."""

    values: dict[str, Decimal] = field(default_factory=dict)
    models: set[str] = field(default_factory=set)

    def add(self, token_type: str, quantity: Decimal) -> None:
        self.values[token_type] = self.values.get(token_type, Decimal(0)) + quantity


@dataclass
class ProviderSide(Side):
    split: dict[tuple[str, str], dict[str, Decimal]] = field(default_factory=dict)  # (workspace, key) -> values


@dataclass
class TokenmeterSide(Side):
    unpriced_calls: int = 0
    other_costs: dict[str, Decimal] = field(default_factory=dict)  # currency -> cost not in the provider's

    def add_cell(self, cell: TokenmeterCell, currency: str) -> None:
        self.models.add(cell.model)
        for token_type, count in cell.counts.items():
            self.add(token_type, Decimal(count))
        for cost_currency, amount in cell.costs.items():
            if cost_currency == currency:
                self.add("cost", amount)
            else:
                self.other_costs[cost_currency] = self.other_costs.get(cost_currency, Decimal(0)) + amount
        self.unpriced_calls += cell.unpriced_calls


def tokenmeter_is_provider(
    cell: TokenmeterCell, key: str, provider: str, billed: set[str], provider_of: Mapping[str, str | None]
) -> bool:
    """A call is the provider's when the provider has billed its model (any month imported), or when the catalog
    says the model is the provider's and the call is not at a virtual (self-hosted) price."""
    return key in billed or (provider_of.get(cell.model) == provider and not cell.virtual)
