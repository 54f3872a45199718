"""LangChain classes outside the patched SDKs, metered exactly and checked against quotas by the callback handler.

The class: langchain_community's `ChatOllama` (Chatchat 0.3.1.3's langchain-community 0.0.36), which speaks Ollama's
HTTP API itself (requests, aiohttp) and hands LangChain Ollama's counts only in its generation info. Its server: an
Ollama /api/chat on loopback that counts as Ollama does, with Qwen2.5's own tokenizer over the ChatML prompt it
renders (`qwen_ollama_server`). The instrumentor wires everything, as `opentelemetry-instrument` does; the real OTel
SDK with in-memory readers; the quota gate with a stand-in enforcer. Runs in the Chatchat venv (`make test-chatchat`).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from deciding_enforcer import DecidingEnforcer
from opentelemetry.trace import StatusCode
from qwen_ollama_server import ANSWERS, CHUNK_CHARACTERS, QwenOllamaServer, Served, chatml_prompt, qwen_tokens
from telemetry_fixtures import Telemetry, make_telemetry

import tokenmeter
from tokenmeter import semconv
from tokenmeter.catalog import ModelCatalog
from tokenmeter.instrumentation.instrumentor import TokenmeterInstrumentor
from tokenmeter.instrumentation.quota.errors import QuotaDegraded, QuotaExceeded
from tokenmeter.instrumentation.quota.gate import collecting_notices
from tokenmeter.integrations.langchain_callback import is_metered_by_the_sdk
from tokenmeter.integrations.langchain_quota import QuotaDowngradeRefused
from tokenmeter.settings import Settings
from tokenmeter.tokenizers import TokenizerRegistry

pytest.importorskip("langchain_community", reason="langchain-community is not installed here (the Chatchat venv)")

from langchain_community.chat_models.ollama import ChatOllama
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models.fake import FakeListLLM
from langchain_core.messages import HumanMessage, SystemMessage

MODEL = "qwen2.5:7b"  # an Ollama tag: the catalog's qwen2.5* (Qwen2.5's tokenizer, a price)
BIG = "qwen2.5:72b"
QUESTION = "报销要多久内提交？Answer briefly, with `code`."


@pytest.fixture(scope="module")
def registry() -> TokenizerRegistry:
    return TokenizerRegistry(ModelCatalog.load(None))


class Metered:
    """The instrumented process's telemetry, flushed before each look."""

    def __init__(self, telemetry: Telemetry, instrumentor: TokenmeterInstrumentor) -> None:
        self.telemetry, self._instrumentor = telemetry, instrumentor

    def spans(self) -> list[dict[str, Any]]:
        assert self._instrumentor.flush()
        return [{"name": s.name, "status": s.status.status_code, **dict(s.attributes or {})}
                for s in self.telemetry.spans()]  # fmt: skip

    def only_span(self) -> dict[str, Any]:
        spans = self.spans()
        assert len(spans) == 1, [s["name"] for s in spans]
        return spans[0]

    def tokens(self) -> dict[tuple[str | None, str], int]:
        """Usage counter totals keyed by (user, token type)."""
        assert self._instrumentor.flush()
        totals: dict[tuple[str | None, str], int] = {}
        for attributes, value in self.telemetry.points(semconv.METRIC_USAGE_TOKENS):
            key = (attributes.get(semconv.ENDUSER_ID), attributes[semconv.GEN_AI_TOKEN_TYPE])
            totals[key] = totals.get(key, 0) + value
        return totals


@pytest.fixture
def instrument(registry: TokenizerRegistry) -> Iterator[Any]:
    """Instrument the process (at most once per test) with these settings; uninstrumented after the test."""
    instrumentor = TokenmeterInstrumentor()

    def start(**settings: Any) -> Metered:
        telemetry = make_telemetry()
        instrumentor.instrument(tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider,
                                settings=Settings(**{"hash_key": "k", "local_count": "always", **settings}),
                                registry=registry, skip_dep_check=True)  # fmt: skip
        return Metered(telemetry, instrumentor)

    yield start
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()


@pytest.fixture
def server() -> Iterator[QwenOllamaServer]:
    with QwenOllamaServer() as running:
        yield running


def chat(server: QwenOllamaServer, model: str = MODEL, **options: Any) -> ChatOllama:
    return ChatOllama(model=model, base_url=server.base_url, **options)


def totals(served: list[Served]) -> tuple[int, int]:
    return sum(s.prompt_eval_count for s in served), sum(s.eval_count for s in served)


# --- metered ---------------------------------------------------------------------------------------------------


def test_community_chat_ollama_is_metered_here_and_langchain_ollamas_by_the_patch() -> None:
    """langchain_community's Ollama classes speak HTTP themselves (no ollama client to patch)."""
    assert not is_metered_by_the_sdk({"id": ["langchain_community", "chat_models", "ollama", "ChatOllama"]}, MODEL)
    assert not is_metered_by_the_sdk({"id": ["langchain_community", "llms", "ollama", "Ollama"]}, MODEL)
    assert is_metered_by_the_sdk({"id": ["langchain_ollama", "chat_models", "ChatOllama"]}, MODEL)


def test_a_run_is_a_span_and_counters_with_its_user_billed_by_the_servers_counts(
    instrument: Any, server: QwenOllamaServer
) -> None:
    metered = instrument()
    messages = [SystemMessage(content="你是财务助手。"), HumanMessage(content=QUESTION)]
    with tokenmeter.attribution(user="alice", department="finance", app="kb", session="conv-1"):
        answer = chat(server, num_predict=64, top_p=0.9).invoke(messages)
    (served,) = server.served
    assert answer.content == served.answer
    span = metered.only_span()
    assert span["name"] == f"chat {MODEL}" and span["status"] == StatusCode.UNSET
    assert span[semconv.GEN_AI_PROVIDER_NAME] == semconv.PROVIDER_OLLAMA
    assert span[semconv.GEN_AI_REQUEST_MODEL] == span[semconv.GEN_AI_RESPONSE_MODEL] == MODEL
    assert span[semconv.GEN_AI_REQUEST_MAX_TOKENS] == 64 and span[semconv.GEN_AI_REQUEST_TOP_P] == 0.9
    assert tuple(span[semconv.GEN_AI_RESPONSE_FINISH_REASONS]) == ("stop",)
    assert span[semconv.ENDUSER_ID] == "alice" and span[semconv.TM_DEPARTMENT] == "finance"
    assert span[semconv.GEN_AI_CONVERSATION_ID] == "conv-1"
    assert span[semconv.TM_USAGE_SOURCE] == semconv.SOURCE_SERVER
    counts = (served.prompt_eval_count, served.eval_count)
    assert (span[semconv.GEN_AI_USAGE_INPUT_TOKENS], span[semconv.GEN_AI_USAGE_OUTPUT_TOKENS]) == counts
    # The local count, beside the server's, is the same: the model's tokenizer over its chat template.
    assert (span[semconv.TM_LOCAL_INPUT_TOKENS], span[semconv.TM_LOCAL_OUTPUT_TOKENS]) == counts
    price = ModelCatalog.load(None).price_for(MODEL)
    assert price is not None
    cost = (Decimal(counts[0]) * price.input + Decimal(counts[1]) * price.output) / Decimal(price.per)
    assert Decimal(span[semconv.TM_COST]) == cost
    assert metered.tokens() == {("alice", "input"): counts[0], ("alice", "output"): counts[1]}


def test_without_the_servers_counts_the_models_tokenizer_bills_what_the_server_counted(
    instrument: Any, server: QwenOllamaServer
) -> None:
    server.state.report_counts = False
    metered = instrument()
    history = [HumanMessage(content=QUESTION), ("ai", ANSWERS[0]), ("human", "那发票呢？")]
    with tokenmeter.attribution(user="bob"):
        chat(server).invoke(history)
    (served,) = server.served
    assert served.prompt_eval_count == qwen_tokens(chatml_prompt(served.body["messages"]))
    span = metered.only_span()
    assert span[semconv.TM_USAGE_SOURCE] == semconv.SOURCE_TOKENIZER
    assert span[semconv.GEN_AI_USAGE_INPUT_TOKENS] == served.prompt_eval_count
    assert span[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == served.eval_count
    assert metered.tokens() == {("bob", "input"): served.prompt_eval_count, ("bob", "output"): served.eval_count}


class TokensSeen(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)


def test_a_stream_gives_the_caller_the_servers_chunks_and_bills_them(instrument: Any, server: QwenOllamaServer) -> None:
    plain = [chunk.content for chunk in chat(server).stream([HumanMessage(content=QUESTION)])]  # not instrumented
    metered = instrument()
    seen = TokensSeen()
    with tokenmeter.attribution(user="carol"):
        chunks = [chunk.content for chunk in chat(server).stream([HumanMessage(content=QUESTION)],
                                                                 config={"callbacks": [seen]})]  # fmt: skip
    answer = server.served[-1].answer
    pieces = [answer[i : i + CHUNK_CHARACTERS] for i in range(0, len(answer), CHUNK_CHARACTERS)]
    assert chunks == plain == seen.tokens == [*pieces, ""]
    span = metered.only_span()
    assert span[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == server.served[-1].eval_count
    assert metered.tokens()[("carol", "output")] == server.served[-1].eval_count


def test_a_stream_left_early_is_incomplete_and_billed_for_the_answer_langchain_kept(
    instrument: Any, server: QwenOllamaServer
) -> None:
    metered = instrument()
    read = []
    for chunk in chat(server).stream([HumanMessage(content=QUESTION)]):
        read.append(chunk.content)
        if len(read) == 3:
            break
    span = metered.only_span()
    assert span[semconv.TM_STREAM_INCOMPLETE] is True and semconv.ERROR_TYPE not in span
    assert span[semconv.TM_USAGE_SOURCE] == semconv.SOURCE_TOKENIZER
    # LangChain adds a chunk to the run's answer after the caller has it: the third was not added yet.
    assert span[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == qwen_tokens("".join(read[:2]))


@pytest.mark.parametrize("how", ["invoke", "stream", "ainvoke", "astream"])
def test_a_server_error_is_raised_unchanged_and_bills_nothing(
    instrument: Any, server: QwenOllamaServer, how: str
) -> None:
    def run() -> None:
        model, messages = chat(server, model="fail-500"), [HumanMessage(content=QUESTION)]
        if how == "invoke":
            model.invoke(messages)
        elif how == "stream":
            list(model.stream(messages))
        elif how == "ainvoke":
            asyncio.run(model.ainvoke(messages))
        else:
            asyncio.run(_collect(model.astream(messages)))

    with pytest.raises(ValueError) as plain:
        run()
    metered = instrument()
    with pytest.raises(ValueError) as raised:
        run()
    # The same error (the async client's message quotes the response's headers: its Date may differ by a second).
    assert _undated(str(raised.value)) == _undated(str(plain.value)) and "status code 500" in str(raised.value)
    span = metered.only_span()
    assert span["status"] == StatusCode.ERROR and span[semconv.ERROR_TYPE] == "ValueError"
    assert semconv.GEN_AI_USAGE_INPUT_TOKENS not in span
    assert metered.telemetry.points(semconv.METRIC_USAGE_TOKENS) == []


def _undated(message: str) -> str:
    return re.sub(r"'Date': '[^']*'", "'Date': ...", message)


async def _collect(stream: Any) -> list[Any]:
    return [chunk async for chunk in stream]


def test_async_runs_streamed_and_not_keep_their_users(instrument: Any, server: QwenOllamaServer) -> None:
    metered = instrument()

    async def runs() -> list[Any]:
        async def one(user: str, streamed: bool) -> Any:
            with tokenmeter.attribution(user=user):
                messages = [HumanMessage(content=f"{user}: {QUESTION}")]
                if streamed:
                    return "".join([chunk.content async for chunk in chat(server).astream(messages)])
                return (await chat(server).ainvoke(messages)).content

        return await asyncio.gather(one("dave", False), one("erin", True))

    assert sorted(asyncio.run(runs())) == sorted(s.answer for s in server.served)
    assert metered.tokens() == _counted_per_user(server.served)


# --- every user's total is what the server counted -------------------------------------------------------------


def _counted_per_user(served: list[Served]) -> dict[tuple[str | None, str], int]:
    counted: dict[tuple[str | None, str], int] = {}
    for request in served:
        user = request.body["messages"][-1]["content"].split(":")[0]
        counted[(user, "input")] = counted.get((user, "input"), 0) + request.prompt_eval_count
        counted[(user, "output")] = counted.get((user, "output"), 0) + request.eval_count
    return counted


@pytest.mark.parametrize("report_counts", [False, True], ids=["tokenizer", "server-counts"])
def test_every_users_total_equals_what_the_server_counted(
    instrument: Any, server: QwenOllamaServer, report_counts: bool
) -> None:
    """Users calling at once, sync threads and asyncio, streamed and not: each user's counter totals by token type
    are the sum of the server's own counts for that user's requests (reported to LangChain or not)."""
    server.state.report_counts = report_counts
    metered = instrument()
    users = [f"user-{n}" for n in range(12)]

    def sync_runs(user: str, n: int) -> None:
        model = chat(server)
        with tokenmeter.attribution(user=user):
            for run in range(3):
                system = SystemMessage(content="简短回答。" * (n % 3))
                messages = [system, HumanMessage(content=f"{user}: {QUESTION * run}")]
                if run == 1:
                    for _chunk in model.stream(messages[1:] if n % 2 else messages):
                        pass
                else:
                    model.invoke(messages if n % 3 else messages[1:])

    async def async_runs() -> None:
        async def one(user: str, n: int) -> None:
            with tokenmeter.attribution(user=user):
                messages = [HumanMessage(content=f"{user}: {'为什么？' * n}")]
                if n % 2:
                    async for _chunk in chat(server).astream(messages):
                        pass
                else:
                    await chat(server).ainvoke(messages)

        await asyncio.gather(*(one(user, n) for n, user in enumerate(users)))

    threads = [threading.Thread(target=sync_runs, args=(user, n)) for n, user in enumerate(users)]
    for thread in threads:
        thread.start()
    asyncio.run(async_runs())
    for thread in threads:
        thread.join()

    assert len(server.served) == 4 * len(users)
    assert len({s.eval_count for s in server.served}) > 1 and len({s.prompt_eval_count for s in server.served}) > 10
    assert metered.tokens() == _counted_per_user(server.served)
    source = semconv.SOURCE_SERVER if report_counts else semconv.SOURCE_TOKENIZER
    assert {span[semconv.TM_USAGE_SOURCE] for span in metered.spans()} == {source}


# --- the quota gate --------------------------------------------------------------------------------------------

DECISIONS = {
    "dave": {"decision": "deny", "budget": "dave-all", "scope": "user", "subject": "dave", "period": "day",
             "used_tokens": 1000, "limit_tokens": 1000},
    "erin": {"decision": "degrade", "budget": "erin-all", "scope": "user", "subject": "erin", "period": "day"},
    "carol": {"decision": "downgrade", "requested_model": BIG, "effective_model": MODEL, "budget": "carol-premium",
              "scope": "user", "subject": "carol", "period": "day", "used_tokens": 600, "limit_tokens": 600},
    "frank": {"decision": "warn", "budget": "frank-all", "ratio": 0.85, "threshold": 0.8},
}  # fmt: skip


@pytest.fixture
def enforcer() -> Iterator[DecidingEnforcer]:
    running = DecidingEnforcer(DECISIONS)
    yield running
    running.close()


@pytest.mark.parametrize("how", ["invoke", "stream", "batch", "ainvoke", "astream", "abatch"])
def test_deny_and_degrade_raise_the_openai_paths_errors_before_the_server_sees_a_request(
    instrument: Any, server: QwenOllamaServer, enforcer: DecidingEnforcer, how: str
) -> None:
    metered = instrument(enforcer_url=enforcer.url, enforcer_cache_seconds=0)
    model, messages = chat(server, model=BIG, num_predict=77), [HumanMessage(content=QUESTION)]
    runs = {"invoke": lambda: model.invoke(messages), "stream": lambda: list(model.stream(messages)),
            "batch": lambda: model.batch([messages]), "ainvoke": lambda: asyncio.run(model.ainvoke(messages)),
            "astream": lambda: asyncio.run(_collect(model.astream(messages))),
            "abatch": lambda: asyncio.run(model.abatch([messages]))}  # fmt: skip
    with tokenmeter.attribution(user="dave"), pytest.raises(QuotaExceeded) as denied:
        runs[how]()
    with tokenmeter.attribution(user="erin"), pytest.raises(QuotaDegraded):
        runs[how]()
    assert server.served == []
    assert type(denied.value) is QuotaExceeded and denied.value.budget == "dave-all"
    # The check's estimate: the counted input and the run's output limit (Ollama's num_predict).
    assert [(check["user"], check["model"], check["max_output_tokens"]) for check in enforcer.checks] == [
        ("dave", BIG, 77), ("erin", BIG, 77)]  # fmt: skip
    assert all(check["input_tokens"] > 0 for check in enforcer.checks)
    spans = metered.spans()
    assert [(span[semconv.TM_QUOTA_DECISION], span[semconv.ERROR_TYPE]) for span in spans] == [
        ("deny", "QuotaExceeded"), ("degrade", "QuotaDegraded")]  # fmt: skip
    assert all(semconv.GEN_AI_USAGE_INPUT_TOKENS not in span for span in spans)
    assert metered.telemetry.points(semconv.METRIC_USAGE_TOKENS) == []


@pytest.mark.parametrize("how", ["invoke", "astream"])
def test_a_downgrade_is_refused_naming_the_cheaper_model(
    instrument: Any, server: QwenOllamaServer, enforcer: DecidingEnforcer, how: str
) -> None:
    """A callback cannot switch the run's model; letting the run through would make the budget avoidable."""
    metered = instrument(enforcer_url=enforcer.url, enforcer_cache_seconds=0)
    model, messages = chat(server, model=BIG), [HumanMessage(content=QUESTION)]
    with tokenmeter.attribution(user="carol"), collecting_notices() as notices, pytest.raises(QuotaExceeded) as refused:
        model.invoke(messages) if how == "invoke" else asyncio.run(_collect(model.astream(messages)))
    assert server.served == []
    assert isinstance(refused.value, QuotaDowngradeRefused) and refused.value.budget == "carol-premium"
    assert f"cheaper model '{MODEL}'" in refused.value.message("en") and f"“{MODEL}”" in refused.value.message("zh")
    assert "600 / 600 tokens" in refused.value.message("en")
    assert [(verdict.action, verdict.effective_model) for verdict in notices] == [("deny", MODEL)]
    span = metered.only_span()
    assert span["name"] == f"chat {BIG}" and span[semconv.GEN_AI_REQUEST_MODEL] == BIG
    assert span[semconv.TM_QUOTA_DECISION] == "downgrade" and span[semconv.TM_EFFECTIVE_MODEL] == MODEL
    assert span[semconv.ERROR_TYPE] == "QuotaExceeded" and semconv.GEN_AI_USAGE_INPUT_TOKENS not in span


def test_warn_lets_the_run_through_and_is_noted(
    instrument: Any, server: QwenOllamaServer, enforcer: DecidingEnforcer
) -> None:
    metered = instrument(enforcer_url=enforcer.url, enforcer_cache_seconds=0)
    with tokenmeter.attribution(user="frank"), collecting_notices() as notices:
        answer = chat(server).invoke([HumanMessage(content=QUESTION)])
    (served,) = server.served
    assert answer.content == served.answer
    assert [(verdict.action, verdict.budget) for verdict in notices] == [("warn", "frank-all")]
    span = metered.only_span()
    assert span[semconv.TM_QUOTA_DECISION] == "warn" and semconv.ERROR_TYPE not in span
    assert span[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == served.eval_count


def test_a_model_a_routing_rule_or_an_experiment_chose_is_not_applied(
    instrument: Any, server: QwenOllamaServer
) -> None:
    """Not budgets: the run goes ahead with its own model, and its span says that model ran (the control arm)."""
    enforcer = DecidingEnforcer({
        "ivan": {"decision": "allow", "route_rule": "short-questions", "route_tier": "small", "effective_model": MODEL},
        "judy": {"decision": "allow", "experiment": "cheaper-kb", "experiment_arm": "candidate",
                 "effective_model": MODEL},
    })  # fmt: skip
    try:
        metered = instrument(enforcer_url=enforcer.url, enforcer_cache_seconds=0)
        for user in ("ivan", "judy"):
            with tokenmeter.attribution(user=user):
                chat(server, model=BIG).invoke([HumanMessage(content=QUESTION)])
    finally:
        enforcer.close()
    assert [served.body["model"] for served in server.served] == [BIG, BIG]
    routed, tried = metered.spans()
    for span in (routed, tried):
        assert span["name"] == f"chat {BIG}" and span[semconv.TM_QUOTA_DECISION] == "allow"
        assert span[semconv.GEN_AI_REQUEST_MODEL] == span[semconv.TM_EFFECTIVE_MODEL] == BIG
        assert span[semconv.GEN_AI_USAGE_INPUT_TOKENS] > 0 and semconv.ERROR_TYPE not in span
    assert routed[semconv.TM_ROUTE_RULE] == "short-questions"
    assert tried[semconv.TM_EXPERIMENT] == "cheaper-kb" and tried[semconv.TM_EXPERIMENT_ARM] == semconv.ARM_CONTROL


class HeldEnforcer:
    """An enforcer stand-in that answers a check (allow) only once the test's event loop has seen it arrive."""

    def __init__(self) -> None:
        self.arrived, self.go = threading.Event(), threading.Event()
        self.released_by_the_loop: list[bool] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.path == "/v1/check":
                    outer.arrived.set()
                    outer.released_by_the_loop.append(outer.go.wait(timeout=15))
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", "21")
                self.end_headers()
                self.wfile.write(b'{"decision": "allow"}')

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    async def release_when_arrived(self) -> None:
        while not self.arrived.is_set():  # runs only while the loop is free
            await asyncio.sleep(0.01)
        self.go.set()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def test_an_async_chat_runs_check_leaves_the_event_loop_free(instrument: Any, server: QwenOllamaServer) -> None:
    """The chat check runs in LangChain's executor in async runs: the loop serves other tasks meanwhile."""
    held = HeldEnforcer()
    try:
        instrument(enforcer_url=held.url, enforcer_cache_seconds=0, enforcer_timeout=30)

        async def run() -> None:
            await asyncio.gather(chat(server).ainvoke([HumanMessage(content=QUESTION)]), held.release_when_arrived())

        asyncio.run(run())
    finally:
        held.close()
    assert held.released_by_the_loop == [True]
    assert len(server.served) == 1


class QwenLikeLLM(FakeListLLM):
    """A text-completion LLM class outside the patched clients, serving qwen2.5-7b-instruct."""

    @property
    def _identifying_params(self) -> dict[str, object]:  # an LLM's invocation parameters
        return {"model_name": "qwen2.5-7b-instruct", "model_kwargs": {"max_tokens": 33}}


class BudgetRunsOut(dict[str, Any]):
    """Decisions for the deciding enforcer: allow ``allowed`` checks, then deny."""

    def __init__(self, allowed: int) -> None:
        super().__init__()
        self.allowed = allowed

    def get(self, user: Any, default: Any = None) -> dict[str, Any]:
        self.allowed -= 1
        return {"decision": "allow"} if self.allowed >= 0 else {"decision": "deny", "budget": "all"}


def test_an_llm_classs_runs_are_checked_and_a_refusal_stops_its_whole_batch(instrument: Any) -> None:
    """An LLM's batch is one generate() call: a refusal there stops it, and its runs started before are ended
    (not made: nothing billed, their checks released), none left open."""
    enforcer = DecidingEnforcer(BudgetRunsOut(allowed=1))
    try:
        metered = instrument(enforcer_url=enforcer.url, enforcer_cache_seconds=0)
        with tokenmeter.attribution(user="gina"), pytest.raises(QuotaExceeded):
            QwenLikeLLM(responses=["a", "b", "c"]).batch(["第一问", "第二问", "第三问"])
        with tokenmeter.attribution(user="gina"), pytest.raises(QuotaExceeded):
            asyncio.run(QwenLikeLLM(responses=["a"]).ainvoke("第四问"))
    finally:
        enforcer.close()
    assert [check["max_output_tokens"] for check in enforcer.checks] == [33, 33, 33]
    spans = metered.spans()
    assert [(span["name"], span[semconv.TM_QUOTA_DECISION], span[semconv.ERROR_TYPE]) for span in spans] == [
        ("text_completion qwen2.5-7b-instruct", "allow", "QuotaExceeded"),
        ("text_completion qwen2.5-7b-instruct", "deny", "QuotaExceeded"),
        ("text_completion qwen2.5-7b-instruct", "deny", "QuotaExceeded"),
    ]  # fmt: skip
    assert metered.telemetry.points(semconv.METRIC_USAGE_TOKENS) == []


# --- with environment variables only ---------------------------------------------------------------------------

_APP = """
from langchain_community.chat_models.ollama import ChatOllama
from tokenmeter.instrumentation.quota.errors import QuotaExceeded
try:
    ChatOllama(model="qwen2.5:7b", base_url="{base_url}").invoke("你好")
except QuotaExceeded as error:
    print("refused:", type(error).__name__, error.budget, flush=True)
"""


def test_opentelemetry_instrument_checks_and_meters_a_community_chat_model(server: QwenOllamaServer) -> None:
    """`opentelemetry-instrument` with TOKENMETER_* variables: the app has no tokenmeter code."""
    executable = Path(sys.executable).parent / "opentelemetry-instrument"
    command = str(executable) if executable.exists() else shutil.which("opentelemetry-instrument")
    assert command, "opentelemetry-instrument is not installed (the otlp extra)"
    enforcer = DecidingEnforcer({"": {"decision": "deny", "budget": "org-day"}})  # no user: the app sets none
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "console", "OTEL_METRICS_EXPORTER": "none",
           "OTEL_LOGS_EXPORTER": "none", "TOKENMETER_HASH_KEY": "k",
           "TOKENMETER_ENFORCER_URL": enforcer.url}  # fmt: skip
    try:
        result = subprocess.run([command, sys.executable, "-c", _APP.format(base_url=server.base_url)], env=env,
                                capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    finally:
        enforcer.close()
    assert result.returncode == 0, result.stderr
    assert "refused: QuotaExceeded org-day" in result.stdout
    assert server.served == []
    assert [(check["model"], check["user"]) for check in enforcer.checks] == [(MODEL, "")]
    span = json.loads(result.stdout[result.stdout.index("{") :].rsplit("}", 1)[0] + "}")
    assert span["name"] == f"chat {MODEL}"
    assert span["attributes"][semconv.TM_QUOTA_DECISION] == "deny"
    assert span["attributes"][semconv.GEN_AI_PROVIDER_NAME] == semconv.PROVIDER_OLLAMA
