"""A stored call's cost again, at the catalog's prices: the pure core of `tokenmeter reprice`.

A row of llm_usage is priced as the call was billed (tokenmeter.instrumentation.billing): by the model
counted by (:func:`~tokenmeter.instrumentation.billing.pricing_model`: the model sent if the catalog knows
it, else the one that answered), at the price valid when the call started, its tier chosen by the input
tokens, each token type at its rate (``cost_of_tokens``). Rows written before the token types were recorded
(migration 0020) have 0 in those columns and are priced as plain input and output, as they were billed.

Left as they are: answer-cache hits (no model was called: their cost stays 0) and calls nothing was billed
for (refused by a quota, or failed before the server answered).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import ROUND_DOWN, Decimal
from typing import Any, Final, Literal

from tokenmeter.catalog import ModelCatalog
from tokenmeter.instrumentation.billing import pricing_model
from tokenmeter.pricing import Cost, TokenCounts, cost_of_tokens

# llm_usage.cost is Decimal(38, 12); ClickHouse cuts digits past the 12th (it does the same to a span's cost).
STORED_DECIMALS: Final = 12
_STORED_STEP: Final = Decimal(1).scaleb(-STORED_DECIMALS)
_NANOS: Final = 1_000_000_000

Skipped = Literal["answer_cache_hit", "not_billed"]


@dataclass(frozen=True)
class CallCost:
    """A call's cost as llm_usage holds it. ``amount`` None: unpriced (or never priced)."""

    amount: Decimal | None
    currency: str
    virtual: bool
    price_from: datetime | None = None
    tier: int | None = None

    @property
    def priced(self) -> bool:
        return self.amount is not None

    def columns(self) -> dict[str, Any]:
        """The llm_usage columns that hold it (:data:`tokenmeter.store.reprice_queries.COST_COLUMNS`)."""
        return {
            "cost": self.amount,
            "currency": self.currency,
            "virtual": self.virtual,
            "unpriced": not self.priced,
            "price_from": price_from_text(self.price_from),
            "price_tier": "" if self.tier is None else str(self.tier),
        }


@dataclass(frozen=True)
class RepricedCall:
    """One call: when (UTC day), by which model it is priced, its cost as stored and at the catalog now."""

    day: date
    model: str
    old: CallCost
    new: CallCost
    cut: bool  # the exact amount had more than STORED_DECIMALS decimals: it is stored cut, as ClickHouse does

    @property
    def changed(self) -> bool:
        return self.old != self.new


def call_time(row: Mapping[str, Any]) -> datetime:
    """The call's start (llm_usage.time, read as integer nanoseconds), to the microsecond."""
    nanos = int(row["time"])
    return datetime.fromtimestamp(nanos // _NANOS, UTC).replace(microsecond=nanos % _NANOS // 1000)


def skipped(row: Mapping[str, Any]) -> Skipped | None:
    """Why a row is left as it is, or None to reprice it."""
    if row.get("cache_hit"):
        return "answer_cache_hit"
    if not row.get("usage_source"):  # nothing billed: refused by a quota, or no answer from the server
        return "not_billed"
    return None


def model_sent(row: Mapping[str, Any]) -> str:
    """The model the request went to: the quota's effective model when a quota decided on the call (a downgrade
    or a routing rule may have replaced the one asked for, which is then ``request_model``), else the request's."""
    return str(row["effective_model"] if row.get("quota_decision") else row["request_model"])


def priced_model(row: Mapping[str, Any], catalog: ModelCatalog) -> str:
    """The catalog name the call is priced by (the billing rule)."""
    return pricing_model(catalog, model_sent(row), str(row.get("response_model") or "") or None)


def token_counts(row: Mapping[str, Any]) -> TokenCounts:
    """The billed tokens by type; parts beyond their totals cut down as when billed."""
    return TokenCounts.fitted(
        int(row["input_tokens"]),
        int(row["output_tokens"]),
        cache_read=int(row.get("cache_read_input_tokens") or 0),
        cache_creation=int(row.get("cache_creation_input_tokens") or 0),
        reasoning=int(row.get("reasoning_output_tokens") or 0),
        audio_input=int(row.get("audio_input_tokens") or 0),
        audio_output=int(row.get("audio_output_tokens") or 0),
    )


def stored_cost(row: Mapping[str, Any]) -> CallCost:
    """The cost a row holds now."""
    amount = row.get("cost")
    if row.get("unpriced") or amount is None:
        return CallCost(None, "", False)
    return CallCost(Decimal(amount), str(row.get("currency") or ""), bool(row.get("virtual")),
                    parse_price_from(str(row.get("price_from") or "")), _tier(row.get("price_tier")))  # fmt: skip


def reprice(row: Mapping[str, Any], catalog: ModelCatalog) -> RepricedCall:
    """The row's call priced at ``catalog``'s price valid when it was made."""
    when = call_time(row)
    model = priced_model(row, catalog)
    # A Batch API call (migration 0023's batch_id) was billed at the price's batch rate.
    cost = cost_of_tokens(catalog.price_at(model, when), token_counts(row), batch=bool(row.get("batch_id")))
    new, cut = _as_stored(cost)
    return RepricedCall(when.date(), model, stored_cost(row), new, cut)


def _as_stored(cost: Cost) -> tuple[CallCost, bool]:
    if cost.amount is None or cost.currency is None:
        return CallCost(None, "", False), False
    stored = cost.amount.quantize(_STORED_STEP, rounding=ROUND_DOWN)
    return CallCost(stored, cost.currency, cost.virtual, cost.price_from, cost.tier), stored != cost.amount


def model_matches(pattern: str | None, model: str) -> bool:
    """``--model``: a glob over the model name, case-insensitive; None matches every model."""
    return pattern is None or fnmatch.fnmatchcase(model.lower(), pattern.lower())


def price_from_text(when: datetime | None) -> str:
    """``tokenmeter.price.from`` as written on spans: ISO 8601 in UTC; '' for an undated price."""
    return "" if when is None else when.astimezone(UTC).isoformat()


def parse_price_from(text: str) -> datetime | None:
    """``tokenmeter.price.from`` read back tolerantly: a date, or a date and time (``Z`` or an offset; none: UTC)."""
    text = text.strip()
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        return None  # unreadable: as if undated (the reprice then writes the price it used)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _tier(value: object) -> int | None:
    text = str(value or "").strip()
    return int(text) if text.isdigit() else None
