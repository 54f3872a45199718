"""Real Langchain-Chatchat 0.3.1.3: its knowledge-base chat reports what it retrieved, and a routing rule on it
sends a grounded question to the small model (docs/chatchat.md, docs/routing.md).

Runs when ``TOKENMETER_CHATCHAT_VENV`` names a venv with Chatchat and tokenmeter installed (``make
test-chatchat``). Chatchat runs under ``opentelemetry-instrument`` against a real ``tokenmeter serve`` whose
policy routes calls with retrieved passages on ``/chat/kb_chat`` to the small tier; its model platform is a
local OpenAI-compatible server that counts the calls per model.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from chatchat_process import ChatchatProcess, chatchat_venv, configure
from serve_process import ServeProcess
from waiting import wait_for

from tokenmeter.catalog import ModelCatalog
from tokenmeter.demo.llm_server import DemoLLMServer
from tokenmeter.tokenizers import TokenizerRegistry

VENV = chatchat_venv()
pytestmark = pytest.mark.skipif(VENV is None, reason="TOKENMETER_CHATCHAT_VENV is not set (make test sets it)")

SMALL, LARGE = "qwen2.5-7b-instruct", "qwen-max"
EMBEDDINGS = ["text-embedding-3-small"]
POLICY = f"""
timezone: UTC
budgets:
  - {{name: org, scope: organisation, period: day, limit: {{tokens: 100000000}}}}
routing:
  tiers:
    - {{name: small, model: {SMALL}}}
    - {{name: large, model: {LARGE}}}
  rules:
    - name: grounded
      when: {{app_routes: ["/chat/kb_chat"], passages: {{min: 1}}}}
      tier: small
"""
HANDBOOK = "报销制度：员工出差回来后三十天内提交报销，附发票原件和审批单。年假：满一年五天，满十年十天。\n" * 20


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ChatchatProcess, ServeProcess, DemoLLMServer]]:
    assert VENV is not None
    work = tmp_path_factory.mktemp("chatchat-retrieval")
    cache = work / "tiktoken-cache"  # LangChain's OpenAIEmbeddings counts with cl100k_base: seeded, not downloaded
    seeded = subprocess.run([str(VENV / "bin" / "tokenmeter"), "tiktoken-cache", str(cache)],
                            capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert seeded.returncode == 0, seeded.stderr
    upstream = DemoLLMServer(TokenizerRegistry(ModelCatalog.load(None))).start()
    policy = work / "policy.yaml"
    policy.write_text(POLICY, encoding="utf-8")
    serve = ServeProcess(work / "serve", ["--policy", str(policy), "--refresh-interval", "0.5"]).start()
    root = work / "chatchat"
    root.mkdir()
    port = configure(root, VENV, upstream.base_url, [SMALL, LARGE], EMBEDDINGS)
    chatchat = ChatchatProcess(root, VENV, port, {
        "OTEL_SERVICE_NAME": "chatchat", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": serve.otlp_http, "OTEL_METRIC_EXPORT_INTERVAL": "1000",
        "OTEL_TRACES_EXPORTER": "otlp", "OTEL_METRICS_EXPORTER": "otlp", "OTEL_LOGS_EXPORTER": "none",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "TOKENMETER_ENFORCER_URL": serve.api, "TOKENMETER_ENFORCER_TOKEN": serve.api_token,
        "TOKENMETER_ENFORCER_TIMEOUT": "5", "TOKENMETER_HASH_KEY": "chatchat-test", "TIKTOKEN_CACHE_DIR": str(cache),
    })  # fmt: skip
    try:
        chatchat.start()
        yield chatchat, serve, upstream
    finally:
        chatchat.stop()
        serve.stop()
        upstream.stop()


def _knowledge_base(chatchat: ChatchatProcess, tmp_path: Path) -> None:
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


def test_kb_chat_reports_its_passages_and_a_rule_routes_on_them(
    stack: tuple[ChatchatProcess, ServeProcess, DemoLLMServer], tmp_path: Path
) -> None:
    chatchat, serve, upstream = stack
    _knowledge_base(chatchat, tmp_path)
    body = {"query": "报销要在多久内提交？", "kb_name": "hr", "stream": False, "model": LARGE, "top_k": 3}
    # Chatchat's default score_threshold (2.0) keeps no vector hit (LangChain reads it as a relevance score):
    # the passages are the keyword search's, which has no score. With 0 the vector hits and their scores stay.
    for threshold in (2.0, 0.0):
        answer = chatchat.post("/chat/kb_chat", {**body, "score_threshold": threshold}, "gina", "研发部")
        assert answer.status_code == 200 and "error" not in answer.text, answer.text
    hello = {"model": LARGE, "stream": False, "messages": [{"role": "user", "content": "你好"}]}
    plain = chatchat.post("/chat/chat/completions", hello, "gina", "研发部")
    assert plain.status_code == 200, plain.text
    assert (upstream.calls_by_model[SMALL], upstream.calls_by_model[LARGE]) == (2, 1)  # routed: the kb answers

    chatchat.stop()  # its spans left within 0.2 s; the store is read once serve has stopped
    assert wait_for(lambda: _chat_rows_stored(serve) >= 3, timeout=60, interval=0.5)
    serve.stop()
    with serve.store() as store:
        rows = store.query(
            "SELECT app_route, retrieval_passages, retrieval_top_score, route_rule, request_model, effective_model "
            "FROM llm_usage FINAL WHERE user = 'gina' AND operation = 'chat' ORDER BY time"
        ).result_rows
    unscored, scored, plain_row = rows
    for row in (unscored, scored):  # the passages in the prompt (top_k at most), routed to the small tier
        assert row[0] == "/chat/kb_chat" and 1 <= row[1] <= 3 and row[3:] == ("grounded", LARGE, SMALL), row
    assert unscored[2] is None  # the keyword search's passages: no score to report
    assert scored[2] is not None and 0.0 <= scored[2] <= 1.0  # LangChain's relevance score of the best vector hit
    assert plain_row == ("/chat/chat/completions", None, None, "", LARGE, LARGE)


def _chat_rows_stored(serve: ServeProcess) -> int:
    response = httpx.get(f"{serve.api}/v1/report", params={"by": "user", "period": "day"},
                         headers={"authorization": f"Bearer {serve.api_token}"}, timeout=30)  # fmt: skip
    response.raise_for_status()
    return sum(int(row.get("calls", 0)) for row in response.json()["rows"] if row["subject"] == "gina")
