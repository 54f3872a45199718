"""The demo's routing and answer-cache table: what each rule moved and what the cache answered, and what
that saved, from the run's spans (docs/routing.md, docs/answer-cache.md).

Routing's effect is shown as the moved calls' cost at the requested models' catalog prices beside what
they cost where they ran (the same token counts; a remote model's real price against a local model's
virtual one); the cache's is what the reused answers cost when they were made
(``tokenmeter.cache.saved.*``). Amounts are per currency, real and virtual apart.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from tokenmeter import semconv
from tokenmeter.pricing import cost_of

if TYPE_CHECKING:
    from rich.console import Console

    from tokenmeter.catalog import ModelCatalog

Money = defaultdict[str, Decimal]


@dataclass
class Savings:
    routed: Counter[str] = field(default_factory=Counter)  # rule -> calls it chose a tier for
    moved: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (rule, requested, ran on) -> calls
    # The moved calls' cost at the requested models' prices, and where they ran: currency -> amount.
    moved_cost_asked: Money = field(default_factory=lambda: defaultdict(Decimal))
    moved_cost_ran: Money = field(default_factory=lambda: defaultdict(Decimal))
    cache_hits: Counter[str] = field(default_factory=Counter)  # the model whose answer was reused -> hits
    cache_saved_tokens: int = 0
    cache_saved: Money = field(default_factory=lambda: defaultdict(Decimal))
    chat_calls: int = 0


def currency_label(attributes: Any) -> str:
    """A span's cost currency, marked when the price is virtual (a local model's)."""
    currency = str(attributes.get(semconv.TM_COST_CURRENCY, ""))
    return f"{currency} (virtual)" if attributes.get(semconv.TM_COST_VIRTUAL) else currency


def savings(spans: Any, catalog: ModelCatalog) -> Savings:
    """What routing and the cache did over the run's chat spans."""
    found = Savings()
    for span in spans.get_finished_spans():
        attributes = span.attributes or {}
        if attributes.get(semconv.GEN_AI_OPERATION_NAME) != semconv.OPERATION_CHAT:
            continue
        found.chat_calls += 1
        if attributes.get(semconv.TM_CACHE_HIT):
            _count_hit(found, attributes)
        elif semconv.TM_ROUTE_RULE in attributes:
            _count_route(found, attributes, catalog)
    return found


def _count_hit(found: Savings, attributes: Any) -> None:
    # By the model that made the answer, as the usage counters (and so the report) count the hit.
    model = attributes.get(semconv.GEN_AI_RESPONSE_MODEL) or attributes.get(semconv.GEN_AI_REQUEST_MODEL, "")
    found.cache_hits[str(model)] += 1
    found.cache_saved_tokens += int(attributes.get(semconv.TM_CACHE_SAVED_INPUT_TOKENS, 0)) + int(
        attributes.get(semconv.TM_CACHE_SAVED_OUTPUT_TOKENS, 0))  # fmt: skip
    saved = attributes.get(semconv.TM_CACHE_SAVED_COST)
    if saved is not None:
        found.cache_saved[currency_label(attributes)] += Decimal(str(saved))


def _count_route(found: Savings, attributes: Any, catalog: ModelCatalog) -> None:
    rule = str(attributes[semconv.TM_ROUTE_RULE])
    requested = str(attributes.get(semconv.TM_REQUESTED_MODEL, ""))
    ran_on = str(attributes.get(semconv.TM_EFFECTIVE_MODEL, requested))
    found.routed[rule] += 1
    if ran_on == requested:
        return
    found.moved[(rule, requested, ran_on)] += 1
    tokens = (int(attributes.get(semconv.GEN_AI_USAGE_INPUT_TOKENS, 0)),
              int(attributes.get(semconv.GEN_AI_USAGE_OUTPUT_TOKENS, 0)))  # fmt: skip
    asked, ran = cost_of(catalog.price_for(requested), *tokens), cost_of(catalog.price_for(ran_on), *tokens)
    if asked.amount is not None and ran.amount is not None:
        found.moved_cost_asked[_label(asked.currency, asked.virtual)] += asked.amount
        found.moved_cost_ran[_label(ran.currency, ran.virtual)] += ran.amount


def _label(currency: str | None, virtual: bool) -> str:
    return f"{currency} (virtual)" if virtual else str(currency)


def render_savings(console: Console, found: Savings) -> None:
    from rich.table import Table

    table = Table(title="Routing and the answer cache (from the spans)")
    for column, justify in (("what", "left"), ("calls", "right"), ("detail", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for rule, calls in sorted(found.routed.items()):
        moves = [f"{requested} -> {ran_on}: {count}" for (moved_by, requested, ran_on), count in found.moved.items()
                 if moved_by == rule]  # fmt: skip
        table.add_row(f"routing rule {rule}", f"{calls:,}", "; ".join(moves) or "already on its tier")
    hits = sum(found.cache_hits.values())
    table.add_row("answers from the cache", f"{hits:,}", ", ".join(f"{m}: {n}" for m, n in found.cache_hits.items()))
    console.print(table)
    moved = sum(found.moved.values())
    console.print(f"the {moved:,} calls routing moved would have cost {_money(found.moved_cost_asked)} on the models "
                  f"asked for; they cost {_money(found.moved_cost_ran)} where they ran. The cache saved "
                  f"{found.cache_saved_tokens:,} tokens and {_money(found.cache_saved)} "
                  f"({hits:,} of {found.chat_calls:,} chat calls answered without an LLM call)")  # fmt: skip


def _money(amounts: Money) -> str:
    shown = [f"{amount.normalize():f} {currency}" for currency, amount in sorted(amounts.items()) if amount]
    return ", ".join(shown) or "nothing"
