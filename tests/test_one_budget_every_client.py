"""One budget, whatever the client: a user's calls through every metered client count against the same budget, and
once it is spent no client gets past it.

The app (this process) is instrumented as an app is (`TokenmeterInstrumentor`), calls fake servers of each API on
loopback with the real SDKs (openai: chat completions, the Responses API, the Batch API; the Anthropic SDK; the
Ollama client; DashScope's SDK), and exports its usage over OTLP/HTTP to a real `tokenmeter serve`, whose enforcer
reads the store back and answers the app's checks. The store's total for the user must equal the sum of what every
server counted; then every client's next call must be refused before it reaches its server.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from budget_days import timezone_far_from_midnight
from serve_process import ServeProcess

import tokenmeter
from tokenmeter.catalog import ModelCatalog
from tokenmeter.instrumentation.instrumentor import TokenmeterInstrumentor
from tokenmeter.instrumentation.quota.errors import QuotaExceeded
from tokenmeter.settings import Settings
from tokenmeter.tokenizers import TokenizerRegistry

anthropic = pytest.importorskip("anthropic")
ollama = pytest.importorskip("ollama")
dashscope = pytest.importorskip("dashscope")
pytest.importorskip("chdb", reason="serve needs the store extra")

import openai  # noqa: E402
from anthropic_server import AnthropicServer  # noqa: E402
from dashscope_server import SERVER_INPUT_TOKENS, DashScopeServer, embedding_tokens  # noqa: E402
from ollama_server import OllamaServer  # noqa: E402
from openai_batch_server import OpenAIBatchServer  # noqa: E402
from openai_server import SERVER_PROMPT_TOKENS, OpenAICompatibleServer  # noqa: E402
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter  # noqa: E402
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: E402
from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402

LIMIT = 3000
POLICY = f"""
budgets:
  - name: every-client
    scope: user
    subject: eve
    period: day
    limit: {{tokens: {LIMIT}}}
    action: deny
"""
QUESTION = "报销须在多少天内提交？"


@dataclass
class Servers:
    openai: OpenAICompatibleServer
    batch: OpenAIBatchServer
    anthropic: AnthropicServer
    ollama: OllamaServer
    dashscope: DashScopeServer

    def requests_seen(self) -> int:
        # the batch's input file is uploaded before the check, which stops the batch itself
        batch_posts = sum(1 for method, path in self.batch.state.requests if (method, path) == ("POST", "/v1/batches"))
        return (len(self.openai.requests) + batch_posts + len(self.anthropic.requests) + len(self.ollama.requests)
                + len(self.dashscope.requests))  # fmt: skip

    def counted(self) -> int:
        """Every token every server reported, input and output."""
        chat = sum(SERVER_PROMPT_TOKENS + (r.body.get("max_tokens") or r.body.get("max_output_tokens"))
                   for r in self.openai.requests)  # fmt: skip
        batch = sum(line.input_tokens + line.output_tokens for line in self.batch.state.served.values())
        claude = sum(r.input_total + r.output_tokens for r in self.anthropic.requests)
        local = sum(r.prompt_eval_count + r.eval_count for r in self.ollama.requests)
        qwen = sum(
            embedding_tokens(r.body["input"]["texts"]) if "/embeddings/" in r.path
            else SERVER_INPUT_TOKENS + r.body["parameters"]["max_tokens"]
            for r in self.dashscope.requests
        )  # fmt: skip
        return chat + batch + claude + local + qwen


@pytest.fixture
def servers() -> Iterator[Servers]:
    with (OpenAICompatibleServer() as chat, OpenAIBatchServer() as batch, AnthropicServer() as claude,
          OllamaServer() as local, DashScopeServer() as qwen):  # fmt: skip
        saved = dashscope.base_http_api_url, dashscope.api_key
        dashscope.base_http_api_url, dashscope.api_key = qwen.base_url, "sk-test"
        try:
            yield Servers(chat, batch, claude, local, qwen)
        finally:
            dashscope.base_http_api_url, dashscope.api_key = saved


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServeProcess]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"timezone: {timezone_far_from_midnight()}\n{POLICY}", encoding="utf-8")
    running = ServeProcess(tmp_path / "serve", ["--policy", str(policy), "--refresh-interval", "0.2",
                                                "--settle-seconds", "0.5"]).start()  # fmt: skip
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def instrumented(serve: ServeProcess) -> Iterator[None]:
    """The app's telemetry goes to serve over OTLP/HTTP; its checks go to serve's enforcer."""
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{serve.otlp_http}/v1/traces")))
    reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=f"{serve.otlp_http}/v1/metrics"),
                                           export_interval_millis=10**9)  # fmt: skip
    meter_provider = MeterProvider(metric_readers=[reader])
    instrumentor = TokenmeterInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider, skip_dep_check=True,
                            settings=Settings(enforcer_url=serve.api, enforcer_token=serve.api_token,
                                              local_count="fallback", enforcer_timeout=5),
                            registry=TokenizerRegistry(ModelCatalog.load(None)))  # fmt: skip
    try:
        yield
    finally:
        instrumentor.uninstrument()
        meter_provider.shutdown()
        tracer_provider.shutdown()


def _every_client(servers: Servers, size: int) -> list[tuple[str, Any]]:
    """One call per client and endpoint, each asking for ``size`` output tokens, as (name, call)."""
    chat = openai.OpenAI(base_url=servers.openai.base_url, api_key="sk-test", max_retries=0)
    batches = openai.OpenAI(base_url=servers.batch.base_url, api_key="sk-test", max_retries=0)
    claude = anthropic.Anthropic(base_url=servers.anthropic.url, api_key="test-key", max_retries=0)
    local = ollama.Client(host=servers.ollama.host)
    messages = [{"role": "user", "content": QUESTION}]

    def batch() -> None:
        line = {"custom_id": f"eve-{time.monotonic_ns()}", "method": "POST", "url": "/v1/chat/completions",
                "body": {"model": "gpt-4o-mini", "messages": messages, "max_tokens": size}}  # fmt: skip
        data = json.dumps(line, ensure_ascii=False).encode() + b"\n"
        uploaded = batches.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
        created = batches.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                         completion_window="24h")  # fmt: skip
        done = batches.batches.retrieve(created.id)
        batches.files.content(done.output_file_id).read()

    def claude_stream() -> None:
        with claude.messages.stream(model="claude-sonnet-4-6", max_tokens=size, messages=messages) as stream:
            stream.get_final_message()

    return [
        ("openai chat", lambda: chat.chat.completions.create(model="gpt-4o-mini", messages=messages, max_tokens=size)),
        (
            "openai responses",
            lambda: chat.responses.create(model="gpt-4o-mini", input=QUESTION, max_output_tokens=size),
        ),
        ("openai batch", batch),
        (
            "anthropic create",
            lambda: claude.messages.create(model="claude-sonnet-4-6", max_tokens=size, messages=messages),
        ),
        ("anthropic stream", claude_stream),
        ("ollama chat", lambda: local.chat("qwen2.5:7b", messages, options={"num_predict": size})),
        ("ollama embed", lambda: local.embed("bge-m3", [QUESTION])),
        ("dashscope generation", lambda: dashscope.Generation.call("qwen-plus", QUESTION, max_tokens=size)),
        ("dashscope embedding", lambda: dashscope.TextEmbedding.call("text-embedding-v4", [QUESTION])),
    ]


def _used_tokens(serve: ServeProcess) -> tuple[int, int]:
    response = httpx.get(f"{serve.api}/v1/usage", params={"budget": "every-client", "subject": "eve"},
                         headers={"authorization": f"Bearer {serve.api_token}"}, timeout=10)  # fmt: skip
    response.raise_for_status()
    rows = response.json()["budgets"]
    return (rows[0]["used_tokens"], rows[0]["reserved_tokens"]) if rows else (0, 0)


def _wait_until_used(serve: ServeProcess, used: int) -> None:
    """Export the usage now, then wait until the enforcer shows exactly ``used`` tokens and nothing reserved."""
    assert tokenmeter.flush(timeout_s=30)
    deadline, seen = time.monotonic() + 60, (0, 0)
    while time.monotonic() < deadline:
        seen = _used_tokens(serve)
        if seen == (used, 0):
            return
        time.sleep(0.1)
    raise AssertionError(f"the enforcer shows (used, reserved) = {seen} for eve, the servers counted {used}")


def test_every_clients_tokens_count_against_one_budget_and_none_gets_past_it(
    servers: Servers, serve: ServeProcess, instrumented: None
) -> None:
    with tokenmeter.attribution(user="eve"):
        for _name, call in _every_client(servers, size=20):
            call()
        # Every client's usage reached the store, and the user's total is what the servers counted, exactly.
        spent = servers.counted()
        assert 0 < spent < LIMIT
        _wait_until_used(serve, spent)
        # One more call through one client spends the rest of the budget.
        openai.OpenAI(base_url=servers.openai.base_url, api_key="sk-test", max_retries=0).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": QUESTION}], max_tokens=LIMIT - spent
        )
        _wait_until_used(serve, servers.counted())
        assert servers.counted() > LIMIT
        seen = servers.requests_seen()
        refused = []
        for name, call in _every_client(servers, size=20):
            with pytest.raises(QuotaExceeded):
                call()
            refused.append(name)
    assert len(refused) == 9
    assert servers.requests_seen() == seen  # no client's request reached its server
