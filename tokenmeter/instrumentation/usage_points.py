"""The metric points one metered call adds, and the thin writer that records them.

`usage_points` is pure: from the call and its `UsageRecord` to the points of the
GenAI conventions' histograms (duration, token usage: low-cardinality, per model and
server) and of tokenmeter's usage counters (calls, tokens, cost: per user, department,
app and model). `write_points` hands them to the instruments.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, Literal

from tokenmeter import semconv
from tokenmeter.instrumentation.attribute_maps import AttributeMap, attribution_attributes, put
from tokenmeter.instrumentation.billing import UsageRecord
from tokenmeter.instrumentation.llm_call import LLMCall
from tokenmeter.instrumentation.usage_metrics import Instruments
from tokenmeter.pricing import cost_units

InstrumentName = Literal["operation_duration", "token_usage", "usage_calls", "usage_tokens", "usage_cost"]


@dataclass(frozen=True)
class MetricPoint:
    """One value for one instrument of `Instruments`, with its attributes."""

    instrument: InstrumentName
    value: int | float
    attributes: AttributeMap


_RECORDERS: Final[dict[InstrumentName, Callable[[Instruments, MetricPoint], None]]] = {
    "operation_duration": lambda i, p: i.operation_duration.record(p.value, p.attributes),
    "token_usage": lambda i, p: i.token_usage.record(p.value, p.attributes),
    "usage_calls": lambda i, p: i.usage_calls.add(p.value, p.attributes),
    "usage_tokens": lambda i, p: i.usage_tokens.add(p.value, p.attributes),
    "usage_cost": lambda i, p: i.usage_cost.add(p.value, p.attributes),
}


def write_points(instruments: Instruments, points: Iterable[MetricPoint]) -> None:
    for point in points:
        _RECORDERS[point.instrument](instruments, point)


def usage_points(call: LLMCall, record: UsageRecord) -> list[MetricPoint]:
    """Duration and token histograms for every call; the usage counters unless it is a hop."""
    spec = _spec_attributes(call)
    points: list[MetricPoint] = []
    if call.end_ns is not None:
        duration_attributes = dict(spec)
        put(duration_attributes, semconv.ERROR_TYPE, call.error_type)
        duration_s = max(0, call.end_ns - call.start_ns) / 1e9
        points.append(MetricPoint("operation_duration", duration_s, duration_attributes))
    if call.hop:  # billed where it is forwarded to; the conventions' client histogram stays
        if record.billed:
            points.extend(_token_histogram(call, record, spec))
        return points
    return points + _accounting_points(call, record, spec)


def _accounting_points(call: LLMCall, record: UsageRecord, spec: AttributeMap) -> list[MetricPoint]:
    """One call counted (failed ones too, with error.type); billed tokens and cost when there is a bill."""
    accounting: AttributeMap = {
        semconv.GEN_AI_OPERATION_NAME: call.operation,
        semconv.GEN_AI_PROVIDER_NAME: call.provider,
        semconv.GEN_AI_REQUEST_MODEL: call.request_model,
    }
    put(accounting, semconv.GEN_AI_RESPONSE_MODEL, call.response_model)
    accounting.update(attribution_attributes(call.attribution, include_session=False))
    calls_attributes = dict(accounting)
    put(calls_attributes, semconv.ERROR_TYPE, call.error_type)
    put(calls_attributes, semconv.TM_USAGE_SOURCE, record.source)
    if record.cost is not None:
        calls_attributes[semconv.TM_COST_UNPRICED] = record.cost.unpriced
    points = [MetricPoint("usage_calls", 1, calls_attributes)]
    if not record.billed:
        return points
    token_attributes = dict(accounting)
    put(token_attributes, semconv.TM_USAGE_SOURCE, record.source)
    for token_type, count in _token_types(call.operation, record):
        points.append(MetricPoint("token_usage", count, {**spec, semconv.GEN_AI_TOKEN_TYPE: token_type}))
        points.append(MetricPoint("usage_tokens", count, {**token_attributes, semconv.GEN_AI_TOKEN_TYPE: token_type}))
    cost = record.cost
    if cost is not None and cost.amount is not None and cost.currency:
        cost_attributes = dict(accounting)
        cost_attributes[semconv.TM_COST_CURRENCY] = cost.currency
        cost_attributes[semconv.TM_COST_VIRTUAL] = cost.virtual
        points.append(MetricPoint("usage_cost", cost_units(cost.amount), cost_attributes))
    return points


def _spec_attributes(call: LLMCall) -> AttributeMap:
    """The conventions' low-cardinality attributes: operation, provider, models, server."""
    spec: AttributeMap = {
        semconv.GEN_AI_OPERATION_NAME: call.operation,
        semconv.GEN_AI_PROVIDER_NAME: call.provider,
        semconv.GEN_AI_REQUEST_MODEL: call.request_model,
    }
    put(spec, semconv.GEN_AI_RESPONSE_MODEL, call.response_model)
    put(spec, semconv.SERVER_ADDRESS, call.server_address)
    put(spec, semconv.SERVER_PORT, call.server_port)
    return spec


def _token_histogram(call: LLMCall, record: UsageRecord, spec: AttributeMap) -> list[MetricPoint]:
    return [
        MetricPoint("token_usage", count, {**spec, semconv.GEN_AI_TOKEN_TYPE: token_type})
        for token_type, count in _token_types(call.operation, record)
    ]


def _token_types(operation: str, record: UsageRecord) -> list[tuple[str, int]]:
    if operation == semconv.OPERATION_EMBEDDINGS:
        return [(semconv.TOKEN_TYPE_INPUT, record.input_tokens)]
    return [(semconv.TOKEN_TYPE_INPUT, record.input_tokens), (semconv.TOKEN_TYPE_OUTPUT, record.output_tokens)]
