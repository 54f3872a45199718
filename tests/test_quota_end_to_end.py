"""Quotas end to end: the real openai SDK, tokenmeter's instrumentation and a real `tokenmeter serve`.

The app (this process) meters its calls and exports usage over OTLP/HTTP to serve; serve
stores it in chDB, its enforcer reads it back every 0.2 s and answers the app's checks.
Nothing is faked between the SDK and the store.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from budget_days import hours_to_midnight, timezone_far_from_midnight
from openai_server import SERVER_PROMPT_TOKENS, OpenAICompatibleServer
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from serve_process import ServeProcess
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from waiting import wait_for

import tokenmeter
from tokenmeter import semconv
from tokenmeter.catalog import ModelCatalog
from tokenmeter.instrumentation.asgi import IdentityMiddleware
from tokenmeter.instrumentation.instrumentor import TokenmeterInstrumentor
from tokenmeter.instrumentation.quota.errors import QuotaExceeded
from tokenmeter.settings import Settings
from tokenmeter.tokenizers import TokenizerRegistry

# the timezone line comes from budget_days.timezone_far_from_midnight()
POLICY = """
model_groups:
  premium: ["gpt-4o"]
  paid: ["gpt-4o", "gpt-4o-mini"]
routes:
  gpt-4o: gpt-4o-mini
budgets:
  - name: premium-per-user
    scope: user
    period: day
    models: premium
    limit: {tokens: 1000}
    action: downgrade
  - name: bob-paid
    scope: user
    subject: bob
    period: day
    models: paid
    limit: {tokens: 500}
    action: deny
"""
LOCAL_MODEL = "qwen2.5-7b-instruct"


class App:
    """The metered app: openai SDK calls with attribution, usage exported to serve."""

    def __init__(self, serve: ServeProcess, upstream: OpenAICompatibleServer) -> None:
        self.spans = InMemorySpanExporter()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        tracer_provider.add_span_processor(  # the audit trail: spans into serve's llm_usage
            SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{serve.otlp_http}/v1/traces"))
        )
        self.tracer_provider = tracer_provider
        exporter = OTLPMetricExporter(endpoint=f"{serve.otlp_http}/v1/metrics")
        self.meter_provider = MeterProvider(
            metric_readers=[PeriodicExportingMetricReader(exporter, export_interval_millis=10**9)]
        )
        self.instrumentor = TokenmeterInstrumentor()
        self.instrumentor.instrument(
            tracer_provider=tracer_provider,
            meter_provider=self.meter_provider,
            # (a generous check timeout: on a loaded CI machine 50 ms can pass and the call would fail open,
            # making the decisions asserted here depend on timing; fail-open is tested in test_quota_client)
            settings=Settings(
                enforcer_url=serve.api, enforcer_token=serve.api_token, local_count="fallback", enforcer_timeout=5
            ),
            registry=TokenizerRegistry(ModelCatalog.load(None)),
            skip_dep_check=True,
        )
        self.upstream = upstream
        self.client = openai.OpenAI(base_url=upstream.base_url, api_key="sk-test", max_retries=0)

    def chat(self, user: str, model: str, completion_tokens: int) -> Any:
        with tokenmeter.attribution(user=user, department="研发部"):
            return self.client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "人工智能是什么？"}], max_tokens=completion_tokens
            )

    def last_span(self) -> dict[str, Any]:
        assert tokenmeter.flush(timeout_s=30)  # spans end on the background finisher
        return dict(self.spans.get_finished_spans()[-1].attributes or {})

    def upstream_models(self) -> list[str]:
        return [request.body["model"] for request in self.upstream.requests]

    def close(self) -> None:
        self.instrumentor.uninstrument()
        self.meter_provider.shutdown()
        self.tracer_provider.shutdown()


def tokens(completion: int) -> int:
    return SERVER_PROMPT_TOKENS + completion


def write_policy(path: Path) -> Path:
    path.write_text(f"timezone: {timezone_far_from_midnight()}\n{POLICY}", encoding="utf-8")
    return path


def usage_rows(serve: ServeProcess, **params: str) -> list[dict[str, Any]]:
    headers = {"authorization": f"Bearer {serve.api_token}"}
    response = httpx.get(f"{serve.api}/v1/usage", params=params, headers=headers, timeout=10)
    response.raise_for_status()
    return list(response.json()["budgets"])


def wait_until_stored(app: App, serve: ServeProcess, budget: str, subject: str, used: int) -> None:
    """Export the usage now, then wait until the enforcer's snapshot shows it and nothing is reserved."""
    assert tokenmeter.flush(timeout_s=30)
    deadline = time.monotonic() + 60
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        rows = usage_rows(serve, budget=budget, subject=subject)
        if rows and rows[0]["used_tokens"] == used and rows[0]["reserved_tokens"] == 0:
            return
        time.sleep(0.1)
    raise AssertionError(f"the enforcer never showed {used} tokens used for {budget}/{subject}: {rows}")


@pytest.fixture
def serve_with_policy(tmp_path: Path) -> Iterator[ServeProcess]:
    policy = write_policy(tmp_path / "policy.yaml")
    serve = ServeProcess(
        tmp_path / "serve", ["--policy", str(policy), "--refresh-interval", "0.2", "--settle-seconds", "0.5"]
    ).start()
    try:
        yield serve
    finally:
        serve.stop()


def _warn_through_asgi(app: App) -> tuple[dict[str, str], str]:
    """One call inside an ASGI request (identity from headers), with the async SDK."""
    async_client = openai.AsyncOpenAI(base_url=app.upstream.base_url, api_key="sk-test", max_retries=0)

    async def answer(_request: Request) -> JSONResponse:
        reply = await async_client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "人工智能是什么？"}], max_tokens=159
        )
        return JSONResponse({"model": reply.model})

    asgi = IdentityMiddleware(Starlette(routes=[Route("/ask", answer)]), settings=Settings())

    async def request() -> httpx.Response:
        transport = httpx.ASGITransport(app=asgi, client=("127.0.0.1", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://chatchat") as client:
            return await client.get("/ask", headers={"X-Forwarded-User": "alice", "X-Department": "研发部".encode()})

    response = asyncio.run(request())
    assert response.status_code == 200
    return dict(response.headers), response.json()["model"]


def test_warn_downgrade_deny_local_models_and_rollover(serve_with_policy: ServeProcess,
                                                        openai_server: OpenAICompatibleServer,
                                                        tmp_path: Path) -> None:  # fmt: skip
    serve = serve_with_policy
    policy_timezone = (tmp_path / "policy.yaml").read_text(encoding="utf-8").splitlines()[0].removeprefix("timezone: ")
    app = App(serve, openai_server)
    try:
        # alice: 80 % of her premium budget -> the next call is warned, through Chatchat-like ASGI
        app.chat("alice", "gpt-4o", 759)
        assert app.last_span()[semconv.TM_QUOTA_DECISION] == "allow"
        wait_until_stored(app, serve, "premium-per-user", "alice", tokens(759))
        headers, served_by = _warn_through_asgi(app)
        assert served_by == "gpt-4o"
        span = app.last_span()
        assert span[semconv.TM_QUOTA_DECISION] == "warn"
        assert span[semconv.TM_QUOTA_BUDGET] == "premium-per-user"
        assert span[semconv.TM_QUOTA_RATIO] == pytest.approx(0.8)
        assert headers["x-tokenmeter-quota"] == 'warn; budget="premium-per-user"; ratio=0.800'

        # 100 %: downgraded; the upstream server is asked for the cheaper model
        wait_until_stored(app, serve, "premium-per-user", "alice", tokens(759) + tokens(159))
        reply = app.chat("alice", "gpt-4o", 10)
        assert app.upstream_models()[-1] == "gpt-4o-mini"
        assert reply.model == "gpt-4o-mini"
        span = app.last_span()
        assert span[semconv.TM_QUOTA_DECISION] == "downgrade"
        assert span[semconv.TM_REQUESTED_MODEL] == "gpt-4o"
        assert span[semconv.TM_EFFECTIVE_MODEL] == "gpt-4o-mini"
        assert span[semconv.GEN_AI_REQUEST_MODEL] == "gpt-4o-mini"

        # bob: a deny budget on all paid models
        app.chat("bob", "gpt-4o-mini", 459)
        wait_until_stored(app, serve, "bob-paid", "bob", tokens(459))
        sent_before = len(app.upstream.requests)
        with pytest.raises(QuotaExceeded) as denied:
            app.chat("bob", "gpt-4o-mini", 10)
        assert len(app.upstream.requests) == sent_before  # the model was never called
        error = denied.value
        assert error.budget == "bob-paid"
        assert "Quota exceeded: budget 'bob-paid' (user bob, per day) has used 500 / 500 tokens" in str(error)
        assert "额度已用尽：预算“bob-paid”（用户 bob，每日）已使用 500 / 500 tokens" in str(error)
        assert f"({policy_timezone})" in error.message("en")
        assert error.resets_at is not None and error.resets_at.astimezone().timestamp() > time.time()
        span = app.last_span()
        assert span[semconv.TM_QUOTA_DECISION] == "deny"
        assert span[semconv.ERROR_TYPE] == "QuotaExceeded"
        assert semconv.GEN_AI_USAGE_INPUT_TOKENS not in span  # nothing billed for a call never made

        # a local model is in no paid group: bob's spent paid budget does not stop it
        app.chat("bob", LOCAL_MODEL, 10)
        assert app.upstream_models()[-1] == LOCAL_MODEL
        assert app.last_span()[semconv.TM_QUOTA_DECISION] == "allow"
        assert tokenmeter.flush(timeout_s=30)
    finally:
        app.close()

    # the next day (the enforcer's clock moved one day on): everyone is allowed again
    serve.stop()
    serve.env["TOKENMETER_ENFORCER_CLOCK_OFFSET"] = "86400"
    serve.start()
    app = App(serve, openai_server)
    try:
        reply = app.chat("alice", "gpt-4o", 10)
        assert reply.model == "gpt-4o"
        assert app.last_span()[semconv.TM_QUOTA_DECISION] == "allow"
        app.chat("bob", "gpt-4o-mini", 10)
        assert app.last_span()[semconv.TM_QUOTA_DECISION] == "allow"
    finally:
        app.close()
    # bob's new-day reservation is released (sent in the background) and settles before serve stops
    assert wait_for(lambda: all(row["reserved_tokens"] == 0 for row in usage_rows(serve, budget="bob-paid")))
    assert serve.stop(signal.SIGTERM) == 0

    with serve.store() as store:
        crossings = store.query(
            "SELECT budget, subject, threshold FROM quota_events WHERE event = 'threshold_crossed' "
            "AND resets_at > period_start "
            "ORDER BY budget, subject, threshold"
        ).result_rows
        audit = store.query(
            "SELECT user, request_model, effective_model, quota_decision, error_type FROM llm_usage FINAL "
            "WHERE quota_decision IN ('downgrade', 'deny') ORDER BY time"
        ).result_rows
        utilisation = store.query(
            "SELECT subject, argMax(used_tokens, updated_at), argMax(limit_tokens, updated_at) FROM quota_utilisation "
            "WHERE budget = 'bob-paid' GROUP BY subject"
        ).result_rows
        changes = store.query(
            "SELECT user, previous_action, action, budget FROM quota_events WHERE event = 'decision_changed' "
            "ORDER BY time"
        ).result_rows
    assert crossings == [("bob-paid", "bob", 0.8), ("bob-paid", "bob", 1.0),
                         ("premium-per-user", "alice", 0.8), ("premium-per-user", "alice", 1.0)]  # fmt: skip
    assert audit == [("alice", "gpt-4o", "gpt-4o-mini", "downgrade", ""), ("bob", "gpt-4o-mini", "gpt-4o-mini",
                                                                           "deny", "QuotaExceeded")]  # fmt: skip
    # written at the first serve's stop: bob had used all 500 tokens of the day (the next day he has no
    # usage yet, so no row)
    assert utilisation == [("bob", tokens(459), 500)]
    assert changes == [
        ("alice", "allow", "warn", "premium-per-user"),
        ("alice", "warn", "downgrade", "premium-per-user"),
        ("bob", "allow", "deny", "bob-paid"),
        ("bob", "deny", "allow", ""),
    ]


def test_the_chosen_budget_day_has_hours_left_at_any_minute() -> None:
    day = datetime(2026, 11, 28, tzinfo=UTC)
    for minute in range(0, 24 * 60, 7):
        now = day + timedelta(minutes=minute)
        assert hours_to_midnight(timezone_far_from_midnight(now), now) >= 8
