"""Real Langchain-Chatchat 0.3.1.3, metered with environment variables only, against a local model server.

Runs when ``TOKENMETER_CHATCHAT_VENV`` names a venv with Chatchat and tokenmeter installed
(``make test`` makes ``.venv-chatchat`` and sets it). Chatchat runs under
``opentelemetry-instrument`` and exports to a real ``tokenmeter serve``, which also holds
the quota policy; its model platform is a local OpenAI-compatible server that counts
with each model's tokenizer and records whose call it served (from the baggage).

The last tests stop Chatchat in each way users and service managers do, right after its
last answer, and compare what the model server served with what reached the store.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from budget_days import timezone_far_from_midnight
from chatchat_process import ChatchatProcess, chatchat_venv, configure
from serve_process import ServeProcess
from waiting import wait_for

from tokenmeter.catalog import ModelCatalog
from tokenmeter.demo.llm_server import DemoLLMServer
from tokenmeter.tokenizers import TokenizerRegistry

VENV = chatchat_venv()
pytestmark = pytest.mark.skipif(VENV is None, reason="TOKENMETER_CHATCHAT_VENV is not set (make test sets it)")

LLMS = ["qwen2.5-7b-instruct", "qwen-max", "qwen-plus"]
EMBEDDINGS = ["text-embedding-3-small"]
POLICY = """
model_groups:
  premium: ["qwen-max"]
  chat-models: ["qwen*"]
routes:
  qwen-max: qwen-plus
budgets:
  - {name: dave-cap, scope: user, subject: dave, period: day, limit: {tokens: 1}, action: deny}
  - {name: erin-premium, scope: user, subject: erin, period: day, models: premium, limit: {tokens: 1},
     action: downgrade}
  - {name: gina-cap, scope: user, subject: gina, period: day, models: chat-models, limit: {tokens: 1},
     action: degrade}
  # Warned from their second call on (10 tokens used), never stopped.
  - {name: ivy-watch, scope: user, subject: ivy, period: day, limit: {tokens: 100000000}, warn_at: [0.0000001]}
  - {name: jack-watch, scope: user, subject: jack, period: day, limit: {tokens: 100000000}, warn_at: [0.0000001]}
  - {name: kim-cap, scope: user, subject: kim, period: day, limit: {tokens: 1}, action: deny}
  - {name: lily-cap, scope: user, subject: lily, period: day, models: chat-models, limit: {tokens: 1}, action: deny}
  - {name: mona-cap, scope: user, subject: mona, period: day, models: chat-models, limit: {tokens: 1},
     action: degrade}
  - {name: nina-cap, scope: user, subject: nina, period: day, models: chat-models, limit: {tokens: 1},
     action: degrade}
"""
HANDBOOK = "报销制度：员工出差回来后三十天内提交报销，附发票原件和审批单。年假：满一年五天，满十年十天。\n" * 20
QUESTION = "公司的报销制度是怎样的？请简要说明。"
TOPUP_URL = "https://tokenmeter.example/#request?budget={budget}&subject={subject}"


@pytest.fixture(scope="module")
def tiktoken_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LangChain's OpenAIEmbeddings counts with tiktoken's cl100k_base and would download it."""
    assert VENV is not None
    cache = tmp_path_factory.mktemp("tiktoken-cache")
    seeded = subprocess.run([str(VENV / "bin" / "tokenmeter"), "tiktoken-cache", str(cache)],
                            capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert seeded.returncode == 0, seeded.stderr
    return cache


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiktoken_cache: Path
          ) -> Iterator[tuple[ChatchatProcess, ServeProcess, DemoLLMServer]]:  # fmt: skip
    assert VENV is not None
    work = tmp_path_factory.mktemp("chatchat")
    upstream = DemoLLMServer(TokenizerRegistry(ModelCatalog.load(None))).start()
    policy = work / "policy.yaml"
    policy.write_text(f"timezone: {timezone_far_from_midnight()}\n{POLICY}", encoding="utf-8")
    serve = ServeProcess(work / "serve", ["--policy", str(policy), "--refresh-interval", "0.5",
                                          "--settle-seconds", "3"]).start()  # fmt: skip
    root = work / "chatchat"
    root.mkdir()
    port = configure(root, VENV, upstream.base_url, LLMS, EMBEDDINGS)
    chatchat = ChatchatProcess(root, VENV, port, {
        "OTEL_SERVICE_NAME": "chatchat", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": serve.otlp_http, "OTEL_METRIC_EXPORT_INTERVAL": "1000",
        "OTEL_TRACES_EXPORTER": "otlp", "OTEL_METRICS_EXPORTER": "otlp", "OTEL_LOGS_EXPORTER": "none",
        # Spans leave within 0.2 s: the last test reads them from the store after stopping
        # Chatchat, whose `start` ends the API child with SIGKILL (no flush at exit).
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "TOKENMETER_ENFORCER_URL": serve.api, "TOKENMETER_ENFORCER_TOKEN": serve.api_token,
        # On a loaded 2-core CI machine a check can exceed the 50 ms default; the call then fails open
        # (and the client skips the enforcer for a second), so the routing asserted here would depend
        # on timing (CI saw qwen-max called twice). Fail-open itself is tested in test_quota_client.
        "TOKENMETER_ENFORCER_TIMEOUT": "5",
        "TOKENMETER_HASH_KEY": "chatchat-test", "TIKTOKEN_CACHE_DIR": str(tiktoken_cache),
        # The model server here is a test instrument that tells users apart by the baggage they
        # send: opt in to sending it to loopback model servers (by default only hops get it).
        "TOKENMETER_PROPAGATE": "loopback",
        "TOKENMETER_TOPUP_URL": TOPUP_URL,
    })  # fmt: skip
    try:
        chatchat.start()
        yield chatchat, serve, upstream
    finally:
        chatchat.stop()
        serve.stop()
        upstream.stop()


def chat(chatchat: ChatchatProcess, user: str, department: str, model: str = LLMS[0], *, stream: bool = False,
         **extra: Any) -> httpx.Response:  # fmt: skip
    body = {"model": model, "messages": [{"role": "user", "content": QUESTION}], "stream": stream, **extra}
    return chatchat.post("/chat/chat/completions", body, user, department)


def stored_tokens_by_user(serve: ServeProcess) -> dict[str, int]:
    response = httpx.get(f"{serve.api}/v1/report", params={"by": "user", "period": "day"},
                         headers={"authorization": f"Bearer {serve.api_token}"}, timeout=30)  # fmt: skip
    response.raise_for_status()
    return {row["subject"]: row["input_tokens"] + row["output_tokens"] for row in response.json()["rows"]}


def test_knowledge_base_upload_and_chat_and_a_degraded_user_gets_retrieval_only(
    stack: tuple[ChatchatProcess, ServeProcess, DemoLLMServer],
    tmp_path: Path,
) -> None:
    chatchat, _serve, upstream = stack
    created = chatchat.post("/knowledge_base/create_knowledge_base",
                            {"knowledge_base_name": "hr", "embed_model": EMBEDDINGS[0]}, "admin", "IT部")  # fmt: skip
    assert created.status_code == 200 and created.json()["code"] == 200, created.text
    handbook = tmp_path / "handbook.txt"
    handbook.write_text(HANDBOOK, encoding="utf-8")
    with handbook.open("rb") as file:
        uploaded = httpx.post(f"{chatchat.url}/knowledge_base/upload_docs", files={"files": file},
                              data={"knowledge_base_name": "hr"}, timeout=120,
                              headers={"X-Forwarded-User": "admin", "X-Department": "IT部".encode()})  # fmt: skip
    assert uploaded.status_code == 200 and uploaded.json()["code"] == 200, uploaded.text
    assert not uploaded.json()["data"]["failed_files"], uploaded.text
    # The documents were embedded in Chatchat's thread pool, on behalf of the uploader.
    assert upstream.tokens_by_user.get("admin", 0) > 0

    body = {"query": "报销要在多久内提交？", "kb_name": "hr", "stream": False, "model": LLMS[0]}
    first = chatchat.post("/chat/kb_chat", body, "gina", "研发部")
    assert first.status_code == 200 and "error" not in first.text, first.text
    chat_calls = sum(upstream.calls_by_model[model] for model in LLMS)
    assert chat_calls == 1  # the answer came from the model
    degraded = chatchat.post("/chat/kb_chat", {**body, "stream": True}, "gina", "研发部")
    assert degraded.status_code == 200 and "error" not in degraded.text, degraded.text
    assert "三十天内提交报销" in degraded.text  # the retrieved passage ...
    assert sum(upstream.calls_by_model[model] for model in LLMS) == chat_calls  # ... and no model call
    link = "https://tokenmeter.example/#request?budget=gina-cap&subject=gina"
    assert f"如需追加额度，请在此申请：{link}" in degraded.text  # ... and where to ask for more
    plain = chat(chatchat, "gina", "研发部")
    assert plain.status_code == 429 and plain.json()["error"]["type"] == "quota_degraded"
    assert f"To ask for a top-up: {link}" in plain.json()["error"]["message"]


def test_file_chat_on_a_temporary_document(stack: tuple[ChatchatProcess, ServeProcess, DemoLLMServer],
                                           tmp_path: Path) -> None:  # fmt: skip
    chatchat, _serve, upstream = stack
    handbook = tmp_path / "handbook.txt"
    handbook.write_text(HANDBOOK, encoding="utf-8")
    with handbook.open("rb") as file:
        uploaded = httpx.post(f"{chatchat.url}/knowledge_base/upload_temp_docs", files={"files": file}, timeout=120,
                              headers={"X-Forwarded-User": "hana", "X-Department": "销售部".encode()})  # fmt: skip
    assert uploaded.status_code == 200 and not uploaded.json()["data"]["failed_files"], uploaded.text
    knowledge_id = uploaded.json()["data"]["id"]
    body = {"query": "年假有几天？", "knowledge_id": knowledge_id, "stream": True, "model_name": LLMS[0]}
    answered = chatchat.post("/chat/file_chat", body, "hana", "销售部")
    assert answered.status_code == 200 and "error" not in answered.text, answered.text
    assert upstream.tokens_by_user.get("hana", 0) > 0


def test_every_users_tokens_in_the_store_equal_what_the_model_server_served(
    stack: tuple[ChatchatProcess, ServeProcess, DemoLLMServer],
) -> None:
    chatchat, serve, upstream = stack
    assert chat(chatchat, "alice", "研发部").status_code == 200
    streamed = chat(chatchat, "bob", "销售部", stream=True)
    assert streamed.status_code == 200 and "data:" in streamed.text
    v1 = chatchat.post("/v1/chat/completions", {"model": LLMS[0], "messages": [{"role": "user", "content": QUESTION}]},
                       "carol", "销售部")  # fmt: skip
    assert v1.status_code == 200, v1.text
    # Agent chat: Chatchat's agent calls Chatchat's own /v1 (a hop), which calls the model server.
    agent = chat(chatchat, "frank", "研发部", tools=["calculate"], stream=True)
    assert agent.status_code == 200, agent.text
    served = dict(upstream.tokens_by_user)
    assert served.get("", 0) == 0, "a call reached the model server without its user"
    assert {"alice", "bob", "carol", "frank", "admin", "gina", "hana"} <= set(served)
    deadline = time.monotonic() + 90
    stored: dict[str, int] = {}
    while time.monotonic() < deadline:
        stored = stored_tokens_by_user(serve)
        if all(stored.get(user) == tokens for user, tokens in served.items()):
            break
        time.sleep(0.5)
    assert {user: stored.get(user) for user in served} == served, chatchat.log_tail()


def test_a_denied_user_gets_429_with_the_quota_message(
    stack: tuple[ChatchatProcess, ServeProcess, DemoLLMServer],
) -> None:
    chatchat, _serve, upstream = stack
    assert chat(chatchat, "dave", "研发部").status_code == 200  # room for one call
    calls_before = sum(upstream.calls_by_model.values())
    streamed = chat(chatchat, "dave", "研发部", stream=True)  # Chatchat streams after answering 200 ...
    assert streamed.status_code == 429, streamed.text  # ... so the pre-check refuses first
    denied = chat(chatchat, "dave", "研发部")
    assert denied.status_code == 429, denied.text
    error = denied.json()["error"]
    assert error["type"] == "quota_exceeded" and error["budget"] == "dave-cap"
    assert "额度已用尽" in error["message"] and "Quota exceeded" in error["message"]
    assert int(denied.headers["retry-after"]) > 0
    assert sum(upstream.calls_by_model.values()) == calls_before  # the model was never called


def test_a_downgraded_users_calls_reach_the_cheaper_model(
    stack: tuple[ChatchatProcess, ServeProcess, DemoLLMServer],
) -> None:
    chatchat, _serve, upstream = stack
    before = dict(upstream.calls_by_model)
    assert chat(chatchat, "erin", "研发部", "qwen-max").status_code == 200
    downgraded = chat(chatchat, "erin", "研发部", "qwen-max")
    assert downgraded.status_code == 200, downgraded.text
    assert upstream.calls_by_model["qwen-max"] == before.get("qwen-max", 0) + 1
    assert upstream.calls_by_model["qwen-plus"] == before.get("qwen-plus", 0) + 1
    assert downgraded.headers.get("x-tokenmeter-quota", "").startswith("downgrade;")
    # Every chat route: knowledge-base chat (LangChain's ChatOpenAI) is downgraded too.
    kb_answer = chatchat.post("/chat/kb_chat", {"query": "年假有几天？", "kb_name": "hr", "stream": False,
                                                "model": "qwen-max"}, "erin", "研发部")  # fmt: skip
    assert kb_answer.status_code == 200 and "error" not in kb_answer.text, kb_answer.text
    assert upstream.calls_by_model["qwen-max"] == before.get("qwen-max", 0) + 1
    assert upstream.calls_by_model["qwen-plus"] == before.get("qwen-plus", 0) + 2


# --- what the person at Chatchat's WebUI reads ------------------------------------------

PASSAGE = "三十天内提交报销"
RETRIEVAL_ONLY = ("仅提供知识库检索结果", "answers come from retrieval only")


def ask(question: str = QUESTION) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}]


def kb_page_params(model: str = LLMS[0], **extra_body: Any) -> dict[str, Any]:
    """What the WebUI's knowledge-base page sends (webui_pages/kb_chat.py)."""
    return {"messages": ask("报销要在多久内提交？"), "model": model, "stream": True,
            "extra_body": {"top_k": 3, "score_threshold": 2.0, "temperature": 0.7, "prompt_name": "default",
                           "return_direct": False, **extra_body}}  # fmt: skip


def chat_calls(upstream: DemoLLMServer) -> int:
    return sum(upstream.calls_by_model[model] for model in LLMS)


def test_a_warned_user_reads_the_warning_in_the_webui_once(
    stack: tuple[ChatchatProcess, ServeProcess, DemoLLMServer],
) -> None:
    chatchat, _serve, _upstream = stack
    assert chat(chatchat, "ivy", "rnd").status_code == 200  # nothing used yet: no warning
    streamed = {"model": LLMS[0], "messages": ask(), "stream": True}
    warned = chatchat.webui("dialogue", "ivy", "rnd", params=streamed)
    assert not warned["errors"], warned
    answer, _, notice = warned["text"].partition("⚠️")
    assert answer.strip(), warned  # the model's answer, then the notice in Chinese and English
    assert "额度提醒" in notice and "ivy-watch" in notice and "Quota notice" in notice, warned
    again = chatchat.webui("dialogue", "ivy", "rnd", params=streamed)
    assert again["text"].strip() and "⚠️" not in again["text"], again  # once per threshold and period
    plain = chatchat.webui("dialogue", "ivy", "rnd", params={**streamed, "stream": False})
    assert "⚠️" not in plain["text"], plain


def test_agent_chat_shows_the_warning_of_the_calls_its_agent_made(
    stack: tuple[ChatchatProcess, ServeProcess, DemoLLMServer],
) -> None:
    """The agent's model calls go through Chatchat's own /v1 (hops): their warning reaches the agent chat."""
    chatchat, _serve, _upstream = stack
    assert chat(chatchat, "jack", "rnd").status_code == 200
    agent = {"model": LLMS[0], "messages": ask("计算 23*7 等于多少？"), "stream": True, "tools": ["calculate"]}
    shown = chatchat.webui("dialogue", "jack", "rnd", params=agent)
    assert "额度提醒" in shown["text"] and "jack-watch" in shown["text"], shown


def test_the_knowledge_base_openai_route_is_checked_before_it_answers(
    stack: tuple[ChatchatProcess, ServeProcess, DemoLLMServer],
) -> None:
    """/knowledge_base/{mode}/{id}/chat/completions, the route of the WebUI's knowledge-base and file pages."""
    chatchat, _serve, upstream = stack
    assert chat(chatchat, "kim", "rnd").status_code == 200 and chat(chatchat, "mona", "rnd").status_code == 200
    calls, model_calls = sum(upstream.calls_by_model.values()), chat_calls(upstream)
    denied = chatchat.post("/knowledge_base/local_kb/hr/chat/completions",
                           {"model": LLMS[0], "messages": ask(), "stream": True}, "kim", "rnd")  # fmt: skip
    assert denied.status_code == 429, denied.text
    error = denied.json()["error"]
    assert error["type"] == "quota_exceeded" and error["budget"] == "kim-cap" and "额度已用尽" in error["message"]
    assert int(denied.headers["retry-after"]) > 0
    shown = chatchat.webui("kb", "kim", "rnd", kb_path="local_kb/hr", params=kb_page_params())
    assert "额度已用尽" in json.dumps(shown["errors"], ensure_ascii=False), shown
    assert sum(upstream.calls_by_model.values()) == calls  # no embedding either

    degraded = chatchat.webui("kb", "mona", "rnd", kb_path="local_kb/hr", params=kb_page_params())
    assert not degraded["errors"], degraded
    assert PASSAGE in "".join(degraded["docs"]), degraded  # the passages ...
    assert all(text in degraded["text"] for text in RETRIEVAL_ONLY), degraded  # ... said to be the answer
    assert chat_calls(upstream) == model_calls  # no model call


def test_a_quota_that_stops_the_model_after_the_answer_started_is_an_error_in_the_stream(
    stack: tuple[ChatchatProcess, ServeProcess, DemoLLMServer],
) -> None:
    """Past the pre-check's 1 MiB the model call's own check decides, after the passages were sent;
    Chatchat runs that call in a task that only logs its errors."""
    chatchat, _serve, upstream = stack
    assert chat(chatchat, "lily", "rnd").status_code == 200
    calls = chat_calls(upstream)
    past_the_precheck = kb_page_params(padding="x" * (2 << 20))
    shown = chatchat.webui("kb", "lily", "rnd", kb_path="local_kb/hr", params=past_the_precheck)
    assert PASSAGE in "".join(shown["docs"]), shown
    assert "额度已用尽" in "".join(shown["errors"]) and "lily-cap" in "".join(shown["errors"]), shown
    assert chat_calls(upstream) == calls


def test_a_degraded_users_file_chat_answers_with_the_passages(
    stack: tuple[ChatchatProcess, ServeProcess, DemoLLMServer],
    tmp_path: Path,
) -> None:
    chatchat, _serve, upstream = stack
    assert chat(chatchat, "nina", "rnd").status_code == 200
    handbook = tmp_path / "handbook.txt"
    handbook.write_text(HANDBOOK, encoding="utf-8")
    with handbook.open("rb") as file:
        uploaded = httpx.post(f"{chatchat.url}/knowledge_base/upload_temp_docs", files={"files": file}, timeout=120,
                              headers={"X-Forwarded-User": "nina", "X-Department": "rnd"})  # fmt: skip
    assert uploaded.status_code == 200 and not uploaded.json()["data"]["failed_files"], uploaded.text
    calls = chat_calls(upstream)
    for stream in (True, False):
        shown = chatchat.webui("file_chat", "nina", "rnd", params={
            "query": "年假有几天？", "knowledge_id": uploaded.json()["data"]["id"], "model": LLMS[0], "stream": stream,
        })  # fmt: skip
        assert not shown["errors"], shown
        assert "年假" in "".join(shown["docs"]), shown
        assert all(text in shown["text"] for text in RETRIEVAL_ONLY), shown
    assert chat_calls(upstream) == calls


def test_a_downgraded_stream_names_the_model_that_answered(
    stack: tuple[ChatchatProcess, ServeProcess, DemoLLMServer],
) -> None:
    """erin is past her premium budget (test_a_downgraded_users_calls_reach_the_cheaper_model)."""
    chatchat, _serve, _upstream = stack
    said = ("本回答由 qwen-plus 生成", "This answer is from qwen-plus")
    shown = chatchat.webui("dialogue", "erin", "rnd", params={"model": "qwen-max", "messages": ask(), "stream": True})
    assert set(shown["models"]) == {"qwen-plus"} and all(text in shown["text"] for text in said), shown
    kb_page = chatchat.webui("kb", "erin", "rnd", kb_path="local_kb/hr", params=kb_page_params("qwen-max"))
    assert all(text in kb_page["text"] for text in said), kb_page
    events = chatchat.webui("events", "erin", "rnd", path="/chat/kb_chat", params={
        "query": "年假有几天？", "kb_name": "hr", "stream": True, "model": "qwen-max"})["events"]  # fmt: skip
    answer = events[1:]  # after the passages
    assert answer and {event.get("model") for event in answer} == {"qwen-plus"}, events
    assert said[0] in "".join(event["choices"][0]["delta"]["content"] or "" for event in answer), events


def test_chatchat_started_with_the_integration(stack: tuple[ChatchatProcess, ServeProcess, DemoLLMServer]) -> None:
    chatchat, _serve, _upstream = stack
    log = chatchat.log_tail(200_000)
    assert "Traceback" not in log, log[-3000:]
    assert Path(chatchat.root / "chatchat.log").exists()


def test_the_agents_loopback_call_is_a_hop_billed_once(stack: tuple[ChatchatProcess, ServeProcess, DemoLLMServer]
                                                       ) -> None:  # fmt: skip
    """Runs last: stops Chatchat and serve to read serve's chDB store."""
    chatchat, serve, _upstream = stack
    time.sleep(3)  # the last spans' batch export (OTEL_BSP_SCHEDULE_DELAY=200)
    chatchat.stop()
    serve.stop()
    with serve.store() as store:
        hops = store.query(
            "SELECT count() FROM otel_traces WHERE SpanAttributes['tokenmeter.hop'] = 'true' "
            "AND SpanAttributes['enduser.id'] = 'frank'"
        ).result_rows[0][0]
        forwarded = store.query("SELECT count() FROM llm_usage FINAL WHERE user = 'frank'").result_rows[0][0]
        hop_rows = store.query(
            "SELECT count() FROM llm_usage FINAL WHERE span_id IN "
            "(SELECT SpanId FROM otel_traces WHERE SpanAttributes['tokenmeter.hop'] = 'true')"
        ).result_rows[0][0]
    assert hops >= 1, "the agent did not call Chatchat's own /v1"
    assert forwarded >= hops  # each hop's forwarded call is in the audit trail ...
    assert hop_rows == 0  # ... and the hop itself is not


# --- stopping Chatchat loses no usage --------------------------------------------------

# How Chatchat is stopped: (signal, to whom). `chatchat start` (the launcher) runs the API
# server in a child process and used to SIGKILL it when signalled.
GRACEFUL_STOPS = {
    "ctrl-c": (signal.SIGINT, "group"),  # Ctrl-C in a terminal
    "kill-launcher": (signal.SIGTERM, "launcher"),  # kill <pid of chatchat start>
    "group-sigterm": (signal.SIGTERM, "group"),  # systemd's default (KillMode=control-group)
}
KILLED = "sigkill-api"  # the API server SIGKILLed: no chance to flush at all
# docs/chatchat.md's recommended interval: the graceful stops must not lean on a short one.
DOCS_EXPORT_INTERVAL_MS = "10000"
# With SIGKILL, usage can only have left before the kill: no periodic export may carry it.
NO_PERIODIC_EXPORT_MS = "3600000"


@dataclass
class StoppableChatchat:
    chatchat: ChatchatProcess
    upstream: DemoLLMServer  # its own model server: everything it served is this Chatchat's bill
    users: tuple[str, str]


@pytest.fixture(scope="module")
def stoppable(tmp_path_factory: pytest.TempPathFactory, tiktoken_cache: Path
              ) -> Iterator[tuple[dict[str, StoppableChatchat], ServeProcess]]:  # fmt: skip
    """One Chatchat per way of stopping it (each is stopped), started at once, exporting to one serve.

    Default tokenmeter settings apart from the exporter: identity goes to hops only.
    """
    assert VENV is not None
    work = tmp_path_factory.mktemp("chatchat-stops")
    serve = ServeProcess(work / "serve").start()
    registry = TokenizerRegistry(ModelCatalog.load(None))
    stacks: dict[str, StoppableChatchat] = {}
    try:
        for mode in [*GRACEFUL_STOPS, KILLED]:
            upstream = DemoLLMServer(registry).start()
            root = work / mode
            root.mkdir()
            port = configure(root, VENV, upstream.base_url, LLMS, EMBEDDINGS)
            chatchat = ChatchatProcess(root, VENV, port, {
                "OTEL_SERVICE_NAME": "chatchat", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_EXPORTER_OTLP_ENDPOINT": serve.otlp_http, "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_METRICS_EXPORTER": "otlp", "OTEL_LOGS_EXPORTER": "none",
                "OTEL_METRIC_EXPORT_INTERVAL": NO_PERIODIC_EXPORT_MS if mode == KILLED else DOCS_EXPORT_INTERVAL_MS,
                "TOKENMETER_HASH_KEY": "chatchat-test", "TIKTOKEN_CACHE_DIR": str(tiktoken_cache),
            })  # fmt: skip
            stacks[mode] = StoppableChatchat(chatchat.launch(), upstream, (f"{mode}-ann", f"{mode}-ben"))
        for stoppable_chatchat in stacks.values():
            stoppable_chatchat.chatchat.wait_until_ready()
        yield stacks, serve
    finally:
        for stoppable_chatchat in stacks.values():
            stoppable_chatchat.chatchat.stop()
            stoppable_chatchat.upstream.stop()
        serve.stop()


def use_chatchat(stack: StoppableChatchat) -> int:
    """Plain, streamed, /v1 and agent chat (a hop to Chatchat's own /v1) as two users; returns the tokens served."""
    chatchat, (ann, ben) = stack.chatchat, stack.users
    assert chat(chatchat, ann, "研发部").status_code == 200
    streamed = chat(chatchat, ben, "销售部", stream=True)
    assert streamed.status_code == 200 and "data:" in streamed.text
    v1 = chatchat.post("/v1/chat/completions", {"model": LLMS[1], "messages": [{"role": "user", "content": QUESTION}]},
                       ben, "销售部")  # fmt: skip
    assert v1.status_code == 200, v1.text
    agent = chat(chatchat, ann, "研发部", tools=["calculate"], stream=True)
    assert agent.status_code == 200, agent.text
    # The default TOKENMETER_PROPAGATE: no user id reached the model server, only Chatchat's own /v1.
    assert set(stack.upstream.tokens_by_user) == {""}, dict(stack.upstream.tokens_by_user)
    return sum(stack.upstream.tokens_by_user.values())


def stored_tokens(serve: ServeProcess, users: tuple[str, ...]) -> int:
    by_user = stored_tokens_by_user(serve)
    return sum(by_user.get(user, 0) for user in users)


@pytest.mark.parametrize("mode", list(GRACEFUL_STOPS))
def test_stopping_chatchat_right_after_its_last_answer_loses_no_usage(
    stoppable: tuple[dict[str, StoppableChatchat], ServeProcess],
    mode: str,
) -> None:
    stacks, serve = stoppable
    stack = stacks[mode]
    served = use_chatchat(stack)
    signal_number, to = GRACEFUL_STOPS[mode]
    stack.chatchat.stop_with(signal_number, to=to)  # long before the next periodic export (10 s)
    stack.chatchat.wait_for_exit()
    assert "Sending SIGKILL" in stack.chatchat.log_tail(200_000)  # Chatchat's own kill still ran, after ours
    # the store ingests asynchronously
    wait_for(lambda: stored_tokens(serve, stack.users) >= served, timeout=60, interval=0.5)
    assert stored_tokens(serve, stack.users) == served, stack.chatchat.log_tail()


def test_a_killed_api_server_had_exported_all_but_its_last_second(
    stoppable: tuple[dict[str, StoppableChatchat], ServeProcess],
) -> None:
    """SIGKILL leaves no time to flush. With no periodic export (1 h interval), the usage reaches the
    store while Chatchat runs only through the debounced export (TOKENMETER_USAGE_FLUSH_SECONDS, 1 s)."""
    stacks, serve = stoppable
    stack = stacks[KILLED]
    served = use_chatchat(stack)
    stored = wait_for(lambda: stored_tokens(serve, stack.users) >= served, timeout=60, interval=0.5)
    assert stored, stack.chatchat.log_tail()
    stack.chatchat.stop_with(signal.SIGKILL, to="api")
    stack.chatchat.wait_for_exit()  # the launcher ends when its server is gone
    assert stored_tokens(serve, stack.users) == served
