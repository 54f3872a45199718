"""The repeat-answer cache end to end: the real openai SDK (sync and async, streamed and not) against the
local OpenAI-compatible server, the real OTel SDK with in-memory exporters, real AES-GCM entries in memory
or in a directory. A hit sends no request, gives the caller the SDK's own objects, and is metered as a call
with 0 billed tokens and what it saved."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai_server import REPLY_TEXT, SERVER_COMPLETION_TOKENS, SERVER_PROMPT_TOKENS, OpenAICompatibleServer
from telemetry_fixtures import Telemetry, make_telemetry

import tokenmeter
from tokenmeter import semconv
from tokenmeter.answer_cache.cached_responses import RESPONSE_ID_PREFIX
from tokenmeter.catalog import ModelCatalog
from tokenmeter.instrumentation.instrumentor import TokenmeterInstrumentor
from tokenmeter.settings import Settings
from tokenmeter.tokenizers import TokenizerRegistry

MODEL = "qwen2.5-7b-instruct"
HASH_KEY = "answer-cache-test-key"
MESSAGES = [
    {"role": "system", "content": "已知信息：公司年假为每年15天。"},
    {"role": "user", "content": "公司的年假有多少天？"},
]
RETYPED = [MESSAGES[0], {"role": "user", "content": "  公司的年假有多少天?"}]  # half-width "?", spaces


@pytest.fixture(scope="module")
def registry() -> TokenizerRegistry:
    return TokenizerRegistry(ModelCatalog.load(None))


class Instrumented:
    """Instrument with given settings; uninstrument on exit (several times in one test: a restart)."""

    def __init__(self, registry: TokenizerRegistry) -> None:
        self.telemetry = make_telemetry()
        self._registry = registry
        self._instrumentor = TokenmeterInstrumentor()
        self._on = False

    def start(self, **settings: Any) -> Telemetry:
        self.stop()
        values: dict[str, Any] = {"hash_key": HASH_KEY, "local_count": "fallback", **settings}
        self._instrumentor.instrument(
            tracer_provider=self.telemetry.tracer_provider,
            meter_provider=self.telemetry.meter_provider,
            settings=Settings(**values),
            registry=self._registry,
            skip_dep_check=True,
        )
        self._on = True
        return self.telemetry

    def stop(self) -> None:
        if self._on:
            self._instrumentor.uninstrument()
            self._on = False


@pytest.fixture
def instrumented(registry: TokenizerRegistry) -> Iterator[Instrumented]:
    harness = Instrumented(registry)
    try:
        yield harness
    finally:
        harness.stop()


def chat_requests(server: OpenAICompatibleServer) -> int:
    return sum(1 for r in server.requests if r.path.endswith("/chat/completions"))


def client_for(server: OpenAICompatibleServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)


def spans_in_order(telemetry: Telemetry) -> list[Any]:
    assert tokenmeter.flush(5)
    return sorted(telemetry.spans(), key=lambda s: s.start_time)


def counter_totals(telemetry: Telemetry, metric: str, by: str | None = None) -> dict[Any, int]:
    totals: dict[Any, int] = {}
    for attributes, value in telemetry.points(metric):
        name = attributes.get(by) if by else None
        totals[name] = totals.get(name, 0) + value
    return totals


def assert_hit_span(span: Any, original: Any) -> None:
    attributes = span.attributes
    assert attributes[semconv.TM_CACHE_HIT] is True
    assert attributes[semconv.GEN_AI_USAGE_INPUT_TOKENS] == 0 and attributes[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == 0
    assert attributes[semconv.TM_COST] == "0"
    assert attributes[semconv.TM_COST_CURRENCY] == original.attributes[semconv.TM_COST_CURRENCY] == "CNY"
    assert attributes[semconv.TM_CACHE_SAVED_INPUT_TOKENS] == original.attributes[semconv.GEN_AI_USAGE_INPUT_TOKENS]
    assert attributes[semconv.TM_CACHE_SAVED_OUTPUT_TOKENS] == original.attributes[semconv.GEN_AI_USAGE_OUTPUT_TOKENS]
    assert attributes[semconv.TM_CACHE_SAVED_COST] == original.attributes[semconv.TM_COST] != "0"
    assert attributes[semconv.GEN_AI_RESPONSE_MODEL] == MODEL
    assert attributes[semconv.GEN_AI_RESPONSE_ID].startswith(RESPONSE_ID_PREFIX)
    assert span.name == f"chat {MODEL}" and semconv.TM_CACHE_HIT not in original.attributes


# --- hits ----------------------------------------------------------------------------------


def test_a_repeated_question_is_answered_without_a_request(
    instrumented: Instrumented, openai_server: OpenAICompatibleServer
) -> None:
    telemetry = instrumented.start(answer_cache="memory")
    client = client_for(openai_server)
    first = client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=0.1)
    assert tokenmeter.flush(5)  # stored by the background finisher
    with tokenmeter.attribution(user="alice", department="hr"):
        second = client.chat.completions.create(model=MODEL, messages=RETYPED, temperature=0.9, seed=3)
    assert chat_requests(openai_server) == 1
    assert isinstance(second, ChatCompletion)
    assert second.choices[0].message.content == first.choices[0].message.content == REPLY_TEXT
    assert second.choices[0].finish_reason == "stop" and second.model == MODEL
    assert second.usage is not None and second.usage.total_tokens == 0
    original, hit = spans_in_order(telemetry)
    assert_hit_span(hit, original)
    assert hit.attributes[semconv.ENDUSER_ID] == "alice" and hit.attributes[semconv.GEN_AI_REQUEST_TEMPERATURE] == 0.9
    assert counter_totals(telemetry, semconv.METRIC_USAGE_CALLS, semconv.ENDUSER_ID) == {None: 1, "alice": 1}
    tokens = counter_totals(telemetry, semconv.METRIC_USAGE_TOKENS, semconv.ENDUSER_ID)
    assert tokens == {None: SERVER_PROMPT_TOKENS + SERVER_COMPLETION_TOKENS, "alice": 0}


def test_a_streamed_answer_is_stored_and_served_as_a_stream(
    instrumented: Instrumented, openai_server: OpenAICompatibleServer
) -> None:
    telemetry = instrumented.start(answer_cache="memory", stream_usage="inject")
    client = client_for(openai_server)
    first = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in first)
    assert tokenmeter.flush(5)
    with client.chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    ) as stream:
        chunks = list(stream)
    stream.close()  # closing again, as the SDK's stream allows
    assert chat_requests(openai_server) == 1
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == streamed == REPLY_TEXT
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 0
    unasked = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))
    assert all(c.choices and c.usage is None for c in unasked)  # no usage chunk the caller did not ask for
    plain = client.chat.completions.create(model=MODEL, messages=MESSAGES)  # the stream flag is not in the key
    assert plain.choices[0].message.content == REPLY_TEXT and chat_requests(openai_server) == 1
    original, *hits = spans_in_order(telemetry)
    assert original.attributes[semconv.TM_USAGE_SOURCE] == "server"  # the usage chunk tokenmeter asked for
    for hit in hits:
        assert_hit_span(hit, original)
    assert [h.attributes[semconv.TM_STREAM] for h in hits] == [True, True, False]


async def test_async_hits_plain_and_streamed(instrumented: Instrumented, openai_server: OpenAICompatibleServer) -> None:
    telemetry = instrumented.start(answer_cache="memory")
    client = openai.AsyncOpenAI(base_url=openai_server.base_url, api_key="sk-test", max_retries=0)
    first = await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert tokenmeter.flush(5)
    second = await client.chat.completions.create(model=MODEL, messages=RETYPED)
    stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    async with stream:
        pieces = [chunk.choices[0].delta.content or "" async for chunk in stream]
    await stream.close()
    await client.close()
    assert chat_requests(openai_server) == 1
    assert isinstance(second, ChatCompletion) and second.choices[0].message.content == first.choices[0].message.content
    assert "".join(pieces) == REPLY_TEXT
    original, *hits = spans_in_order(telemetry)
    assert len(hits) == 2
    for hit in hits:
        assert_hit_span(hit, original)


def test_answers_in_a_directory_outlive_the_process_and_skip_the_quota_check(
    instrumented: Instrumented, openai_server: OpenAICompatibleServer, tmp_path: Path
) -> None:
    """A hit is served before the quota check: with an enforcer that cannot be reached and fail mode
    closed, the repeated question is still answered (it costs nothing), a new one is refused."""
    directory = tmp_path / "answers"
    instrumented.start(answer_cache=f"dir:{directory}")
    client_for(openai_server).chat.completions.create(model=MODEL, messages=MESSAGES)
    assert tokenmeter.flush(5)
    assert len(list(directory.iterdir())) == 1
    telemetry = instrumented.start(answer_cache=str(directory), enforcer_url="http://127.0.0.1:9", fail_mode="closed",
                                   enforcer_timeout=0.5)  # fmt: skip
    client = client_for(openai_server)
    hit = client.chat.completions.create(model=MODEL, messages=RETYPED)
    assert hit.choices[0].message.content == REPLY_TEXT and chat_requests(openai_server) == 1
    with pytest.raises(tokenmeter.QuotaUnavailable):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "另一个问题"}])
    assert chat_requests(openai_server) == 1
    original, hit_span, refused = spans_in_order(telemetry)  # the same providers before and after the restart
    assert_hit_span(hit_span, original)
    assert semconv.TM_QUOTA_DECISION not in hit_span.attributes
    assert refused.attributes[semconv.TM_QUOTA_DECISION] == semconv.QUOTA_UNAVAILABLE


# --- what is not served or not stored ---------------------------------------------------------


def test_off_by_default(instrumented: Instrumented, openai_server: OpenAICompatibleServer) -> None:
    telemetry = instrumented.start()
    client = client_for(openai_server)
    for _ in range(2):
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
        assert tokenmeter.flush(5)
    assert chat_requests(openai_server) == 2
    assert all(semconv.TM_CACHE_HIT not in s.attributes for s in spans_in_order(telemetry))


def test_without_a_hash_key_it_stays_off_with_a_warning(
    instrumented: Instrumented, openai_server: OpenAICompatibleServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="tokenmeter"):
        instrumented.start(answer_cache="memory", hash_key=None)
    assert "TOKENMETER_HASH_KEY" in caplog.text and "answer cache stays off" in caplog.text
    client = client_for(openai_server)
    for _ in range(2):
        assert client.chat.completions.create(model=MODEL, messages=MESSAGES).choices[0].message.content == REPLY_TEXT
        assert tokenmeter.flush(5)
    assert chat_requests(openai_server) == 2


def test_an_unusable_directory_never_breaks_a_call(
    instrumented: Instrumented, openai_server: OpenAICompatibleServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where the cache's parent directory should be")
    telemetry = instrumented.start(answer_cache=f"dir:{blocker}/answers")
    client = client_for(openai_server)
    with caplog.at_level(logging.DEBUG, logger="tokenmeter"):
        for stream in (False, True, False):
            response = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=stream)
            text = (
                "".join(c.choices[0].delta.content or "" for c in response)
                if stream
                else response.choices[0].message.content
            )
            assert text == REPLY_TEXT
            assert tokenmeter.flush(5)
    assert chat_requests(openai_server) == 3
    assert "call billed hook" in caplog.text  # the store's failure was contained and reported
    spans = spans_in_order(telemetry)
    assert all(
        s.attributes[semconv.GEN_AI_USAGE_INPUT_TOKENS] == SERVER_PROMPT_TOKENS
        for s in spans
        if not s.attributes[semconv.TM_STREAM]
    )


def test_failed_cut_short_and_many_choice_calls_are_not_stored(
    instrumented: Instrumented, openai_server: OpenAICompatibleServer
) -> None:
    instrumented.start(answer_cache="memory")
    client = client_for(openai_server)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="fail-500", messages=MESSAGES)
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    next(iter(stream))
    stream.close()  # the caller stopped reading: no finish reason, not a whole answer
    client.chat.completions.create(model=MODEL, messages=MESSAGES, n=2)
    assert tokenmeter.flush(5)
    before = chat_requests(openai_server)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="fail-500", messages=MESSAGES)
    client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert chat_requests(openai_server) == before + 2


def test_raw_response_callers_get_the_http_response(
    instrumented: Instrumented, openai_server: OpenAICompatibleServer
) -> None:
    instrumented.start(answer_cache="memory")
    client = client_for(openai_server)
    client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert tokenmeter.flush(5)
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
    assert raw.headers["content-type"].startswith("application/json")
    assert raw.parse().choices[0].message.content == REPLY_TEXT
    assert chat_requests(openai_server) == 2


# --- LangChain's ChatOpenAI (where it is installed: the Chatchat venv) ----------------------------


def test_langchain_chat_openai_gets_hits(instrumented: Instrumented, openai_server: OpenAICompatibleServer) -> None:
    chat_openai = pytest.importorskip("langchain_openai", reason="langchain-openai is in the Chatchat venv").ChatOpenAI
    from langchain_core.messages import HumanMessage, SystemMessage

    instrumented.start(answer_cache="memory")
    llm = chat_openai(model=MODEL, base_url=openai_server.base_url, api_key="sk-test", max_retries=0)
    prompt = [SystemMessage(content=MESSAGES[0]["content"]), HumanMessage(content=MESSAGES[1]["content"])]
    assert llm.invoke(prompt).content == REPLY_TEXT
    assert tokenmeter.flush(5)
    assert llm.invoke(prompt).content == REPLY_TEXT
    assert "".join(str(chunk.content) for chunk in llm.stream(prompt)) == REPLY_TEXT
    streaming = chat_openai(model=MODEL, base_url=openai_server.base_url, api_key="sk-test", streaming=True)
    assert streaming.invoke(prompt).content == REPLY_TEXT
    assert chat_requests(openai_server) == 1


async def test_langchain_chat_openai_async_stream_gets_hits(
    instrumented: Instrumented, openai_server: OpenAICompatibleServer
) -> None:
    chat_openai = pytest.importorskip("langchain_openai", reason="langchain-openai is in the Chatchat venv").ChatOpenAI
    from langchain_core.messages import HumanMessage

    instrumented.start(answer_cache="memory")
    llm = chat_openai(model=MODEL, base_url=openai_server.base_url, api_key="sk-test", max_retries=0)
    prompt = [HumanMessage(content=MESSAGES[1]["content"])]
    assert (await llm.ainvoke(prompt)).content == REPLY_TEXT
    assert tokenmeter.flush(5)
    assert "".join([str(chunk.content) async for chunk in llm.astream(prompt)]) == REPLY_TEXT
    assert chat_requests(openai_server) == 1


# --- what is kept --------------------------------------------------------------------------------


def _finished_call(response: Any) -> Any:
    """A call as Metering.complete leaves it, for the answer cache's rule on what to keep."""
    from opentelemetry.trace import INVALID_SPAN

    from tokenmeter.instrumentation.attribution import Attribution
    from tokenmeter.instrumentation.llm_call import LLMCall
    from tokenmeter.instrumentation.openai_payload import finish_reasons, has_output_extras, response_output_texts

    call = LLMCall("chat", MODEL, "openai", INVALID_SPAN, Attribution(), 0, MESSAGES)
    call.response_model = response.model
    call.output_texts = response_output_texts(response)
    call.finish_reasons = finish_reasons(response)
    call.output_extras = has_output_extras(response)
    return call


@pytest.mark.parametrize(
    ("message", "finish_reason", "kept"),
    [
        ({"role": "assistant", "content": REPLY_TEXT}, "stop", True),
        ({"role": "assistant", "content": REPLY_TEXT}, "length", False),
        ({"role": "assistant", "content": "  "}, "stop", False),
        ({"role": "assistant", "content": REPLY_TEXT, "reasoning_content": "先想一想……"}, "stop", False),
        (
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "t1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]},
            "stop",
            False,
        ),
    ],
)  # fmt: skip
def test_only_whole_plain_answers_are_kept(message: dict[str, Any], finish_reason: str, kept: bool) -> None:
    from decimal import Decimal

    from tokenmeter.instrumentation.answer_cache_hits import answer_to_keep
    from tokenmeter.instrumentation.billing import UsageRecord
    from tokenmeter.pricing import Cost

    response = ChatCompletion(id="c1", object="chat.completion", created=0, model=MODEL,
                              choices=[{"index": 0, "finish_reason": finish_reason, "message": message}])  # fmt: skip
    record = UsageRecord(41, 13, "server", None, Cost(Decimal("0.00123"), "CNY", True, False))
    answer = answer_to_keep(_finished_call(response), record, now=100.0)
    assert (answer is not None) is kept
    if answer is not None:
        assert (answer.text, answer.model, answer.input_tokens, answer.output_tokens) == (REPLY_TEXT, MODEL, 41, 13)
        assert (answer.cost, answer.currency, answer.virtual, answer.stored_at) == ("0.00123", "CNY", True, 100.0)


def test_a_stream_with_reasoning_is_marked() -> None:
    from tokenmeter.instrumentation.openai_payload import StreamAccumulator

    plain, reasoning = StreamAccumulator(), StreamAccumulator()
    for accumulator, extra in ((plain, {}), (reasoning, {"reasoning_content": "先想一想"})):
        choice = {"index": 0, "delta": {"content": "答", **extra}, "finish_reason": "stop"}
        accumulator.observe(
            ChatCompletionChunk(id="c", object="chat.completion.chunk", created=0, model=MODEL, choices=[choice])
        )
    assert (plain.extras, reasoning.extras) == (False, True)
