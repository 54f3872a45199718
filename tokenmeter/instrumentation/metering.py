"""Turn one intercepted LLM call into a span, usage counters and a cost.

`Metering.start` runs on the caller's thread before the request (cheap: span
start and a few attributes). `Metering.complete` / `fail` / `complete_stream`
capture what came back and hand the rest to the background finalizer, which
bills the call (`billing.bill`: counting with the model's tokenizer, pricing)
and writes the bill, the hashes and the outcome onto the span
(`span_attributes`) and into the metrics (`usage_points`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from tokenmeter import semconv
from tokenmeter.catalog import ModelCatalog
from tokenmeter.instrumentation.app_route import current_app_route
from tokenmeter.instrumentation.attribute_maps import put
from tokenmeter.instrumentation.attribution import current_attribution
from tokenmeter.instrumentation.billing import LocalCountPolicy, bill
from tokenmeter.instrumentation.content_hash import ContentHasher
from tokenmeter.instrumentation.finalizer import BackgroundFinalizer, hand_back_gil
from tokenmeter.instrumentation.hop_servers import HopServers
from tokenmeter.instrumentation.llm_call import LLMCall
from tokenmeter.instrumentation.openai_payload import (
    StreamAccumulator,
    embedding_inputs,
    finish_reasons,
    has_output_extras,
    request_messages,
    response_output_texts,
    server_usage,
)
from tokenmeter.instrumentation.question_features import asked_question
from tokenmeter.instrumentation.request_costs import request_cost_billed
from tokenmeter.instrumentation.safety import contained, report_internal_error
from tokenmeter.instrumentation.span_attributes import (
    content_attributes,
    request_attributes,
    response_attributes,
    usage_attributes,
)
from tokenmeter.instrumentation.usage_metrics import Instruments
from tokenmeter.instrumentation.usage_points import usage_points, write_points
from tokenmeter.tokenizers import TokenizerRegistry
from tokenmeter.tokenizers.tiktoken_tokenizer import counted_without_the_gil

# LLMCall lives in llm_call; importers of it from here (the SDK wrappers, the quota gate) keep working.
__all__ = ["LLMCall", "Metering", "MeteringOptions"]


@dataclass(frozen=True)
class MeteringOptions:
    """The settings metering reads; their defaults live in `tokenmeter.settings.Settings` only."""

    capture_content: bool
    # When to count locally beside the server's usage (local_count, drift_sample_rate).
    local_count: LocalCountPolicy
    hop_servers: HopServers = field(default_factory=HopServers)
    # The time a call is priced at (the catalog's price valid then): None, the call's start; a backfill of past
    # days (the demo's history) gives the time its calls stand for.
    price_clock: Callable[[], datetime] | None = None


class Metering:
    def __init__(
        self,
        *,
        tracer: Tracer,
        instruments: Instruments,
        catalog: ModelCatalog,
        registry: TokenizerRegistry,
        hasher: ContentHasher,
        finalizer: BackgroundFinalizer,
        options: MeteringOptions,
        usage_recorded: Callable[[], None] | None = None,
    ) -> None:
        """``usage_recorded`` runs after a call's usage counters are recorded (the debounced export)."""
        self._tracer = tracer
        self._instruments = instruments
        self._catalog = catalog
        self._registry = registry
        self._hasher = hasher
        self._finalizer = finalizer
        self._options = options
        self._usage_recorded = usage_recorded

    # --- caller's thread -------------------------------------------------------

    def start(
        self,
        operation: str,
        kwargs: Mapping[str, Any],
        server_address: str | None,
        server_port: int | None,
        started_ns: int | None = None,  # when a call that ran elsewhere started (a batch's, metered from its result)
    ) -> LLMCall:
        model = str(kwargs.get("model") or "")
        who = current_attribution()
        hop = (server_address, server_port) in self._options.hop_servers
        attributes = request_attributes(operation, model, kwargs, (server_address, server_port), who=who, hop=hop)
        request_input = _request_input(operation, kwargs)
        app_route = current_app_route()
        asked = asked_question(request_input, app_route) if operation == semconv.OPERATION_CHAT else None
        if asked is not None:  # a chat call's question: on its span, and for routing rules
            attributes.update(asked.attributes())
        put(attributes, semconv.TM_APP_ROUTE, app_route)
        span = self._tracer.start_span(f"{operation} {model}".strip(), kind=SpanKind.CLIENT, attributes=attributes,
                                       start_time=started_ns)  # fmt: skip
        return LLMCall(
            operation=operation,
            request_model=model,
            provider=semconv.PROVIDER_OPENAI,
            span=span,
            attribution=who,
            start_ns=started_ns or time.time_ns(),
            request_input=request_input,
            stream=bool(kwargs.get("stream")),
            server_address=server_address,
            server_port=server_port,
            hop=hop,
            asked=asked,
            priced_at=self._options.price_clock() if self._options.price_clock is not None else None,
        )

    def complete(self, call: LLMCall, response: Any, ended_ns: int | None = None) -> None:
        call.end_ns = ended_ns or time.time_ns()
        call.reached_server = True
        call.response_id = _str_or_none(getattr(response, "id", None))
        call.response_model = _str_or_none(getattr(response, "model", None))
        call.usage = server_usage(response)
        if call.operation != semconv.OPERATION_EMBEDDINGS:
            call.output_texts = response_output_texts(response)
            call.finish_reasons = finish_reasons(response)
            call.output_extras = has_output_extras(response)
        self._finalizer.submit(lambda: self._finalize(call))

    def complete_stream(self, call: LLMCall, stream: StreamAccumulator, error: BaseException | None) -> None:
        call.end_ns = time.time_ns()
        call.reached_server = True
        call.response_id = stream.response_id
        call.response_model = stream.response_model
        call.usage = stream.usage
        call.output_texts = stream.output_texts()
        call.finish_reasons = stream.finish_reasons()
        call.output_extras = stream.extras
        if error is None and not stream.ended and not stream.reasons:  # closed or dropped before the answer's end
            call.span.set_attribute(semconv.TM_STREAM_INCOMPLETE, True)
        if error is not None:
            call.error_type = getattr(error, "tokenmeter_error_type", None) or type(error).__qualname__
        self._finalizer.submit(lambda: self._finalize(call))

    def fail(self, call: LLMCall, error: BaseException, ended_ns: int | None = None) -> None:
        call.end_ns = ended_ns or time.time_ns()
        call.error_type = _error_type(error)
        self._finalizer.submit(lambda: self._finalize(call))

    # --- background thread -----------------------------------------------------

    def _finalize(self, call: LLMCall) -> None:
        try:
            self._record(call)
            if not call.hop and self._usage_recorded is not None:  # a hop adds no usage
                self._usage_recorded()
        finally:
            call.span.end(end_time=call.end_ns)
            if call.on_finished is not None:
                with contained("call finished hook"):
                    call.on_finished()

    def _record(self, call: LLMCall) -> None:
        record = call.decided_bill  # an answer-cache hit's; else the bill of what the server did
        if record is None:
            record = bill(call.billing_facts(), self._catalog, self._registry, self._options.local_count)
        request_cost_billed(call, record.cost)  # the request's X-Tokenmeter-Cost header waits for it
        if record.count_error is not None:  # the bill stands (server usage, or a labelled estimate)
            report_internal_error("local token count", record.count_error)
        if record.local is not None and counted_without_the_gil(record.local.tokenizer):
            # tiktoken released the GIL while it counted, so callers just had their turn; one more
            # hand-back here would only cost a contended reacquire (~100 µs of CPU on our VMs).
            hand_back_gil.waited()
        else:
            hand_back_gil()
        attributes = {**response_attributes(call), **usage_attributes(record, call.operation),
                      **content_attributes(call, self._hasher, self._options.capture_content)}  # fmt: skip
        if call.error_type:
            attributes[semconv.ERROR_TYPE] = call.error_type
            call.span.set_status(Status(StatusCode.ERROR, call.error_type))
        call.span.set_attributes(attributes)
        hand_back_gil()
        write_points(self._instruments, usage_points(call, record))
        if call.on_billed is not None:
            with contained("call billed hook"):
                call.on_billed(call, record)


def _request_input(operation: str, kwargs: Mapping[str, Any]) -> Any:
    """What is counted and hashed: the chat messages, or the list of inputs / prompts."""
    if operation == semconv.OPERATION_CHAT:
        return request_messages(kwargs)
    if operation == semconv.OPERATION_EMBEDDINGS:
        return embedding_inputs(kwargs.get("input"))
    return embedding_inputs(kwargs.get("prompt"))


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _error_type(error: BaseException) -> str:
    """error.type: a client's own name for the failure (``tokenmeter_error_type``: DashScope's response code), else
    the HTTP status the SDK's exception carries, else the exception's class."""
    named = getattr(error, "tokenmeter_error_type", None)
    if isinstance(named, str) and named:
        return named
    status = getattr(error, "status_code", None)
    return str(status) if isinstance(status, int) else type(error).__qualname__
