"""The attributes on a metered call's span: the request's at start, the outcome and the bill at the end.

Pure functions from the call and its `UsageRecord` to attribute maps; `Metering`
puts them on the span. Names come from `tokenmeter.semconv`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC
from typing import Any, Final

from tokenmeter import semconv
from tokenmeter.instrumentation.attribute_maps import AttributeMap, attribution_attributes, put
from tokenmeter.instrumentation.attribution import Attribution
from tokenmeter.instrumentation.billing import UsageRecord
from tokenmeter.instrumentation.content_hash import ContentHasher, canonical_json
from tokenmeter.instrumentation.llm_call import LLMCall
from tokenmeter.instrumentation.openai_payload import ServerUsage
from tokenmeter.pricing import Cost

# The parts of the billed counts a server may report, by the attribute that carries each (input parts first).
_INPUT_PARTS: Final = (
    (semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS, "cache_read"),
    (semconv.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS, "cache_creation"),
    (semconv.GEN_AI_USAGE_AUDIO_INPUT_TOKENS, "audio_input"),
    (semconv.GEN_AI_USAGE_IMAGE_INPUT_TOKENS, "image_input"),
)
_OUTPUT_PARTS: Final = (
    (semconv.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS, "reasoning"),
    (semconv.GEN_AI_USAGE_AUDIO_OUTPUT_TOKENS, "audio_output"),
)


def request_attributes(
    operation: str,
    model: str,
    kwargs: Mapping[str, Any],
    server: tuple[str | None, int | None],
    *,
    who: Attribution,
    hop: bool,
) -> AttributeMap:
    """What the span starts with: the operation, the request's model and parameters, the server, who, which answer."""
    server_address, server_port = server
    attributes: AttributeMap = {
        semconv.GEN_AI_OPERATION_NAME: operation,
        semconv.GEN_AI_PROVIDER_NAME: semconv.PROVIDER_OPENAI,
        semconv.GEN_AI_REQUEST_MODEL: model,
        semconv.TM_STREAM: bool(kwargs.get("stream")),
    }
    put(attributes, semconv.SERVER_ADDRESS, server_address)
    put(attributes, semconv.SERVER_PORT, server_port)
    put(attributes, semconv.GEN_AI_REQUEST_MAX_TOKENS, _number(kwargs, "max_tokens", "max_completion_tokens"))
    put(attributes, semconv.GEN_AI_REQUEST_TEMPERATURE, _number(kwargs, "temperature"))
    put(attributes, semconv.GEN_AI_REQUEST_TOP_P, _number(kwargs, "top_p"))
    attributes.update(attribution_attributes(who))
    # The answer this call helps produce: on the span only, never on the counters (one series per answer).
    put(attributes, semconv.TM_MESSAGE_ID, who.message)
    if hop:
        attributes[semconv.TM_HOP] = True
    return attributes


def response_attributes(call: LLMCall) -> AttributeMap:
    """The served model, the response id and why generation stopped."""
    attributes: AttributeMap = {}
    put(attributes, semconv.GEN_AI_RESPONSE_MODEL, call.response_model)
    put(attributes, semconv.GEN_AI_RESPONSE_ID, call.response_id)
    if call.finish_reasons:
        attributes[semconv.GEN_AI_RESPONSE_FINISH_REASONS] = call.finish_reasons
    return attributes


def usage_attributes(record: UsageRecord, operation: str) -> AttributeMap:
    """The bill: billed counts, the parts the server reported, their source, the local counts, the cost.

    Embeddings have no output.
    """
    with_output = operation != semconv.OPERATION_EMBEDDINGS
    attributes: AttributeMap = {}
    if record.billed:
        attributes[semconv.GEN_AI_USAGE_INPUT_TOKENS] = record.input_tokens
        if with_output:
            attributes[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] = record.output_tokens
        if record.reported is not None:
            attributes.update(reported_part_attributes(record.reported, with_output))
        put(attributes, semconv.TM_USAGE_SOURCE, record.source)
    if record.local is not None:
        attributes[semconv.TM_LOCAL_INPUT_TOKENS] = record.local.input_tokens
        if with_output:
            attributes[semconv.TM_LOCAL_OUTPUT_TOKENS] = record.local.output_tokens
        attributes[semconv.TM_LOCAL_SOURCE] = record.local.source
        attributes[semconv.TM_TOKENIZER] = record.local.tokenizer
    if record.cost is not None:
        attributes.update(cost_attributes(record.cost))
    return attributes


def reported_part_attributes(usage: ServerUsage, with_output: bool) -> AttributeMap:
    """The parts of the billed counts the server reported (a part it did not report has no attribute)."""
    parts = _INPUT_PARTS + _OUTPUT_PARTS if with_output else _INPUT_PARTS
    attributes: AttributeMap = {}
    for name, part in parts:
        put(attributes, name, getattr(usage, part))
    return attributes


def cost_attributes(cost: Cost) -> AttributeMap:
    """The amount as an exact decimal string, with its currency; an unpriced call says so.

    A priced call also names the price it was computed with: its effective date (``tokenmeter.price.from``,
    ISO 8601 in UTC, ``datetime.fromisoformat`` reads it back) and its input-length tier, where it has them.
    """
    attributes: AttributeMap = {semconv.TM_COST_UNPRICED: cost.unpriced}
    if cost.amount is not None and cost.currency:
        attributes[semconv.TM_COST] = str(cost.amount)
        attributes[semconv.TM_COST_CURRENCY] = cost.currency
        attributes[semconv.TM_COST_VIRTUAL] = cost.virtual
        if cost.price_from is not None:
            attributes[semconv.TM_PRICE_FROM] = cost.price_from.astimezone(UTC).isoformat()
        put(attributes, semconv.TM_PRICE_TIER, cost.tier)
    return attributes


def content_attributes(call: LLMCall, hasher: ContentHasher, capture_content: bool) -> AttributeMap:
    """Hashes of prompt and completion (repeats can be found without the text); the text itself if captured."""
    attributes: AttributeMap = {semconv.TM_HASH_ALGORITHM: hasher.algorithm}
    if call.request_input:
        attributes[semconv.TM_PROMPT_HASH] = hasher.hash_text(canonical_json(call.request_input))
    if call.output_texts:
        attributes[semconv.TM_COMPLETION_HASH] = hasher.hash_text("\x1e".join(call.output_texts))
    if capture_content:
        attributes[semconv.GEN_AI_INPUT_MESSAGES] = json.dumps(call.request_input, ensure_ascii=False)
        if call.output_texts:
            outputs = [{"role": "assistant", "content": text} for text in call.output_texts]
            attributes[semconv.GEN_AI_OUTPUT_MESSAGES] = json.dumps(outputs, ensure_ascii=False)
    return attributes


def _number(kwargs: Mapping[str, Any], *names: str) -> int | float | None:
    for name in names:
        value = kwargs.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return value
    return None
