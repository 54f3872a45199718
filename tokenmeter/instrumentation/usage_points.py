"""The metric points one metered call adds, and the thin writer that records them.

`usage_points` is pure: from the call and its `UsageRecord` to the points of the
GenAI conventions' histograms (duration, token usage: low-cardinality, per model and
server) and of tokenmeter's usage counters (calls, tokens, cost: per user, department,
app and model). `write_points` hands them to the instruments.

When the server reported how much of the input it read from or wrote to its cache, the
input is counted in parts (``gen_ai.token.cache`` none / read / creation, zero parts left
out); when it reported reasoning, the output too (``gen_ai.token.phase`` response /
reasoning). The parts of a call add up to its total, so any sum over ``gen_ai.token.type``
stays what it was; the conventions' histogram keeps one point per token type and call.

The attribute maps depend only on what kind of call it was (operation, models, server,
who, outcome, usage source, currency, which splits were reported), not on its numbers,
so they are built once per kind (`_SeriesMaps`, kept in a bounded memo) and the same map
objects are reused by every call of that kind: building ~40 attributes per call cost more
than the SDK's own work for the counters, and reused maps let the usage tally key a
series by its map.
"""

from __future__ import annotations

import threading
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

# A part of a token type on the usage token counter: (gen_ai.token.type, its gen_ai.token.cache or .phase value);
# None: the whole total, no split reported.
_Part = tuple[str, str | None]
_CACHE_PARTS: Final = (semconv.TOKEN_CACHE_NONE, semconv.TOKEN_CACHE_READ, semconv.TOKEN_CACHE_CREATION)
_PHASE_PARTS: Final = (semconv.TOKEN_PHASE_RESPONSE, semconv.TOKEN_PHASE_REASONING)
# The part values a kind of call may count: by token type and whether its split was reported.
_PART_VALUES: Final[dict[tuple[str, bool], tuple[str | None, ...]]] = {
    (semconv.TOKEN_TYPE_INPUT, False): (None,),
    (semconv.TOKEN_TYPE_INPUT, True): _CACHE_PARTS,
    (semconv.TOKEN_TYPE_OUTPUT, False): (None,),
    (semconv.TOKEN_TYPE_OUTPUT, True): _PHASE_PARTS,
}


@dataclass(frozen=True)
class MetricPoint:
    """One value for one instrument of `Instruments`, with its attributes (shared by calls of a kind: read only)."""

    instrument: InstrumentName
    value: int | float
    attributes: AttributeMap


_RECORDERS: Final[dict[InstrumentName, Callable[[Instruments, MetricPoint], None]]] = {
    "operation_duration": lambda i, p: i.operation_duration.record(p.value, p.attributes),
    "token_usage": lambda i, p: i.token_usage.record(p.value, p.attributes),
    "usage_calls": lambda i, p: i.add_usage(i.usage_calls, p.value, p.attributes),
    "usage_tokens": lambda i, p: i.add_usage(i.usage_tokens, p.value, p.attributes),
    "usage_cost": lambda i, p: i.add_usage(i.usage_cost, p.value, p.attributes),
}


def write_points(instruments: Instruments, points: Iterable[MetricPoint]) -> None:
    for point in points:
        _RECORDERS[point.instrument](instruments, point)


def usage_points(call: LLMCall, record: UsageRecord) -> list[MetricPoint]:
    """Duration and token histograms for every call; the usage counters unless it is a hop."""
    maps = _series_maps(call, record)
    points: list[MetricPoint] = []
    if call.end_ns is not None:
        duration_s = max(0, call.end_ns - call.start_ns) / 1e9
        points.append(MetricPoint("operation_duration", duration_s, maps.duration))
    if not call.hop:  # a hop is billed where it is forwarded to; the conventions' client histograms stay
        points.append(MetricPoint("usage_calls", 1, maps.calls))
    if not record.billed:
        return points
    for (_token_type, count), spec_map in zip(_token_types(call.operation, record), maps.token_usage, strict=True):
        points.append(MetricPoint("token_usage", count, spec_map))
    if not call.hop:
        for part, count in _token_parts(call.operation, record):
            points.append(MetricPoint("usage_tokens", count, maps.tokens[part]))
    cost = record.cost
    if not call.hop and maps.cost is not None and cost is not None and cost.amount is not None:
        points.append(MetricPoint("usage_cost", cost_units(cost.amount), maps.cost))
    return points


@dataclass(frozen=True)
class _SeriesMaps:
    """The attribute maps of every point a kind of call adds."""

    duration: AttributeMap
    calls: AttributeMap
    token_usage: tuple[AttributeMap, ...]  # per token type, in `_token_types` order
    tokens: dict[_Part, AttributeMap]  # per part of a token type that `_token_parts` may count
    cost: AttributeMap | None


_MEMO_SIZE: Final = 4096  # kinds of call remembered; cleared when full (a new kind is only rebuilt)
_memo: dict[tuple[object, ...], _SeriesMaps] = {}
_memo_lock = threading.Lock()


def _series_maps(call: LLMCall, record: UsageRecord) -> _SeriesMaps:
    who = call.attribution
    cost = record.cost
    key = (
        call.operation, call.provider, call.request_model, call.response_model, call.server_address,
        call.server_port, call.error_type, who.user, who.department, who.app, record.source,
        None if cost is None else (cost.unpriced, cost.currency, cost.virtual, cost.amount is not None),
        _splits(record),
    )  # fmt: skip
    maps = _memo.get(key)
    if maps is None:
        maps = _build_series_maps(call, record)
        with _memo_lock:
            if len(_memo) >= _MEMO_SIZE:
                _memo.clear()
            _memo[key] = maps
    return maps


def _build_series_maps(call: LLMCall, record: UsageRecord) -> _SeriesMaps:
    spec = _spec_attributes(call)
    duration = dict(spec)
    put(duration, semconv.ERROR_TYPE, call.error_type)
    accounting = _accounting_attributes(call)
    calls = dict(accounting)
    put(calls, semconv.ERROR_TYPE, call.error_type)
    put(calls, semconv.TM_USAGE_SOURCE, record.source)
    cost = record.cost
    if cost is not None:
        calls[semconv.TM_COST_UNPRICED] = cost.unpriced
    token_base = dict(accounting)
    put(token_base, semconv.TM_USAGE_SOURCE, record.source)
    token_types = [token_type for token_type, _ in _token_types(call.operation, record)]
    splits = dict(zip((semconv.TOKEN_TYPE_INPUT, semconv.TOKEN_TYPE_OUTPUT), _splits(record), strict=True))
    tokens = {
        (token_type, part): {**token_base, semconv.GEN_AI_TOKEN_TYPE: token_type, **_part_attribute(part)}
        for token_type in token_types
        for part in _PART_VALUES[token_type, splits[token_type]]
    }
    cost_map: AttributeMap | None = None
    if cost is not None and cost.amount is not None and cost.currency:
        cost_map = {**accounting, semconv.TM_COST_CURRENCY: cost.currency, semconv.TM_COST_VIRTUAL: cost.virtual}
    return _SeriesMaps(
        duration=duration,
        calls=calls,
        token_usage=tuple({**spec, semconv.GEN_AI_TOKEN_TYPE: token_type} for token_type in token_types),
        tokens=tokens,
        cost=cost_map,
    )


def _accounting_attributes(call: LLMCall) -> AttributeMap:
    """What the usage counters are per: operation, provider, models, user, department, app (no session)."""
    accounting: AttributeMap = {
        semconv.GEN_AI_OPERATION_NAME: call.operation,
        semconv.GEN_AI_PROVIDER_NAME: call.provider,
        semconv.GEN_AI_REQUEST_MODEL: call.request_model,
    }
    put(accounting, semconv.GEN_AI_RESPONSE_MODEL, call.response_model)
    accounting.update(attribution_attributes(call.attribution, include_session=False))
    return accounting


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


def _token_types(operation: str, record: UsageRecord) -> list[tuple[str, int]]:
    if operation == semconv.OPERATION_EMBEDDINGS:
        return [(semconv.TOKEN_TYPE_INPUT, record.input_tokens)]
    return [(semconv.TOKEN_TYPE_INPUT, record.input_tokens), (semconv.TOKEN_TYPE_OUTPUT, record.output_tokens)]


def _splits(record: UsageRecord) -> tuple[bool, bool]:
    """Whether the server reported a cache split of the input and a reasoning split of the output."""
    reported = record.reported
    return (reported.cache_split, reported.reasoning_split) if reported is not None else (False, False)


def _part_attribute(part: str | None) -> AttributeMap:
    if part is None:
        return {}
    return {semconv.GEN_AI_TOKEN_CACHE if part in _CACHE_PARTS else semconv.GEN_AI_TOKEN_PHASE: part}


def _token_parts(operation: str, record: UsageRecord) -> list[tuple[_Part, int]]:
    """The usage token counter's points: each token type whole, or in the parts the server reported.

    Zero parts are left out, except the plain one (none / response) when every part is zero, so a
    call with a split still adds a point of its token type, as one without a split does.
    """
    with_output = operation != semconv.OPERATION_EMBEDDINGS
    cache_split, reasoning_split = _splits(record)
    if not (cache_split or reasoning_split):  # most calls: no TokenCounts to build
        parts: list[tuple[_Part, int]] = [((semconv.TOKEN_TYPE_INPUT, None), record.input_tokens)]
        return [*parts, ((semconv.TOKEN_TYPE_OUTPUT, None), record.output_tokens)] if with_output else parts
    tokens = record.tokens
    inputs: list[tuple[str | None, int]] = [(None, tokens.input)]
    if cache_split:
        fresh = tokens.input - tokens.cache_read - tokens.cache_creation
        inputs = [(semconv.TOKEN_CACHE_NONE, fresh), (semconv.TOKEN_CACHE_READ, tokens.cache_read),
                  (semconv.TOKEN_CACHE_CREATION, tokens.cache_creation)]  # fmt: skip
    parts = _nonzero(semconv.TOKEN_TYPE_INPUT, inputs)
    if not with_output:
        return parts
    outputs: list[tuple[str | None, int]] = [(None, tokens.output)]
    if reasoning_split:
        outputs = [(semconv.TOKEN_PHASE_RESPONSE, tokens.output - tokens.reasoning),
                   (semconv.TOKEN_PHASE_REASONING, tokens.reasoning)]  # fmt: skip
    return parts + _nonzero(semconv.TOKEN_TYPE_OUTPUT, outputs)


def _nonzero(token_type: str, parts: list[tuple[str | None, int]]) -> list[tuple[_Part, int]]:
    """The parts with tokens; the first (plain) one alone with 0 when none has any."""
    kept = [((token_type, part), count) for part, count in parts if count]
    return kept or [((token_type, parts[0][0]), 0)]
