"""Turn one intercepted LLM call into a span, usage counters and a cost.

`Metering.start` runs on the caller's thread before the request (cheap: span
start and a few attributes). `Metering.complete` / `fail` / `complete_stream`
capture what came back and hand the rest to the background finalizer: counting
with the model's tokenizer, pricing, hashing, the span's last attributes and
the metrics. Billed counts are the server's `usage` when it sent one, else the
local tokenizer count; local counts are recorded beside server counts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from tokenmeter import semconv
from tokenmeter.catalog import ModelCatalog
from tokenmeter.instrumentation.attribution import Attribution, current_attribution
from tokenmeter.instrumentation.content_hash import ContentHasher, canonical_json
from tokenmeter.instrumentation.finalizer import BackgroundFinalizer
from tokenmeter.instrumentation.hop_servers import HopServers
from tokenmeter.instrumentation.openai_payload import (
    ServerUsage,
    StreamAccumulator,
    embedding_inputs,
    finish_reasons,
    request_messages,
    response_output_texts,
    server_usage,
)
from tokenmeter.instrumentation.safety import report_internal_error
from tokenmeter.instrumentation.usage_metrics import Instruments
from tokenmeter.pricing import Cost, cost_of, cost_units
from tokenmeter.tokenizers import TokenCount, TokenizerRegistry
from tokenmeter.tokenizers.estimate import ESTIMATE_LABEL, estimate_tokens

AttributeMap = dict[str, str | bool | int | float | list[str]]
_LOW_64_BITS = 2**64 - 1


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


@dataclass(frozen=True)
class LocalCounts:
    input_tokens: int
    output_tokens: int
    source: str
    tokenizer: str


@dataclass(frozen=True)
class MeteringOptions:
    """The settings metering reads; their defaults live in `tokenmeter.settings.Settings` only."""

    capture_content: bool
    # When the server reports usage: "always", "sample" (drift_sample_rate of calls) or
    # "fallback" (never). Without server usage the local count is always made.
    count_locally: Literal["always", "sample", "fallback"]
    drift_sample_rate: float
    hop_servers: HopServers = field(default_factory=HopServers)


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
    ) -> LLMCall:
        model = str(kwargs.get("model") or "")
        who = current_attribution()
        attributes: AttributeMap = {
            semconv.GEN_AI_OPERATION_NAME: operation,
            semconv.GEN_AI_PROVIDER_NAME: semconv.PROVIDER_OPENAI,
            semconv.GEN_AI_REQUEST_MODEL: model,
            semconv.TM_STREAM: bool(kwargs.get("stream")),
        }
        _put(attributes, semconv.SERVER_ADDRESS, server_address)
        _put(attributes, semconv.SERVER_PORT, server_port)
        _put(attributes, semconv.GEN_AI_REQUEST_MAX_TOKENS, _number(kwargs, "max_tokens", "max_completion_tokens"))
        _put(attributes, semconv.GEN_AI_REQUEST_TEMPERATURE, _number(kwargs, "temperature"))
        _put(attributes, semconv.GEN_AI_REQUEST_TOP_P, _number(kwargs, "top_p"))
        attributes.update(_attribution_attributes(who))
        hop = (server_address, server_port) in self._options.hop_servers
        if hop:
            attributes[semconv.TM_HOP] = True
        span = self._tracer.start_span(f"{operation} {model}".strip(), kind=SpanKind.CLIENT, attributes=attributes)
        if operation == semconv.OPERATION_CHAT:
            request_input: Any = request_messages(kwargs)
        elif operation == semconv.OPERATION_EMBEDDINGS:
            request_input = embedding_inputs(kwargs.get("input"))
        else:
            request_input = embedding_inputs(kwargs.get("prompt"))
        return LLMCall(
            operation=operation,
            request_model=model,
            provider=semconv.PROVIDER_OPENAI,
            span=span,
            attribution=who,
            start_ns=time.time_ns(),
            request_input=request_input,
            stream=bool(kwargs.get("stream")),
            server_address=server_address,
            server_port=server_port,
            hop=hop,
        )

    def complete(self, call: LLMCall, response: Any) -> None:
        call.end_ns = time.time_ns()
        call.reached_server = True
        call.response_id = _str_or_none(getattr(response, "id", None))
        call.response_model = _str_or_none(getattr(response, "model", None))
        call.usage = server_usage(response)
        if call.operation != semconv.OPERATION_EMBEDDINGS:
            call.output_texts = response_output_texts(response)
            call.finish_reasons = finish_reasons(response)
        self._finalizer.submit(lambda: self._finalize(call))

    def complete_stream(self, call: LLMCall, stream: StreamAccumulator, error: BaseException | None) -> None:
        call.end_ns = time.time_ns()
        call.reached_server = True
        call.response_id = stream.response_id
        call.response_model = stream.response_model
        call.usage = stream.usage
        call.output_texts = stream.output_texts()
        call.finish_reasons = stream.finish_reasons()
        if error is not None:
            call.error_type = type(error).__qualname__
        self._finalizer.submit(lambda: self._finalize(call))

    def fail(self, call: LLMCall, error: BaseException) -> None:
        call.end_ns = time.time_ns()
        call.error_type = _error_type(error)
        self._finalizer.submit(lambda: self._finalize(call))

    # --- background thread -----------------------------------------------------

    def _finalize(self, call: LLMCall) -> None:
        span = call.span
        try:
            self._record(call)
            if not call.hop and self._usage_recorded is not None:  # a hop adds no usage
                self._usage_recorded()
        finally:
            span.end(end_time=call.end_ns)
            if call.on_finished is not None:
                try:
                    call.on_finished()
                except Exception as exc:
                    report_internal_error("call finished hook", exc)

    def _record(self, call: LLMCall) -> None:
        span = call.span
        pricing_model = self._pricing_model(call)
        local: LocalCounts | None = None
        if call.reached_server and (call.usage is None or self._wants_drift_count(call)):
            try:
                local = self._count_locally(pricing_model, call)
            except Exception as exc:  # odd input must not cost the call its usage record
                report_internal_error("local token count", exc)
                local = None if call.usage is not None else _estimate_locally(call)

        if call.usage is not None:
            billed_in, billed_out, source = call.usage.input_tokens, call.usage.output_tokens, semconv.SOURCE_SERVER
        elif local is not None:
            billed_in, billed_out, source = local.input_tokens, local.output_tokens, local.source
        else:  # failed before the server answered: nothing billable
            billed_in, billed_out, source = 0, 0, None

        _yield_gil()
        cost = cost_of(self._catalog.price_for(pricing_model), billed_in, billed_out) if call.reached_server else None

        attributes: AttributeMap = {}
        _put(attributes, semconv.GEN_AI_RESPONSE_MODEL, call.response_model)
        _put(attributes, semconv.GEN_AI_RESPONSE_ID, call.response_id)
        if call.finish_reasons:
            attributes[semconv.GEN_AI_RESPONSE_FINISH_REASONS] = call.finish_reasons
        if call.reached_server:
            attributes[semconv.GEN_AI_USAGE_INPUT_TOKENS] = billed_in
            if call.operation != semconv.OPERATION_EMBEDDINGS:
                attributes[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] = billed_out
            _put(attributes, semconv.TM_USAGE_SOURCE, source)
        if local is not None:
            attributes[semconv.TM_LOCAL_INPUT_TOKENS] = local.input_tokens
            if call.operation != semconv.OPERATION_EMBEDDINGS:
                attributes[semconv.TM_LOCAL_OUTPUT_TOKENS] = local.output_tokens
            attributes[semconv.TM_LOCAL_SOURCE] = local.source
            attributes[semconv.TM_TOKENIZER] = local.tokenizer
        if cost is not None:
            attributes.update(_cost_attributes(cost))
        attributes.update(self._content_attributes(call))
        if call.error_type:
            attributes[semconv.ERROR_TYPE] = call.error_type
            call.span.set_status(Status(StatusCode.ERROR, call.error_type))
        span.set_attributes(attributes)
        _yield_gil()
        self._record_metrics(call, billed_in, billed_out, source, cost)

    def _wants_drift_count(self, call: LLMCall) -> bool:
        """Count locally beside the server's usage? Sampling is by trace id, so it is stable."""
        mode = self._options.count_locally
        if mode == "always":
            return True
        if mode != "sample" or self._options.drift_sample_rate <= 0:
            return False
        trace_id = call.span.get_span_context().trace_id
        return (trace_id & _LOW_64_BITS) < self._options.drift_sample_rate * 2**64

    def _pricing_model(self, call: LLMCall) -> str:
        """The catalog name to count and price by: the requested model if known, else the served one."""
        if (
            self._catalog.lookup(call.request_model) is None
            and call.response_model
            and self._catalog.lookup(call.response_model) is not None
        ):
            return call.response_model
        return call.request_model

    def _count_locally(self, model: str, call: LLMCall) -> LocalCounts:
        counts: list[TokenCount] = []
        if call.operation == semconv.OPERATION_CHAT:
            counts.append(self._registry.count_messages(model, call.request_input))
        else:
            for item in call.request_input:
                if isinstance(item, str):
                    counts.append(self._registry.count_prompt(model, item))
                else:  # pre-tokenized input: the ids are the tokens
                    counts.append(TokenCount(tokens=len(item), source=semconv.SOURCE_TOKENIZER, tokenizer="ids"))
        input_tokens = sum(c.tokens for c in counts)
        output_counts = [self._registry.count_text(model, text) for text in call.output_texts if text]
        counts.extend(output_counts)
        source = (
            semconv.SOURCE_ESTIMATE
            if any(c.source == semconv.SOURCE_ESTIMATE for c in counts)
            else semconv.SOURCE_TOKENIZER
        )
        tokenizer = next((c.tokenizer for c in counts if c.tokenizer != "ids"), "ids")
        return LocalCounts(input_tokens, sum(c.tokens for c in output_counts), source, tokenizer)

    def _content_attributes(self, call: LLMCall) -> AttributeMap:
        attributes: AttributeMap = {semconv.TM_HASH_ALGORITHM: self._hasher.algorithm}
        if call.request_input:
            attributes[semconv.TM_PROMPT_HASH] = self._hasher.hash_text(canonical_json(call.request_input))
        if call.output_texts:
            attributes[semconv.TM_COMPLETION_HASH] = self._hasher.hash_text("\x1e".join(call.output_texts))
        if self._options.capture_content:
            attributes[semconv.GEN_AI_INPUT_MESSAGES] = json.dumps(call.request_input, ensure_ascii=False)
            if call.output_texts:
                outputs = [{"role": "assistant", "content": text} for text in call.output_texts]
                attributes[semconv.GEN_AI_OUTPUT_MESSAGES] = json.dumps(outputs, ensure_ascii=False)
        return attributes

    def _record_metrics(
        self, call: LLMCall, billed_in: int, billed_out: int, source: str | None, cost: Cost | None
    ) -> None:
        spec: AttributeMap = {
            semconv.GEN_AI_OPERATION_NAME: call.operation,
            semconv.GEN_AI_PROVIDER_NAME: call.provider,
            semconv.GEN_AI_REQUEST_MODEL: call.request_model,
        }
        _put(spec, semconv.GEN_AI_RESPONSE_MODEL, call.response_model)
        _put(spec, semconv.SERVER_ADDRESS, call.server_address)
        _put(spec, semconv.SERVER_PORT, call.server_port)
        duration_attributes = dict(spec)
        _put(duration_attributes, semconv.ERROR_TYPE, call.error_type)
        if call.end_ns is not None:
            duration_s = max(0, call.end_ns - call.start_ns) / 1e9
            self._instruments.operation_duration.record(duration_s, duration_attributes)

        if call.hop:  # billed where it is forwarded to; the conventions' client histogram stays
            if call.reached_server and source is not None:
                for token_type, count in _token_types(call, billed_in, billed_out):
                    self._instruments.token_usage.record(count, {**spec, semconv.GEN_AI_TOKEN_TYPE: token_type})
            return
        accounting: AttributeMap = {
            semconv.GEN_AI_OPERATION_NAME: call.operation,
            semconv.GEN_AI_PROVIDER_NAME: call.provider,
            semconv.GEN_AI_REQUEST_MODEL: call.request_model,
        }
        _put(accounting, semconv.GEN_AI_RESPONSE_MODEL, call.response_model)
        accounting.update(_attribution_attributes(call.attribution, include_session=False))

        calls_attributes = dict(accounting)
        _put(calls_attributes, semconv.ERROR_TYPE, call.error_type)
        _put(calls_attributes, semconv.TM_USAGE_SOURCE, source)
        if cost is not None:
            calls_attributes[semconv.TM_COST_UNPRICED] = cost.unpriced
        self._instruments.usage_calls.add(1, calls_attributes)
        if not call.reached_server or source is None:
            return

        token_attributes = dict(accounting)
        token_attributes[semconv.TM_USAGE_SOURCE] = source
        for token_type, count in _token_types(call, billed_in, billed_out):
            self._instruments.token_usage.record(count, {**spec, semconv.GEN_AI_TOKEN_TYPE: token_type})
            self._instruments.usage_tokens.add(count, {**token_attributes, semconv.GEN_AI_TOKEN_TYPE: token_type})

        if cost is not None and cost.amount is not None and cost.currency:
            cost_attributes = dict(accounting)
            cost_attributes[semconv.TM_COST_CURRENCY] = cost.currency
            cost_attributes[semconv.TM_COST_VIRTUAL] = cost.virtual
            self._instruments.usage_cost.add(cost_units(cost.amount), cost_attributes)


def _yield_gil() -> None:
    """Let a caller thread that is waiting for the GIL run now.

    This runs on the background thread; without a pause between its phases a waiting
    caller thread could wait for the rest of a call's finalization (hundreds of µs).
    """
    time.sleep(0)


def _estimate_locally(call: LLMCall) -> LocalCounts:
    """Last resort when the tokenizer path failed on this input: a labelled estimate."""
    input_tokens = estimate_tokens(canonical_json(call.request_input))
    output_tokens = sum(estimate_tokens(text) for text in call.output_texts)
    return LocalCounts(input_tokens, output_tokens, semconv.SOURCE_ESTIMATE, ESTIMATE_LABEL)


def _attribution_attributes(who: Attribution, include_session: bool = True) -> AttributeMap:
    attributes: AttributeMap = {}
    _put(attributes, semconv.ENDUSER_ID, who.user)
    _put(attributes, semconv.TM_DEPARTMENT, who.department)
    _put(attributes, semconv.TM_APP, who.app)
    if include_session:
        _put(attributes, semconv.GEN_AI_CONVERSATION_ID, who.session)
    return attributes


def _cost_attributes(cost: Cost) -> AttributeMap:
    attributes: AttributeMap = {semconv.TM_COST_UNPRICED: cost.unpriced}
    if cost.amount is not None and cost.currency:
        attributes[semconv.TM_COST] = str(cost.amount)
        attributes[semconv.TM_COST_CURRENCY] = cost.currency
        attributes[semconv.TM_COST_VIRTUAL] = cost.virtual
    return attributes


def _token_types(call: LLMCall, billed_in: int, billed_out: int) -> list[tuple[str, int]]:
    if call.operation == semconv.OPERATION_EMBEDDINGS:
        return [(semconv.TOKEN_TYPE_INPUT, billed_in)]
    return [(semconv.TOKEN_TYPE_INPUT, billed_in), (semconv.TOKEN_TYPE_OUTPUT, billed_out)]


def _put(attributes: AttributeMap, key: str, value: Any) -> None:
    if value is not None and value != "":
        attributes[key] = value


def _number(kwargs: Mapping[str, Any], *names: str) -> int | float | None:
    for name in names:
        value = kwargs.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return value
    return None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _error_type(error: BaseException) -> str:
    status = getattr(error, "status_code", None)
    return str(status) if isinstance(status, int) else type(error).__qualname__
