"""The Anthropic SDK (`messages.create`, `.stream`, `.parse`, `beta.messages`; sync and async) metered and checked.

The real anthropic SDK against a local fake of the Messages API (JSON and SSE, prompt-cache usage), the real OTel SDK
with in-memory readers; `anthropic_patch.patch` is wired with Metering as the instrumentor wires the other clients.
The quota gate with a stand-in enforcer and with a real one.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from anthropic_server import (
    CACHE_BASE,
    REPLY_CHUNKS,
    REPLY_TEXT,
    THINKING,
    THINKING_TOKENS,
    TOOL_INPUT_CHUNKS,
    TOOL_NAME,
    AnthropicServer,
)
from deciding_enforcer import DecidingEnforcer
from opentelemetry.trace import StatusCode
from patched_clients import Metered, metered_client
from telemetry_fixtures import make_telemetry

import tokenmeter
from tokenmeter import semconv
from tokenmeter.catalog import ModelCatalog
from tokenmeter.instrumentation import anthropic_patch
from tokenmeter.instrumentation.anthropic_payload import request_messages
from tokenmeter.instrumentation.quota.errors import QuotaDegraded, QuotaExceeded
from tokenmeter.settings import Settings
from tokenmeter.tokenizers import TokenizerRegistry
from tokenmeter.tokenizers.estimate import estimate_tokens

anthropic = pytest.importorskip("anthropic")

MODEL = "claude-sonnet-4-6"  # in the catalog: 3 / 15 USD per 1M, cache reads 0.30, 5-minute writes 3.75
SYSTEM = "你是一个乐于助人的助手。"
QUESTION = "什么是人工智能？Explain briefly, with `code`."
TOOLS = [{"name": TOOL_NAME, "description": "Look a term up.",
          "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}}}]  # fmt: skip
THINK = {"type": "enabled", "budget_tokens": 1024}


@pytest.fixture(scope="module")
def registry() -> TokenizerRegistry:
    return TokenizerRegistry(ModelCatalog.load(None))


@pytest.fixture
def metering_factory(registry: TokenizerRegistry) -> Iterator[Any]:
    with metered_client(anthropic_patch, registry) as start:
        yield start


@pytest.fixture
def metered(metering_factory: Any) -> Metered:
    return metering_factory()


@pytest.fixture
def server() -> Iterator[AnthropicServer]:
    with AnthropicServer() as running:
        yield running


def client(server: AnthropicServer) -> Any:
    return anthropic.Anthropic(base_url=server.url, api_key="test-key", max_retries=0)


def async_client(server: AnthropicServer) -> Any:
    return anthropic.AsyncAnthropic(base_url=server.url, api_key="test-key", max_retries=0)


def ask(text: str = QUESTION) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def cached_system(text: str) -> list[dict[str, Any]]:
    return [{"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}]


def expected_cost(uncached: int, output: int, read: int = 0, written: int = 0, model: str = MODEL) -> Decimal:
    """Each part at its own rate: uncached input, cache reads, 5-minute cache writes, output."""
    price = ModelCatalog.load(None).price_for(model)
    assert price is not None and price.cached_input is not None and price.cache_write is not None
    amount = uncached * price.input + read * price.cached_input + written * price.cache_write + output * price.output
    return amount / Decimal(price.per)


# --- not streamed ----------------------------------------------------------------------------------------------


def test_create_is_a_chat_call_billed_by_the_servers_usage(metered: Metered, server: AnthropicServer) -> None:
    with tokenmeter.attribution(user="alice", department="finance", app="kb", session="conv-1"):
        message = client(server).messages.create(model=MODEL, max_tokens=64, system=SYSTEM, messages=ask())
    assert message.content[0].text == REPLY_TEXT and message.usage.output_tokens == 64
    sent = server.requests[-1]
    assert (sent.body["system"], sent.body["messages"]) == (SYSTEM, ask())
    span = metered.only_span()
    assert span["name"] == f"chat {MODEL}" and span[semconv.GEN_AI_OPERATION_NAME] == "chat"
    assert span[semconv.GEN_AI_PROVIDER_NAME] == "anthropic"
    assert span[semconv.GEN_AI_REQUEST_MODEL] == span[semconv.GEN_AI_RESPONSE_MODEL] == MODEL
    assert span[semconv.GEN_AI_RESPONSE_ID] == "msg_test_1"
    assert span[semconv.GEN_AI_REQUEST_MAX_TOKENS] == 64
    assert tuple(span[semconv.GEN_AI_RESPONSE_FINISH_REASONS]) == ("end_turn",)
    assert span[semconv.TM_USAGE_SOURCE] == "server" and span[semconv.TM_STREAM] is False
    assert span[semconv.GEN_AI_USAGE_INPUT_TOKENS] == sent.input_tokens and sent.input_total == sent.input_tokens
    assert span[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == 64
    # Reported as 0 (the API always sends them): present, and 0.
    assert (
        span[semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS]
        == span[semconv.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS]
        == 0
    )
    # No tokenizer for Claude: the local count beside the server's is a labelled estimate.
    assert (span[semconv.TM_LOCAL_SOURCE], span[semconv.TM_TOKENIZER]) == ("estimate", "estimate+generic-overhead")
    assert span[semconv.TM_LOCAL_OUTPUT_TOKENS] == estimate_tokens(REPLY_TEXT)
    assert span[semconv.ENDUSER_ID] == "alice" and span[semconv.TM_DEPARTMENT] == "finance"
    assert span[semconv.GEN_AI_CONVERSATION_ID] == "conv-1"
    assert Decimal(span[semconv.TM_COST]) == expected_cost(sent.input_tokens, 64)
    assert span[semconv.TM_COST_CURRENCY] == "USD"
    assert metered.tokens() == {("alice", "input"): sent.input_tokens, ("alice", "output"): 64}
    points = metered.telemetry.points(semconv.METRIC_USAGE_TOKENS)
    assert {attributes[semconv.GEN_AI_PROVIDER_NAME] for attributes, _ in points} == {"anthropic"}


def test_cache_reads_and_writes_are_input_and_priced_at_their_rates(metered: Metered, server: AnthropicServer) -> None:
    """Anthropic's input_tokens excludes the cache parts; the bill's input includes them, each at its rate."""
    system = cached_system(SYSTEM * 20)
    with tokenmeter.attribution(user="carol"):
        first = client(server).messages.create(model=MODEL, max_tokens=10, system=system, messages=ask())
        second = client(server).messages.create(model=MODEL, max_tokens=12, system=system, messages=ask("again?"))
    written, read = server.requests
    assert first.usage.cache_creation_input_tokens == written.cache_creation == CACHE_BASE + len(SYSTEM * 20)
    assert second.usage.cache_read_input_tokens == read.cache_read == written.cache_creation
    spans = metered.spans()
    assert [span[semconv.GEN_AI_USAGE_INPUT_TOKENS] for span in spans] == [written.input_total, read.input_total]
    assert [(span[semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS], span[semconv.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS])
            for span in spans] == [(0, written.cache_creation), (read.cache_read, 0)]  # fmt: skip
    costs = [expected_cost(written.input_tokens, 10, written=written.cache_creation),
             expected_cost(read.input_tokens, 12, read=read.cache_read)]  # fmt: skip
    assert [Decimal(span[semconv.TM_COST]) for span in spans] == costs
    # e.g. the write: 1,264 tokens at 3.75 + 34 at 3 + 10 out at 15 per 1M, to the last digit
    assert costs[0] == (Decimal(written.cache_creation) * Decimal("3.75") + Decimal(written.input_tokens) * 3
                        + 10 * 15) / 1_000_000  # fmt: skip
    assert metered.totals(semconv.METRIC_USAGE_TOKENS, semconv.GEN_AI_TOKEN_TYPE, semconv.GEN_AI_TOKEN_CACHE) == {
        ("carol", "input", "none"): written.input_tokens + read.input_tokens,
        ("carol", "input", "creation"): written.cache_creation,
        ("carol", "input", "read"): read.cache_read,
        ("carol", "output", None): 22,
    }
    units = metered.totals(semconv.METRIC_USAGE_COST)[("carol",)]
    assert Decimal(units) / semconv.COST_UNITS_PER_CURRENCY_UNIT == sum(costs)


def test_without_cache_fields_the_input_is_input_tokens(metered: Metered, server: AnthropicServer) -> None:
    server.state.cache_fields = False  # an older API version
    client(server).messages.create(model=MODEL, max_tokens=8, system=cached_system(SYSTEM), messages=ask())
    span = metered.only_span()
    assert span[semconv.GEN_AI_USAGE_INPUT_TOKENS] == server.requests[-1].input_tokens
    assert semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS not in span
    assert Decimal(span[semconv.TM_COST]) == expected_cost(server.requests[-1].input_tokens, 8)


@pytest.mark.parametrize("stream", [False, True])
def test_thinking_and_tool_use_count_as_output(metered: Metered, server: AnthropicServer, stream: bool) -> None:
    result = client(server).messages.create(model=MODEL, max_tokens=50, messages=ask(), thinking=THINK, tools=TOOLS,
                                            stream=stream)  # fmt: skip
    if stream:
        list(result)
    else:
        assert [block.type for block in result.content] == ["thinking", "text", "tool_use"]
    span = metered.only_span()
    assert tuple(span[semconv.GEN_AI_RESPONSE_FINISH_REASONS]) == ("tool_use",)
    assert span[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == 50
    assert span[semconv.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS] == THINKING_TOKENS
    generated = THINKING + REPLY_TEXT + TOOL_NAME + "".join(TOOL_INPUT_CHUNKS)
    assert span[semconv.TM_LOCAL_OUTPUT_TOKENS] == estimate_tokens(generated)


def test_a_conversation_is_read_as_chat_messages_and_an_image_is_not_counted_as_text(
    metering_factory: Any, server: AnthropicServer
) -> None:
    image = "iVBORw0KGgo" * 4000  # 44,000 characters of base64
    conversation = [
        {"role": "user", "content": [{"type": "text", "text": "What is in this picture?"},
                                     {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                                  "data": image}},
                                     {"type": "document", "source": {"type": "text", "media_type": "text/plain",
                                                                     "data": "The grass is green."}}]},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "Hmm.", "signature": "c2ln"},
                                          {"type": "text", "text": "Let me look."},
                                          {"type": "tool_use", "id": "toolu_1", "name": "lookup",
                                           "input": {"query": "AI"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "AI is ..."},
                                     {"type": "text", "text": "Thanks"}]},
    ]  # fmt: skip
    system = [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}]
    assert request_messages({"system": system, "messages": conversation}) == [
        {"role": "system", "content": "Be brief.\nBe kind."},
        {"role": "user", "content": "What is in this picture?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": f"sha256:{hashlib.sha256(image.encode()).hexdigest()}"}},
        conversation[0]["content"][2],  # a plain-text document: text the model reads, kept
        {"role": "assistant", "content": "Let me look.",
         "tool_calls": [{"type": "function", "function": {"name": "lookup", "arguments": '{"query": "AI"}'},
                         "id": "toolu_1"}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "AI is ..."},
        {"role": "user", "content": "Thanks"},
    ]  # fmt: skip
    enforcer = DecidingEnforcer({})
    metered = metering_factory(enforcer_url=enforcer.url, enforcer_cache_seconds=0)
    try:
        client(server).messages.create(model=MODEL, max_tokens=5, system=system, messages=iter(conversation))
    finally:
        enforcer.close()
    assert server.requests[-1].body["messages"] == conversation  # a one-shot iterator is read once, sent whole
    # The quota check's estimate counts the image as its digest, not as 11,000 tokens of base64 text.
    (check,) = enforcer.checks
    assert 50 < check["input_tokens"] < 400 and check["max_output_tokens"] == 5
    span = metered.only_span()
    assert span[semconv.GEN_AI_USAGE_INPUT_TOKENS] == server.requests[-1].input_total
    # An image block is not a chat message the tokenizer path reads: no local count beside the server's.
    assert semconv.TM_LOCAL_INPUT_TOKENS not in span


@pytest.mark.parametrize(("model", "status", "error"), [("missing", 404, "NotFoundError"),
                                                        ("overloaded", 529, "OverloadedError")])  # fmt: skip
@pytest.mark.parametrize("stream", [False, True])
def test_an_error_response_is_raised_unchanged_and_bills_nothing(
    metered: Metered, server: AnthropicServer, model: str, status: int, error: str, stream: bool
) -> None:
    with pytest.raises(anthropic.APIStatusError) as raised:
        client(server).messages.create(model=model, max_tokens=5, messages=ask(), stream=stream)
    assert (raised.value.status_code, type(raised.value).__name__) == (status, error)
    span = metered.only_span()
    assert span["status"] == StatusCode.ERROR and span[semconv.ERROR_TYPE] == str(status)
    assert semconv.GEN_AI_USAGE_INPUT_TOKENS not in span
    assert metered.telemetry.points(semconv.METRIC_USAGE_TOKENS) == []


# --- streamed --------------------------------------------------------------------------------------------------


def test_a_stream_gives_the_caller_every_event_and_bills_its_usage(metered: Metered, server: AnthropicServer) -> None:
    events = list(client(server).messages.create(model=MODEL, max_tokens=30, messages=ask(), stream=True))
    assert [event.type for event in events] == ["message_start", "content_block_start",
                                                *["content_block_delta"] * len(REPLY_CHUNKS), "content_block_stop",
                                                "message_delta", "message_stop"]  # fmt: skip
    assert [event.delta.text for event in events if event.type == "content_block_delta"] == REPLY_CHUNKS
    span = metered.only_span()
    assert span[semconv.TM_STREAM] is True and span[semconv.TM_USAGE_SOURCE] == "server"
    # The input from message_start, the output from message_delta.
    assert (span[semconv.GEN_AI_USAGE_INPUT_TOKENS], span[semconv.GEN_AI_USAGE_OUTPUT_TOKENS]) == (
        server.requests[-1].input_total, 30)  # fmt: skip
    assert span[semconv.GEN_AI_RESPONSE_ID] == "msg_test_1" and span[semconv.GEN_AI_RESPONSE_MODEL] == MODEL
    assert tuple(span[semconv.GEN_AI_RESPONSE_FINISH_REASONS]) == ("end_turn",)
    assert span[semconv.TM_LOCAL_OUTPUT_TOKENS] == estimate_tokens(REPLY_TEXT)
    assert semconv.TM_STREAM_INCOMPLETE not in span


def test_the_stream_helper_is_metered_once_and_the_caller_gets_the_sdks_message_stream(
    metered: Metered, server: AnthropicServer
) -> None:
    """`messages.stream` posts without `create`: metered as it is entered, its MessageStream unchanged."""
    with tokenmeter.attribution(user="dan"):
        manager = client(server).messages.stream(model=MODEL, max_tokens=40, system=cached_system(SYSTEM),
                                                 messages=ask())  # fmt: skip
        assert isinstance(manager, anthropic.lib.streaming.MessageStreamManager) and server.requests == []
        with manager as stream:
            assert isinstance(stream, anthropic.lib.streaming.MessageStream)
            texts = list(stream.text_stream)
            final = stream.get_final_message()
    assert texts == REPLY_CHUNKS and final.content[0].text == REPLY_TEXT and final.usage.output_tokens == 40
    (sent,) = server.requests
    span = metered.only_span()
    assert span["name"] == f"chat {MODEL}" and span[semconv.TM_STREAM] is True
    assert (span[semconv.GEN_AI_USAGE_INPUT_TOKENS], span[semconv.GEN_AI_USAGE_OUTPUT_TOKENS]) == (sent.input_total, 40)
    assert span[semconv.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS] == sent.cache_creation > 0
    assert Decimal(span[semconv.TM_COST]) == expected_cost(sent.input_tokens, 40, written=sent.cache_creation)
    assert metered.tokens() == {("dan", "input"): sent.input_total, ("dan", "output"): 40}


def test_a_stream_left_early_is_incomplete_and_counted_up_to_what_was_read(
    metered: Metered, server: AnthropicServer
) -> None:
    stream = client(server).messages.create(model=MODEL, max_tokens=30, messages=ask(), stream=True)
    while (event := next(stream)).type != "content_block_delta":
        pass
    stream.close()
    with client(server).messages.stream(model=MODEL, max_tokens=30, messages=ask()) as helper:
        for text in helper.text_stream:
            assert text == REPLY_CHUNKS[0]
            break
    spans = metered.spans()
    assert event.delta.text == REPLY_CHUNKS[0] and len(spans) == 2
    for span in spans:
        assert span[semconv.TM_STREAM_INCOMPLETE] is True and span[semconv.TM_USAGE_SOURCE] == "estimate"
        assert span[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == estimate_tokens(REPLY_CHUNKS[0])


def test_an_error_event_midway_is_raised_and_the_output_read_is_billed(
    metered: Metered, server: AnthropicServer
) -> None:
    received = []
    with tokenmeter.attribution(user="erin"), pytest.raises(anthropic.APIStatusError) as raised:
        for event in client(server).messages.create(model="break-stream", max_tokens=30, messages=ask(), stream=True):
            if event.type == "content_block_delta":
                received.append(event.delta.text)
    assert received == REPLY_CHUNKS[:2] and raised.value.body["error"]["type"] == "overloaded_error"
    span = metered.only_span()
    assert span["status"] == StatusCode.ERROR and span[semconv.ERROR_TYPE] == "overloaded_error"
    assert span[semconv.TM_USAGE_SOURCE] == "estimate"
    assert span[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == estimate_tokens("".join(REPLY_CHUNKS[:2]))
    assert metered.tokens()[("erin", "output")] == estimate_tokens("".join(REPLY_CHUNKS[:2]))


def test_an_error_event_before_any_output_bills_nothing(metered: Metered, server: AnthropicServer) -> None:
    with pytest.raises(anthropic.APIStatusError):
        list(client(server).messages.create(model="refuse-stream", max_tokens=30, messages=ask(), stream=True))
    with (
        pytest.raises(anthropic.APIStatusError),
        client(server).messages.stream(model="refuse-stream", max_tokens=30, messages=ask()) as stream,
    ):
        stream.until_done()
    spans = metered.spans()
    assert [span[semconv.ERROR_TYPE] for span in spans] == ["overloaded_error", "overloaded_error"]
    assert all(semconv.GEN_AI_USAGE_INPUT_TOKENS not in span for span in spans)
    assert metered.telemetry.points(semconv.METRIC_USAGE_TOKENS) == []


def test_raw_responses_beta_messages_and_parse_are_metered(metered: Metered, server: AnthropicServer) -> None:
    sdk = client(server)
    raw = sdk.messages.with_raw_response.create(model=MODEL, max_tokens=11, messages=ask())
    assert raw.parse().content[0].text == REPLY_TEXT
    raw_stream = sdk.messages.with_raw_response.create(model=MODEL, max_tokens=12, messages=ask(), stream=True)
    assert len(list(raw_stream.parse())) == 9
    sdk.beta.messages.create(model=MODEL, max_tokens=13, messages=ask())
    with sdk.beta.messages.stream(model=MODEL, max_tokens=14, messages=ask()) as beta_stream:
        assert beta_stream.get_final_text() == REPLY_TEXT
    assert sdk.messages.parse(model=MODEL, max_tokens=15, messages=ask()).content[0].text == REPLY_TEXT
    spans = metered.spans()
    assert [span[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] for span in spans] == [11, 12, 13, 14, 15]
    assert [span[semconv.GEN_AI_USAGE_INPUT_TOKENS] for span in spans] == [r.input_total for r in server.requests]
    assert {span[semconv.TM_USAGE_SOURCE] for span in spans} == {"server"}
    assert [span[semconv.TM_STREAM] for span in spans] == [False, True, False, True, False]


def test_the_sdks_own_span_is_a_child_of_the_metered_call(metered: Metered, server: AnthropicServer) -> None:
    """Recent SDKs emit a span per API call: tokenmeter's span is current while the SDK sends (create, and the
    stream helper as it is entered), so the SDK's span nests under it."""
    import inspect

    if "open_telemetry" not in inspect.signature(anthropic.Anthropic.__init__).parameters:
        pytest.skip("this SDK emits no spans of its own")
    sdk = anthropic.Anthropic(base_url=server.url, api_key="test-key", max_retries=0,
                              open_telemetry={"tracer_provider": metered.telemetry.tracer_provider})  # fmt: skip
    sdk.messages.create(model=MODEL, max_tokens=5, messages=ask())
    with sdk.messages.stream(model=MODEL, max_tokens=6, messages=ask()) as stream:
        stream.until_done()
    metered.flush()
    spans = metered.telemetry.spans()
    ours = [span for span in spans if span.name == f"chat {MODEL}"]
    theirs = [span for span in spans if span.name == "anthropic.messages.create"]
    assert len(ours) == len(theirs) == 2
    assert {span.parent.span_id for span in theirs if span.parent} == {span.context.span_id for span in ours}
    assert sorted(span.attributes[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] for span in ours) == [5, 6]


# --- async -----------------------------------------------------------------------------------------------------


async def test_async_create_streams_the_helper_and_errors(metered: Metered, server: AnthropicServer) -> None:
    sdk = async_client(server)
    with tokenmeter.attribution(user="bob"):
        await sdk.messages.create(model=MODEL, max_tokens=20, messages=ask())
        stream = await sdk.messages.create(model=MODEL, max_tokens=21, messages=ask(), stream=True)
        deltas = [event.delta.text async for event in stream if event.type == "content_block_delta"]
        async with sdk.messages.stream(model=MODEL, max_tokens=22, system=cached_system(SYSTEM),
                                       messages=ask()) as helper:  # fmt: skip
            texts = [text async for text in helper.text_stream]
        with pytest.raises(anthropic.OverloadedError):
            await sdk.messages.create(model="overloaded", max_tokens=5, messages=ask())
    assert deltas == texts == REPLY_CHUNKS
    spans = metered.spans()
    assert [span.get(semconv.ERROR_TYPE) for span in spans] == [None, None, None, "529"]
    assert [span[semconv.TM_STREAM] for span in spans] == [False, True, True, False]
    assert [span.get(semconv.GEN_AI_USAGE_OUTPUT_TOKENS) for span in spans] == [20, 21, 22, None]
    inputs = sum(request.input_total for request in server.requests)
    assert metered.tokens() == {("bob", "input"): inputs, ("bob", "output"): 20 + 21 + 22}


# --- every user's total is what the server counted -------------------------------------------------------------


def test_every_users_total_equals_what_the_server_counted(metered: Metered, server: AnthropicServer) -> None:
    """Users calling at once, sync and async, create streamed and not and the stream helper, with prompt-cache
    writes and reads: each user's counter totals by token type (input inclusive of its cache parts) and cost are
    the sums of what the server reported for that user's requests."""
    users = [f"user-{n}" for n in range(12)]

    def sync_calls(user: str, n: int) -> None:
        sdk = client(server)
        system = cached_system(f"{user}: {SYSTEM}")
        with tokenmeter.attribution(user=user):
            for call in range(3):
                size = 5 + (n * 7 + call) % 50
                messages = ask(f"{user}: {QUESTION * (call + 1)}")
                if call == 0:
                    sdk.messages.create(model=MODEL, max_tokens=size, system=system, messages=messages)
                elif call == 1:
                    for _event in sdk.messages.create(model=MODEL, max_tokens=size, system=system, messages=messages,
                                                      stream=True):  # fmt: skip
                        pass
                else:
                    with sdk.messages.stream(model=MODEL, max_tokens=size, system=system, messages=messages) as s:
                        s.until_done()

    async def async_calls() -> None:
        sdk = async_client(server)

        async def one(user: str, size: int) -> None:
            with tokenmeter.attribution(user=user):
                messages = ask(f"{user}: {QUESTION}")
                if size % 2:
                    async for _event in await sdk.messages.create(model=MODEL, max_tokens=size, messages=messages,
                                                                  stream=True):  # fmt: skip
                        pass
                else:
                    async with sdk.messages.stream(model=MODEL, max_tokens=size, messages=messages) as s:
                        await s.until_done()

        await asyncio.gather(*(one(user, 3 + n) for n, user in enumerate(users)))

    threads = [threading.Thread(target=sync_calls, args=(user, n)) for n, user in enumerate(users)]
    for thread in threads:
        thread.start()
    asyncio.run(async_calls())
    for thread in threads:
        thread.join()

    counted: dict[tuple[Any, ...], int] = {}
    cost: dict[str, Decimal] = {}

    def add(key: tuple[Any, ...], value: int) -> None:
        if value:
            counted[key] = counted.get(key, 0) + value

    for request in server.requests:
        user = request.body["messages"][-1]["content"].split(":")[0]
        add((user, "input", "none"), request.input_tokens)
        add((user, "input", "read"), request.cache_read)
        add((user, "input", "creation"), request.cache_creation)
        add((user, "output", None), request.output_tokens)
        cost[user] = cost.get(user, Decimal(0)) + expected_cost(request.input_tokens, request.output_tokens,
                                                                request.cache_read, request.cache_creation)  # fmt: skip
    assert len(server.requests) == 4 * len(users)
    assert sum(request.cache_read for request in server.requests) > 0  # the cache was written, then read
    assert metered.totals(semconv.METRIC_USAGE_TOKENS, semconv.GEN_AI_TOKEN_TYPE, semconv.GEN_AI_TOKEN_CACHE) == counted
    by_type = {(user, kind): sum(v for (u, k, _), v in counted.items() if (u, k) == (user, kind))
               for user in users for kind in ("input", "output")}  # fmt: skip
    assert metered.tokens() == by_type
    units = metered.totals(semconv.METRIC_USAGE_COST)
    assert {user: Decimal(units[(user,)]) / semconv.COST_UNITS_PER_CURRENCY_UNIT for user in users} == cost


# --- the quota gate --------------------------------------------------------------------------------------------


def test_the_gates_decisions_apply_sync_and_async(metering_factory: Any, server: AnthropicServer) -> None:
    enforcer = DecidingEnforcer({
        "dave": {"decision": "deny", "budget": "dave-all", "reason": "over budget"},
        "erin": {"decision": "degrade", "budget": "erin-all", "reason": "over budget"},
        "carol": {"decision": "downgrade", "requested_model": "claude-opus-4-8", "effective_model": "claude-haiku-4-5"},
        "frank": {"decision": "warn", "budget": "frank-all", "ratio": 0.85, "threshold": 0.8},
    })  # fmt: skip
    metered = metering_factory(enforcer_url=enforcer.url, enforcer_cache_seconds=0)
    sdk, async_sdk = client(server), async_client(server)

    async def erin_and_frank() -> None:
        with tokenmeter.attribution(user="erin"), pytest.raises(QuotaDegraded):
            async with async_sdk.messages.stream(model="claude-opus-4-8", max_tokens=20, messages=ask()):
                pass
        with tokenmeter.attribution(user="frank"):
            await async_sdk.messages.create(model=MODEL, max_tokens=40, messages=ask())

    try:
        with tokenmeter.attribution(user="dave"), pytest.raises(QuotaExceeded):
            sdk.messages.create(model="claude-opus-4-8", max_tokens=77, system=SYSTEM, messages=ask())
        asyncio.run(erin_and_frank())
        with (
            tokenmeter.attribution(user="carol"),
            sdk.messages.stream(model="claude-opus-4-8", max_tokens=30, messages=ask()) as stream,
        ):
            downgraded = stream.get_final_message()
    finally:
        enforcer.close()
    assert [request.body["model"] for request in server.requests] == [MODEL, "claude-haiku-4-5"]  # frank's, carol's
    assert downgraded.model == "claude-haiku-4-5"
    # The check's estimate: the counted input and max_tokens.
    assert [(check["user"], check.get("max_output_tokens")) for check in enforcer.checks] == [
        ("dave", 77), ("erin", 20), ("frank", 40), ("carol", 30)]  # fmt: skip
    assert enforcer.checks[0]["input_tokens"] > enforcer.checks[1]["input_tokens"] > 0  # dave's has a system prompt
    spans = metered.spans()
    assert [span.get(semconv.TM_QUOTA_DECISION) for span in spans] == ["deny", "degrade", "warn", "downgrade"]
    assert all(semconv.GEN_AI_USAGE_INPUT_TOKENS not in span for span in spans[:2])
    assert spans[2][semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == 40
    assert spans[3][semconv.GEN_AI_REQUEST_MODEL] == "claude-haiku-4-5"
    assert spans[3][semconv.TM_REQUESTED_MODEL] == "claude-opus-4-8"
    assert Decimal(spans[3][semconv.TM_COST]) == expected_cost(server.requests[1].input_tokens, 30,
                                                               model="claude-haiku-4-5")  # fmt: skip


POLICY = """
defaults:
  max_output_tokens: 10
model_groups:
  premium: ["claude-opus-4-8"]
routes:
  claude-opus-4-8: claude-haiku-4-5
budgets:
  - name: carol-premium
    scope: user
    subject: carol
    period: day
    models: premium
    limit: {tokens: 600}
    action: downgrade
  - name: dave-all
    scope: user
    subject: dave
    period: day
    limit: {tokens: 600}
    action: deny
"""


def test_a_real_enforcer_denies_before_the_request_and_downgrades_the_model(
    tmp_path: Path, metering_factory: Any, server: AnthropicServer
) -> None:
    pytest.importorskip("chdb", reason="the enforcer needs the store extra")
    from budget_days import timezone_far_from_midnight
    from enforcer_process import TOKEN, EnforcerProcess, migrate

    policy = tmp_path / "policy.yaml"
    policy.write_text(f"timezone: {timezone_far_from_midnight()}\n{POLICY}", encoding="utf-8")
    migrate(tmp_path / "chdb")
    sdk = client(server)
    with EnforcerProcess(tmp_path / "chdb", policy) as enforcer:
        metered = metering_factory(enforcer_url=enforcer.url, enforcer_token=TOKEN, enforcer_timeout=5,
                                   local_count="fallback")  # fmt: skip
        # max_tokens is the output estimate, over the 600-token budgets
        with tokenmeter.attribution(user="dave"):
            sdk.messages.create(model="claude-opus-4-8", max_tokens=1000, messages=ask())
            with pytest.raises(QuotaExceeded), sdk.messages.stream(model="claude-opus-4-8", max_tokens=1000,
                                                                   messages=ask()):  # fmt: skip
                pass
        with tokenmeter.attribution(user="carol"):
            sdk.messages.create(model="claude-opus-4-8", max_tokens=1000, messages=ask())
            downgraded = sdk.messages.create(model="claude-opus-4-8", max_tokens=1000, messages=ask())
        spans = metered.spans()
    assert [r.body["model"] for r in server.requests] == ["claude-opus-4-8", "claude-opus-4-8", "claude-haiku-4-5"]
    assert downgraded.model == "claude-haiku-4-5"
    assert [span[semconv.TM_QUOTA_DECISION] for span in spans] == ["allow", "deny", "allow", "downgrade"]
    assert spans[1][semconv.ERROR_TYPE] == "QuotaExceeded" and semconv.GEN_AI_USAGE_INPUT_TOKENS not in spans[1]
    assert spans[3][semconv.GEN_AI_REQUEST_MODEL] == spans[3][semconv.TM_EFFECTIVE_MODEL] == "claude-haiku-4-5"


def test_instrument_patches_the_anthropic_sdk_and_uninstrument_restores_it(server: AnthropicServer) -> None:
    """The instrumentor (as `opentelemetry-instrument` and TOKENMETER_* run it) meters the anthropic SDK too
    (instrumentor.OTHER_CLIENTS); after uninstrument the SDK is the plain one again."""
    from tokenmeter.instrumentation.instrumentor import TokenmeterInstrumentor

    telemetry = make_telemetry()
    instrumentor = TokenmeterInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider,
                            settings=Settings(hash_key="test-hash-key"), skip_dep_check=True)  # fmt: skip
    try:
        with tokenmeter.attribution(user="anthropic-user"):
            client(server).messages.create(model=MODEL, max_tokens=9, messages=ask())
        assert instrumentor.flush()
    finally:
        instrumentor.uninstrument()
    (span,) = telemetry.spans()
    assert span.attributes[semconv.GEN_AI_PROVIDER_NAME] == semconv.PROVIDER_ANTHROPIC
    assert span.attributes[semconv.ENDUSER_ID] == "anthropic-user"
    assert span.attributes[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == 9
    client(server).messages.create(model=MODEL, max_tokens=9, messages=ask())  # not metered now
    assert len(telemetry.spans()) == 1
