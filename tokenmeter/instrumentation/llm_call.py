"""`LLMCall`: what tokenmeter knows about one intercepted LLM call, filled in as the call proceeds.

`Metering.start` creates it on the caller's thread; the quota gate and the SDK
wrappers add to it; `Metering.complete` / `fail` / `complete_stream` record what
came back. Billing reads it as plain facts (`billing_facts`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from opentelemetry.trace import Span

from tokenmeter.instrumentation.attribution import Attribution
from tokenmeter.instrumentation.billing import BillableCall, UsageRecord
from tokenmeter.instrumentation.openai_payload import ServerUsage
from tokenmeter.instrumentation.question_features import AskedQuestion
from tokenmeter.instrumentation.quota.errors import QuotaVerdict
from tokenmeter.instrumentation.request_costs import RequestCosts, track_cost


@dataclass
class LLMCall:
    """What tokenmeter knows about one call, filled in as the call proceeds."""

    operation: str
    request_model: str
    provider: str
    span: Span
    attribution: Attribution
    start_ns: int
    request_input: Any
    stream: bool = False
    server_address: str | None = None
    server_port: int | None = None
    hide_usage_chunk: bool = False
    end_ns: int | None = None
    response_id: str | None = None
    response_model: str | None = None
    finish_reasons: list[str] = field(default_factory=list)
    usage: ServerUsage | None = None
    output_texts: list[str] = field(default_factory=list)
    error_type: str | None = None
    # True when the call produced (part of) a response that the server processed.
    reached_server: bool = False
    # Run on the background thread once the call is recorded (the quota reservation's release).
    on_finished: Callable[[], None] | None = None
    # A call to one of your own forwarding services: the forwarded call is billed instead.
    hop: bool = False
    # A chat call's question (its features, the reported retrieval, the app's route): for routing rules.
    asked: AskedQuestion | None = None
    # The outputs hold more than the answers' text (reasoning, tool calls): the answer cache does not keep them.
    output_extras: bool = False
    # A bill known before the call (an answer-cache hit: nothing billed); None: billed when recorded.
    decided_bill: UsageRecord | None = None
    # Run on the background thread with the call's bill once it is recorded (the answer cache stores the answer).
    on_billed: Callable[[LLMCall, UsageRecord], None] | None = None
    # The request whose X-Tokenmeter-Cost header counts this call: the one being served when the call was made, if it
    # collects costs (request_costs); set on creation.
    request_costs: RequestCosts | None = None
    # When the call is priced, if not at its start (Metering's price_clock: a backfill of past days).
    priced_at: datetime | None = None
    # A call the provider's Batch API ran (metered from its results): priced at its price's batch share.
    batch: bool = False
    # The quota check's verdict on this call, once the gate applied it (None: unchecked, or tokenmeter failed).
    quota_verdict: QuotaVerdict | None = None

    def __post_init__(self) -> None:
        track_cost(self)

    def billing_facts(self) -> BillableCall:
        """The plain data `bill` decides on; the trace id drives the drift sample, the start time the price."""
        return BillableCall(
            operation=self.operation,
            request_model=self.request_model,
            response_model=self.response_model,
            request_input=self.request_input,
            output_texts=tuple(self.output_texts),
            usage=self.usage,
            reached_server=self.reached_server,
            trace_id=self.span.get_span_context().trace_id,
            started_at=self.priced_at or _utc(self.start_ns),
            batch=self.batch,
        )


def _utc(time_ns: int) -> datetime:
    """A wall-clock time in nanoseconds as a UTC datetime, exact to the microsecond (no float rounding)."""
    seconds, nanos = divmod(time_ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC) + timedelta(microseconds=nanos // 1000)
