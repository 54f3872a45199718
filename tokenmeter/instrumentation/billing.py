"""The bill of one LLM call: `bill(call, catalog, registry, policy) -> UsageRecord`.

A plain function over plain data: no telemetry, no I/O, no clock, no randomness (the
drift sample is decided from the call's trace id, passed in). Billed counts are the
server's `usage` when it sent one, else the local count with the model's tokenizer
(or a labelled estimate); the local count is also made beside server usage when the
policy asks for it, so drift between the two can be watched. The cost comes from the
catalog's price for the model counted by, valid when the call started, for the tokens by
type (the server's cache reads and writes, reasoning and audio at their own rates), at the price's
batch share for a call the provider's Batch API ran; an unknown model's cost is unpriced.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from tokenmeter import semconv
from tokenmeter.catalog import ModelCatalog
from tokenmeter.instrumentation.local_counts import LocalCounts, count_locally, estimate_locally
from tokenmeter.instrumentation.openai_payload import ServerUsage
from tokenmeter.pricing import Cost, Price, TokenCounts, cost_of_tokens
from tokenmeter.tokenizers import TokenizerRegistry

_LOW_64_BITS: Final = 2**64 - 1


@dataclass(frozen=True)
class BillableCall:
    """What billing needs to know about one finished call."""

    operation: str
    request_model: str
    response_model: str | None
    request_input: Any  # chat messages, or a list of prompts / inputs (text or token ids)
    output_texts: Sequence[str]
    usage: ServerUsage | None  # as the server reported it
    reached_server: bool  # False: failed before the server answered, nothing billable
    trace_id: int  # decides the drift sample, so the same trace is sampled everywhere
    # When the call started (timezone-aware): it is priced with the price valid then. None: the price valid now.
    started_at: datetime | None = None
    # Run by the provider's Batch API: every rate at the price's batch share (a price without one: standard).
    batch: bool = False


@dataclass(frozen=True)
class LocalCountPolicy:
    """When to count locally beside the server's usage (without it the local count is always made)."""

    # "always", "sample" (drift_sample_rate of calls, by trace id) or "fallback" (never).
    mode: Literal["always", "sample", "fallback"]
    drift_sample_rate: float

    def counts_beside_server(self, trace_id: int) -> bool:
        """Count locally beside the server's usage? Sampling is by trace id, so it is stable."""
        if self.mode == "always":
            return True
        if self.mode != "sample" or self.drift_sample_rate <= 0:
            return False
        return (trace_id & _LOW_64_BITS) < self.drift_sample_rate * 2**64


@dataclass(frozen=True)
class UsageRecord:
    """A call's bill: the billed counts and their source, the local counts, the cost."""

    input_tokens: int
    output_tokens: int
    source: str | None  # server | tokenizer | estimate; None when nothing is billable
    local: LocalCounts | None  # None when no local count was made (or it failed beside server usage)
    cost: Cost | None  # None when nothing is billable; unpriced for a model without a price
    # Why the tokenizer count failed on this input (the caller reports it); the bill stands without it.
    count_error: Exception | None = None
    # The server's usage with the parts it reported (cache, reasoning, audio, image); None for local counts.
    reported: ServerUsage | None = None

    @property
    def billed(self) -> bool:
        """True when the server processed the call, so its counts are a bill."""
        return self.source is not None

    @property
    def tokens(self) -> TokenCounts:
        """The billed tokens by type; local counts and estimates have only input and output."""
        if self.reported is not None:
            return self.reported.token_counts()
        return TokenCounts(self.input_tokens, self.output_tokens)


NOT_BILLED: Final = UsageRecord(input_tokens=0, output_tokens=0, source=None, local=None, cost=None)


def bill(
    call: BillableCall, catalog: ModelCatalog, registry: TokenizerRegistry, policy: LocalCountPolicy
) -> UsageRecord:
    """The call's bill; a call that failed before the server answered bills nothing."""
    if not call.reached_server:
        return NOT_BILLED
    model = pricing_model(catalog, call.request_model, call.response_model)
    price = _price(catalog, model, call.started_at)
    if call.usage is not None:  # the server's count is the bill; a local one is only for drift
        local, error = _count(call, model, registry) if policy.counts_beside_server(call.trace_id) else (None, None)
        tokens = call.usage.token_counts()
        cost = cost_of_tokens(price, tokens, batch=call.batch)
        return UsageRecord(tokens.input, tokens.output, semconv.SOURCE_SERVER, local, cost, error, call.usage)
    local, error = _count(call, model, registry)
    if local is None:  # odd input must not cost the call its usage record: a labelled estimate stands in
        local = estimate_locally(call.request_input, call.output_texts)
    cost = cost_of_tokens(price, TokenCounts(local.input_tokens, local.output_tokens), batch=call.batch)
    return UsageRecord(local.input_tokens, local.output_tokens, local.source, local, cost, error)


def _price(catalog: ModelCatalog, model: str, started_at: datetime | None) -> Price | None:
    """The price valid when the call started: a price change is not retroactive."""
    return catalog.price_at(model, started_at) if started_at is not None else catalog.price_for(model)


def _count(call: BillableCall, model: str, registry: TokenizerRegistry) -> tuple[LocalCounts | None, Exception | None]:
    """The local count, or why it failed on this input."""
    try:
        return count_locally(registry, model, call.operation, call.request_input, call.output_texts), None
    except Exception as exc:
        return None, exc


def pricing_model(catalog: ModelCatalog, request_model: str, response_model: str | None) -> str:
    """The catalog name to count and price by: the requested model if known, else the served one."""
    if catalog.lookup(request_model) is None and response_model and catalog.lookup(response_model) is not None:
        return response_model
    return request_model
