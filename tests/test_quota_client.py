"""The in-app quota client when the enforcer is down, hung or refusing: fail open (counted) or closed.

Real openai SDK through tokenmeter's instrumentation against the local OpenAI-compatible
server; the "enforcer" is a closed port or a socket that accepts and never answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openai
import pytest
from enforcer_process import TOKEN, EnforcerProcess, migrate
from openai_server import OpenAICompatibleServer
from ready_process import free_port
from telemetry_fixtures import Telemetry, make_telemetry
from waiting import wait_for

import tokenmeter
from tokenmeter import semconv
from tokenmeter.catalog import ModelCatalog
from tokenmeter.instrumentation.instrumentor import TokenmeterInstrumentor
from tokenmeter.instrumentation.quota.client import QuotaClient
from tokenmeter.instrumentation.quota.errors import QuotaDegraded, QuotaExceeded, QuotaUnavailable, QuotaVerdict
from tokenmeter.settings import Settings, get_settings
from tokenmeter.tokenizers import TokenizerRegistry

MESSAGES = [{"role": "user", "content": "人工智能是什么？"}]
# Far more than a check may take: a hung enforcer would hold a call this long without the timeout.
HUNG_FOR_SECONDS = 30


@pytest.fixture
def hung_enforcer() -> Iterator[str]:
    """A port that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


@pytest.fixture(scope="module")
def registry() -> TokenizerRegistry:
    return TokenizerRegistry(ModelCatalog.load(None))


def instrumented(registry: TokenizerRegistry, **settings: Any) -> tuple[TokenmeterInstrumentor, Telemetry]:
    telemetry = make_telemetry()
    instrumentor = TokenmeterInstrumentor()
    instrumentor.instrument(
        tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider,
        settings=Settings(local_count="fallback", **settings), registry=registry, skip_dep_check=True,
    )  # fmt: skip
    return instrumentor, telemetry


def spans_by_decision(telemetry: Telemetry) -> list[tuple[Any, Any]]:
    assert tokenmeter.flush(timeout_s=30)
    return [(s.attributes.get(semconv.TM_QUOTA_DECISION), s.attributes.get(semconv.TM_QUOTA_FAIL_OPEN))
            for s in telemetry.spans()]  # fmt: skip


def test_enforcer_down_fails_open_and_counts_it(registry: TokenizerRegistry, openai_server: OpenAICompatibleServer
                                                ) -> None:  # fmt: skip
    instrumentor, telemetry = instrumented(registry, enforcer_url=f"http://127.0.0.1:{free_port()}")
    try:
        client = openai.OpenAI(base_url=openai_server.base_url, api_key="sk-test", max_retries=0)
        for _ in range(3):
            reply = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=5)
            assert reply.model == "gpt-4o"
        assert spans_by_decision(telemetry) == [("unavailable", True)] * 3
        points = telemetry.points(semconv.METRIC_QUOTA_DECISIONS)
        assert points == [({semconv.TM_QUOTA_DECISION: "unavailable", semconv.TM_QUOTA_FAIL_OPEN: True}, 3)]
        assert len(openai_server.requests) == 3
    finally:
        instrumentor.uninstrument()


def test_hung_enforcer_fails_open_within_the_timeout(registry: TokenizerRegistry, hung_enforcer: str,
                                                     openai_server: OpenAICompatibleServer) -> None:  # fmt: skip
    instrumentor, telemetry = instrumented(registry, enforcer_url=hung_enforcer, enforcer_timeout=0.05)
    try:
        client = openai.OpenAI(base_url=openai_server.base_url, api_key="sk-test", max_retries=0)
        async_client = openai.AsyncOpenAI(base_url=openai_server.base_url, api_key="sk-test", max_retries=0)
        started = time.monotonic()
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=5)
        asyncio.run(async_client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=5))
        elapsed = time.monotonic() - started
        assert elapsed < HUNG_FOR_SECONDS / 10, elapsed  # bounded by the timeout, not by the enforcer
        assert spans_by_decision(telemetry) == [("unavailable", True)] * 2
    finally:
        instrumentor.uninstrument()


def test_fail_closed_refuses_the_call_with_a_clear_message(registry: TokenizerRegistry, hung_enforcer: str,
                                                           openai_server: OpenAICompatibleServer) -> None:  # fmt: skip
    instrumentor, telemetry = instrumented(registry, enforcer_url=hung_enforcer, fail_mode="closed")
    try:
        client = openai.OpenAI(base_url=openai_server.base_url, api_key="sk-test", max_retries=0)
        with pytest.raises(QuotaUnavailable) as refused:
            client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        assert isinstance(refused.value, QuotaExceeded)  # handlers of QuotaExceeded cover it
        assert "TOKENMETER_FAIL_MODE=closed" in str(refused.value)
        assert "额度服务不可用" in str(refused.value)
        assert openai_server.requests == []
        assert spans_by_decision(telemetry) == [("unavailable", False)]
        assert telemetry.spans()[0].attributes[semconv.ERROR_TYPE] == "QuotaUnavailable"
    finally:
        instrumentor.uninstrument()


def test_fail_opens_are_reported_to_the_enforcer_once_it_answers(tmp_path: Path) -> None:
    pytest.importorskip("chdb", reason="the enforcer needs the store extra (absent in the openai 1.x venv)")
    port = free_port()
    client = QuotaClient(f"http://127.0.0.1:{port}", TOKEN, timeout=0.5, cache_seconds=0)
    key = ("alice", "ops", "kb", "gpt-4o")
    assert [client.check(key, 10, 10).fail_open for _ in range(3)] == [True, True, True]
    policy = tmp_path / "policy.yaml"
    policy.write_text("budgets: []\n", encoding="utf-8")
    migrate(tmp_path / "chdb")
    with EnforcerProcess(tmp_path / "chdb", policy, "--port", str(port)) as enforcer:
        verdict = client.check(key, 10, 10)
        assert (verdict.action, verdict.fail_open) == ("allow", False)
        assert 'tokenmeter_enforcer_fail_open_total{where="client"} 3' in enforcer.get("/metrics").text
        client.check(key, 10, 10)  # reported once, not again
        assert 'tokenmeter_enforcer_fail_open_total{where="client"} 3' in enforcer.get("/metrics").text
    client.close()


def test_a_check_the_enforcer_rejects_fails_open_or_closed_as_configured(tmp_path: Path) -> None:
    # The enforcer validates checks: a user id over its 1,024-character limit gets a 400, which the
    # client treats like no answer (counted as fail-open, or refused when fail-closed). The client
    # must not reject the check itself: that would skip the count and let a fail-closed call through.
    pytest.importorskip("chdb", reason="the enforcer needs the store extra (absent in the openai 1.x venv)")
    policy = tmp_path / "policy.yaml"
    policy.write_text("budgets: []\n", encoding="utf-8")
    migrate(tmp_path / "chdb")
    key = ("u" * 2000, "ops", "kb", "gpt-4o")
    with EnforcerProcess(tmp_path / "chdb", policy) as enforcer:
        open_client = QuotaClient(enforcer.url, TOKEN, cache_seconds=0)
        closed_client = QuotaClient(enforcer.url, TOKEN, cache_seconds=0, fail_mode="closed")
        try:
            opened, refused = open_client.check(key, 10, 10), closed_client.check(key, 10, 10)
        finally:
            open_client.close()
            closed_client.close()
    assert (opened.action, opened.fail_open) == (semconv.QUOTA_UNAVAILABLE, True)
    assert (refused.action, refused.fail_open) == (semconv.QUOTA_UNAVAILABLE, False)
    assert "HTTP 400" in opened.reason and "user" in opened.reason


class SlowEnforcer:
    """An enforcer stand-in on loopback: answers check n after ``delays[n]`` seconds (0 once
    they run out) with a deny decision, and counts the checks it received and the releases."""

    def __init__(self, delays: list[float]) -> None:
        self.delays = list(delays)
        self.checks = 0
        self.releases: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.path == "/v1/release":
                    outer.releases.append(json.loads(body))
                    self.send_response(200)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                outer.checks += 1
                delay = outer.delays.pop(0) if outer.delays else 0.0
                time.sleep(delay)
                body = json.dumps({"decision": "deny", "reason": "over budget"}).encode()
                with contextlib.suppress(OSError):  # the client gave up on a slow answer
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def test_one_slow_check_does_not_stop_the_next_call_from_asking() -> None:
    # Under load one check can miss the timeout; the next call must still be checked (it used
    # to skip the enforcer for cache_seconds: a downgrade or denial missed for a second).
    enforcer = SlowEnforcer([0.6])
    client = QuotaClient(enforcer.url, None, timeout=0.2, cache_seconds=30)
    key = ("alice", "ops", "kb", "gpt-4o")
    try:
        first = client.check(key, 10, 10)
        assert (first.action, first.fail_open) == (semconv.QUOTA_UNAVAILABLE, True)
        second = client.check(key, 10, 10)
        assert (second.action, second.fail_open) == ("deny", False)
        assert enforcer.checks == 2
        # the check given up on is released by the id the client gave it: it must not hold room
        assert wait_for(lambda: len(enforcer.releases) == 1)
        assert enforcer.releases[0]["client_fail_open"] == 0 and enforcer.releases[0]["check_id"]
    finally:
        client.close()
        enforcer.close()


def test_an_enforcer_slow_three_times_in_a_row_is_skipped_until_it_answers() -> None:
    enforcer = SlowEnforcer([0.6] * 10)
    now = [0.0]
    client = QuotaClient(enforcer.url, None, timeout=0.2, cache_seconds=5, clock=lambda: now[0])
    key = ("alice", "ops", "kb", "gpt-4o")
    try:
        verdicts = [client.check(key, 10, 10) for _ in range(5)]
        assert [v.action for v in verdicts] == [semconv.QUOTA_UNAVAILABLE] * 5
        assert all(v.fail_open for v in verdicts)
        assert enforcer.checks == 3  # the 4th and 5th calls did not wait on it
        now[0] += 6  # the skip is over: one probe, still slow, skips again at once
        client.check(key, 10, 10)
        client.check(key, 10, 10)
        assert enforcer.checks == 4
        enforcer.delays.clear()  # answers in time again
        now[0] += 6
        assert client.check(("bob", "ops", "kb", "gpt-4o"), 10, 10).action == "deny"
        assert enforcer.checks == 5
    finally:
        client.close()
        enforcer.close()


def _verdict(**fields: Any) -> QuotaVerdict:
    base: dict[str, Any] = {
        "action": "deny", "requested_model": "gpt-4o", "effective_model": "gpt-4o", "budget": "rd-paid",
        "scope": "department", "subject": "研发部", "period": "month", "ratio": 1.02,
        "resets_at": datetime(2026, 11, 30, 16, 0, tzinfo=UTC), "timezone": "Asia/Shanghai",
    }  # fmt: skip
    return QuotaVerdict(**{**base, **fields})


def test_messages_name_the_budget_the_usage_and_the_reset_in_both_languages() -> None:
    denied = QuotaExceeded(_verdict(used_cost="20400.5", limit_cost="20000", currency="CNY"))
    assert denied.message("en") == (
        "Quota exceeded: budget 'rd-paid' (department 研发部, per month) has used 20400.5 / 20000 CNY; "
        "it resets at 2026-12-01 00:00 (Asia/Shanghai)."
    )
    assert denied.message("zh") == (
        "额度已用尽：预算“rd-paid”（部门 研发部，每月）已使用 20400.5 / 20000 CNY，"
        "将于 2026-12-01 00:00 (Asia/Shanghai) 重置。"
    )
    assert str(denied) == f"{denied.message('zh')}\n{denied.message('en')}"
    degraded = QuotaDegraded(_verdict(action="degrade", used_tokens=1_200_000, limit_tokens=1_000_000,
                                      scope="user", subject="alice", period="day"))  # fmt: skip
    assert "retrieval only" in degraded.message("en") and "1,200,000 / 1,000,000 tokens" in degraded.message("en")
    assert "仅提供知识库检索结果" in degraded.message("zh")


def test_a_refusal_says_where_to_ask_for_a_top_up_when_a_link_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    verdict = _verdict(used_cost="1000", limit_cost="1000", currency="credits (dept-credits)", period="year",
                       budget="dept credits", subject="研发部")  # fmt: skip
    assert "top-up" not in QuotaExceeded(verdict).message("en")  # no link set: nothing promised
    monkeypatch.setenv("TOKENMETER_TOPUP_URL", "https://tm.example/#request?budget={budget}&subject={subject}")
    get_settings.cache_clear()  # the process reads its settings once
    try:
        link = "https://tm.example/#request?budget=dept%20credits&subject=%E7%A0%94%E5%8F%91%E9%83%A8"
        denied = QuotaExceeded(verdict)
        assert denied.message("en").endswith(f"(Asia/Shanghai). To ask for a top-up: {link}")
        assert denied.message("zh").endswith(f"重置。如需追加额度，请在此申请：{link}")
        assert "per year" in denied.message("en") and "每年" in denied.message("zh")
        assert link in QuotaDegraded(verdict).message("en")
    finally:
        monkeypatch.delenv("TOKENMETER_TOPUP_URL")
        get_settings.cache_clear()


def test_the_client_module_stays_light() -> None:
    # Apps import tokenmeter at start-up; the quota client must not pull in the server side.
    server_side = ("chdb", "starlette", "tokenmeter.enforcer")
    code = ("import sys, tokenmeter.instrumentation.quota.gate; "
            f"print(sorted(m for m in sys.modules if m.startswith({server_side!r})))")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"


def test_the_middleware_answers_429_with_the_message_when_a_call_is_denied(registry: TokenizerRegistry,
                                                                            hung_enforcer: str) -> None:  # fmt: skip
    """A handler whose LLM call is refused (fail mode closed here) gets a 429 the user can read."""
    pytest.importorskip("starlette", reason="no web framework in the openai 1.x venv")
    import httpx
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from tokenmeter.instrumentation.asgi import IdentityMiddleware

    instrumentor, _telemetry = instrumented(registry, enforcer_url=hung_enforcer, fail_mode="closed")
    try:
        async_client = openai.AsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key="sk-test", max_retries=0)

        async def ask(_request: Any) -> JSONResponse:
            await async_client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
            return JSONResponse({"unreachable": True})

        # Added with the framework's middleware list (FastAPI: app.add_middleware), so it runs inside the
        # framework's error middleware and sees the exception before it becomes a 500.
        app = Starlette(routes=[Route("/ask", ask)], middleware=[Middleware(IdentityMiddleware, settings=Settings())])

        async def request() -> httpx.Response:
            transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
            async with httpx.AsyncClient(transport=transport, base_url="http://chatchat") as client:
                return await client.get("/ask", headers={"X-Forwarded-User": "alice"})

        response = asyncio.run(request())
    finally:
        instrumentor.uninstrument()
    assert response.status_code == 429
    error = response.json()["error"]
    assert error["type"] == error["code"] == "quota_unavailable"
    assert "额度服务不可用" in error["message"] and "TOKENMETER_FAIL_MODE=closed" in error["message"]
    assert "retry-after" not in response.headers  # no reset time when the enforcer could not be asked


def test_the_429_for_a_denial_says_when_to_retry() -> None:
    from tokenmeter.instrumentation.quota.responses import quota_error_response

    error = QuotaExceeded(_verdict(used_tokens=1000, limit_tokens=1000))
    headers, body = quota_error_response(error, now=datetime(2026, 11, 30, 15, 0, tzinfo=UTC))
    assert dict(headers)[b"retry-after"] == b"3600"  # resets 16:00 UTC = midnight in Shanghai
    document = json.loads(body)["error"]
    assert (document["type"], document["budget"]) == ("quota_exceeded", "rd-paid")
    assert document["resets_at"] == "2026-11-30T16:00:00+00:00"
    assert document["message"] == str(error)


def test_the_hosts_httpx_log_does_not_get_a_line_per_check(caplog: pytest.LogCaptureFixture,
                                                           hung_enforcer: str) -> None:  # fmt: skip
    import logging

    import httpx

    client = QuotaClient(hung_enforcer, None, timeout=0.05, cache_seconds=0)
    try:
        with caplog.at_level(logging.INFO, logger="httpx"):
            client.check(("u", "d", "a", "m"), 1, 1)
            logging.getLogger("httpx").info('HTTP Request: %s %s "%s %d %s"', "GET",
                                            httpx.URL("http://example.invalid/x"), "HTTP/1.1", 200, "OK")  # fmt: skip
            logging.getLogger("httpx").info('HTTP Request: %s %s "%s %d %s"', "POST",
                                            httpx.URL(f"{hung_enforcer}/v1/check"), "HTTP/1.1", 200, "OK")  # fmt: skip
    finally:
        client.close()
    lines = [record.getMessage() for record in caplog.records if record.name == "httpx"]
    assert lines == ['HTTP Request: GET http://example.invalid/x "HTTP/1.1 200 OK"']
