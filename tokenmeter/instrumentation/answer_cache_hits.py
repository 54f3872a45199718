"""The answer cache in the OpenAI SDK wrappers (docs/answer-cache.md): a hit answers a chat call without
an LLM call, before the quota check and before any HTTP request; a new answer is stored once its call is
recorded, on the background finisher, never on the caller's path.

A hit is metered as a call: its span carries the request's attributes as usual, 0 billed tokens, cost 0 in
the cached answer's currency, ``tokenmeter.cache.hit`` and what the hit saved (``tokenmeter.cache.saved.*``:
the tokens and cost of the call that produced the answer); the usage counters count one call and 0 tokens.
A failure of the cache is contained: the call goes to the model as if there were no cache.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Final

from tokenmeter import semconv
from tokenmeter.answer_cache.cache_keys import cacheable
from tokenmeter.answer_cache.cached_responses import (
    CachedAsyncStream,
    CachedStream,
    cached_chunks,
    cached_completion,
    new_response_id,
)
from tokenmeter.answer_cache.entries import CachedAnswer
from tokenmeter.answer_cache.sealed_cache import AnswerCache
from tokenmeter.instrumentation.attribute_maps import AttributeMap
from tokenmeter.instrumentation.billing import UsageRecord
from tokenmeter.instrumentation.llm_call import LLMCall
from tokenmeter.instrumentation.metering import Metering
from tokenmeter.instrumentation.openai_payload import caller_asked_for_usage
from tokenmeter.instrumentation.safety import contained
from tokenmeter.pricing import UNPRICED, Cost

# `with_raw_response` / `with_streaming_response` callers expect the HTTP response: never served from the cache.
_RAW_RESPONSE_HEADER: Final = "x-stainless-raw-response"
STORED_FINISH_REASON: Final = "stop"


def answer_from_cache(
    answers: AnswerCache | None, metering: Metering, call: LLMCall, kwargs: Mapping[str, Any], is_async: bool
) -> Any | None:
    """What the caller gets for a hit (the call is then metered as one); None: the call goes to the model.

    On a miss of a request the cache may answer later, its answer is stored once the call is recorded.
    """
    if answers is None or not _may_use_cache(call, kwargs):
        return None
    with contained("answer cache lookup"):
        key = answers.key_for(call.request_model, call.request_input, kwargs)
        answer = answers.get(key)
        if answer is None:
            call.on_billed = functools.partial(store_answer, answers, key)
            return None
        return _serve(metering, call, answer, kwargs, is_async)
    return None


def _may_use_cache(call: LLMCall, kwargs: Mapping[str, Any]) -> bool:
    if call.operation != semconv.OPERATION_CHAT or call.hop:  # a hop's answer is the forwarded call's to cache
        return False
    headers = kwargs.get("extra_headers")
    if isinstance(headers, Mapping) and any(str(name).lower() == _RAW_RESPONSE_HEADER for name in headers):
        return False
    return cacheable(kwargs)


def _serve(metering: Metering, call: LLMCall, answer: CachedAnswer, kwargs: Mapping[str, Any], is_async: bool) -> Any:
    response_id = new_response_id()
    completion = cached_completion(answer, response_id)
    served: Any = completion
    if call.stream:
        # The caller's own include_usage, not one TOKENMETER_STREAM_USAGE=inject added (that chunk is hidden).
        asked = caller_asked_for_usage(kwargs) and not call.hide_usage_chunk
        chunks = cached_chunks(answer, response_id, include_usage=asked)
        served = CachedAsyncStream(chunks) if is_async else CachedStream(chunks)
    call.span.set_attributes(saved_attributes(answer))
    call.decided_bill = hit_bill(answer)
    metering.complete(call, completion)
    return served


def hit_bill(answer: CachedAnswer) -> UsageRecord:
    """Nothing billed: 0 tokens (exact, so `server` as their source), cost 0 in the answer's currency."""
    cost = UNPRICED
    if answer.currency is not None:
        cost = Cost(amount=Decimal(0), currency=answer.currency, virtual=answer.virtual, unpriced=False)
    return UsageRecord(input_tokens=0, output_tokens=0, source=semconv.SOURCE_SERVER, local=None, cost=cost)


def saved_attributes(answer: CachedAnswer) -> AttributeMap:
    attributes: AttributeMap = {
        semconv.TM_CACHE_HIT: True,
        semconv.TM_CACHE_SAVED_INPUT_TOKENS: answer.input_tokens,
        semconv.TM_CACHE_SAVED_OUTPUT_TOKENS: answer.output_tokens,
    }
    saved = answer.saved_cost()
    if saved is not None:
        attributes[semconv.TM_CACHE_SAVED_COST] = str(saved)
    return attributes


def store_answer(answers: AnswerCache, key: str, call: LLMCall, record: UsageRecord) -> None:
    """Keep a finished call's answer (on the background finisher): only a whole, plain, successful one."""
    answer = answer_to_keep(call, record, answers.now())
    if answer is not None:
        answers.put(key, answer)


def answer_to_keep(call: LLMCall, record: UsageRecord, now: float) -> CachedAnswer | None:
    """The entry for a call's answer; None unless it succeeded, stopped of itself ("stop"), had one choice
    and only text (no tool calls, no reasoning), and was billed."""
    whole = call.error_type is None and call.finish_reasons == [STORED_FINISH_REASON] and len(call.output_texts) == 1
    if not whole or call.output_extras or not record.billed or not call.output_texts[0].strip():
        return None
    cost = record.cost
    priced = cost is not None and cost.amount is not None and cost.currency is not None
    return CachedAnswer(
        text=call.output_texts[0],
        model=call.response_model or call.request_model,
        finish_reason=STORED_FINISH_REASON,
        input_tokens=record.input_tokens,
        output_tokens=record.output_tokens,
        cost=str(cost.amount) if priced and cost is not None else None,
        currency=cost.currency if priced and cost is not None else None,
        virtual=bool(priced and cost is not None and cost.virtual),
        stored_at=now,
    )
