"""A burst of calls from one app against a real `tokenmeter serve` that stalls, and the client's bookkeeping.

The app is this process: the real openai SDK, tokenmeter's instrumentation with its default
check settings, a local OpenAI-compatible server. The enforcer is a real serve, paused with
SIGSTOP for 0.3 s of every 0.6 s while the burst runs (a busy host, a GC pause, a VM steal).
Assertions are on counts: how many calls reached the model, how many went unchecked.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from budget_days import timezone_far_from_midnight
from openai_server import OpenAICompatibleServer
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from serve_process import ServeProcess
from waiting import wait_for

import tokenmeter
from tokenmeter import semconv
from tokenmeter.catalog import ModelCatalog
from tokenmeter.instrumentation.instrumentor import TokenmeterInstrumentor
from tokenmeter.instrumentation.quota.client import QuotaClient
from tokenmeter.instrumentation.quota.errors import QuotaExceeded
from tokenmeter.settings import Settings
from tokenmeter.tokenizers import TokenizerRegistry
from tokenmeter.tokenizers.estimate import estimate_tokens

LIMIT = 10_000
MODEL = "qwen2.5-7b-instruct"
MAX_TOKENS = 900  # with the prompt, each call's estimate is a little under 1,000 tokens
MESSAGES = [{"role": "user", "content": "人工智能是什么？"}]
POLICY = f"""
timezone: {timezone_far_from_midnight()}
budgets:
  - {{name: alice-daily, scope: user, subject: alice, period: day, limit: {{tokens: {LIMIT}}}, action: deny}}
  - {{name: team-daily, scope: department, subject: ops, period: day, limit: {{tokens: 100000000}}}}
"""


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServeProcess]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY, encoding="utf-8")
    # settle 600 s: a reservation keeps counting for the whole test, so what it admitted is visible
    process = ServeProcess(tmp_path / "serve", ["--policy", str(policy), "--refresh-interval", "0.2",
                                                "--settle-seconds", "600"]).start()  # fmt: skip
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process._proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
        process.stop()


@contextlib.contextmanager
def stalling(process: ServeProcess, paused: float = 0.3, period: float = 0.6) -> Iterator[None]:
    """SIGSTOP the process for ``paused`` seconds of every ``period`` while the block runs."""
    pid = process._proc.pid  # type: ignore[union-attr]
    done = threading.Event()

    def toggle() -> None:
        while not done.is_set():
            os.kill(pid, signal.SIGSTOP)
            done.wait(paused)
            os.kill(pid, signal.SIGCONT)
            done.wait(period - paused)

    thread = threading.Thread(target=toggle, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(10)
        os.kill(pid, signal.SIGCONT)


def usage(serve: ServeProcess, budget: str, subject: str) -> dict[str, Any]:
    response = httpx.get(f"{serve.api}/v1/usage", params={"budget": budget, "subject": subject},
                         headers={"authorization": f"Bearer {serve.api_token}"}, timeout=30)  # fmt: skip
    response.raise_for_status()
    rows = response.json()["budgets"]
    return dict(rows[0]) if rows else {"reserved_tokens": 0, "used_tokens": 0}


def enforcer_metric(serve: ServeProcess, prefix: str) -> float:
    text = httpx.get(f"{serve.api}/metrics", headers={"authorization": f"Bearer {serve.api_token}"}, timeout=30).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


class MeteredApp:
    """tokenmeter instrumented with default check settings (timeout, fail mode), spans kept in memory."""

    def __init__(self, serve: ServeProcess, upstream: OpenAICompatibleServer, **settings: Any) -> None:
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
        self.instrumentor = TokenmeterInstrumentor()
        self.instrumentor.instrument(
            tracer_provider=self.tracer_provider, meter_provider=self.meter_provider,
            settings=Settings(enforcer_url=serve.api, enforcer_token=serve.api_token, local_count="fallback",
                              usage_flush_seconds=0, **settings),
            registry=TokenizerRegistry(ModelCatalog.load(None)), skip_dep_check=True,
        )  # fmt: skip
        self.client = openai.OpenAI(base_url=upstream.base_url, api_key="sk-test", max_retries=0)

    def chat(self, user: str, department: str = "ops") -> str:
        with tokenmeter.attribution(user=user, department=department):
            try:
                self.client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=MAX_TOKENS)  # type: ignore[arg-type]
            except QuotaExceeded:
                return "denied"
        return "answered"

    def decisions(self) -> Counter[str]:
        assert tokenmeter.flush(timeout_s=30)
        return Counter(str((span.attributes or {}).get(semconv.TM_QUOTA_DECISION))
                       for span in self.spans.get_finished_spans())  # fmt: skip

    def close(self) -> None:
        self.instrumentor.uninstrument()
        self.meter_provider.shutdown()
        self.tracer_provider.shutdown()


def test_a_burst_against_a_stalling_enforcer_leaves_no_call_unchecked(
    serve: ServeProcess, openai_server: OpenAICompatibleServer
) -> None:
    app = MeteredApp(serve, openai_server)
    try:
        with stalling(serve), ThreadPoolExecutor(100) as pool:
            outcomes = Counter(pool.map(lambda _i: app.chat("alice"), range(100)))
        decisions = app.decisions()
    finally:
        app.close()
    assert decisions[semconv.QUOTA_UNAVAILABLE] == 0, decisions  # not one call unchecked
    answered = outcomes["answered"]
    assert answered == len(openai_server.requests) and outcomes["denied"] == 100 - answered
    # Admitted while used + reserved < limit: the budget is passed by less than one call's estimate. (The
    # room of a lease the first answer carried, unused because every other call was already asking,
    # may have refused one call that would have fitted: a lease holds at most a quarter of the room.)
    estimate = estimate_tokens(json.dumps(MESSAGES, ensure_ascii=False)) + MAX_TOKENS
    reserved = usage(serve, "alice-daily", "alice")["reserved_tokens"]
    assert reserved == answered * estimate, (reserved, answered, estimate)
    assert LIMIT + estimate > reserved > LIMIT - 2 * estimate, (reserved, estimate)


def test_fail_opens_are_reported_once_however_checks_overlap(
    serve: ServeProcess, openai_server: OpenAICompatibleServer
) -> None:
    client = QuotaClient(serve.api, serve.api_token, timeout=0.3, cache_seconds=0.5)
    key = ("carol", "ops", "kb", MODEL)
    pid = serve._proc.pid  # type: ignore[union-attr]
    try:
        os.kill(pid, signal.SIGSTOP)
        try:  # 5 calls go ahead unchecked (3 time out, then the client stops asking for a moment)
            verdicts = [client.check(key, 10, 10) for _ in range(5)]
        finally:
            os.kill(pid, signal.SIGCONT)
        assert [v.fail_open for v in verdicts] == [True] * 5
        time.sleep(0.6)  # past cache_seconds: the client asks again
        with ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(lambda _i: client.check(key, 10, 10, dry_run=True), range(20)))
        # every overlapping check was answered (none carried a negative count the enforcer refuses) ...
        assert [a.action for a in answers] == ["allow"] * 20, [a.reason for a in answers if a.action != "allow"]
        # ... and the 5 unchecked calls were reported exactly once
        assert wait_for(lambda: enforcer_metric(serve, 'tokenmeter_enforcer_fail_open_total{where="client"}') == 5)
        assert enforcer_metric(serve, 'tokenmeter_enforcer_fail_open_total{where="client"}') == 5
    finally:
        client.close()


def test_a_check_given_up_on_holds_no_room(serve: ServeProcess) -> None:
    # Fail-closed: the call is refused when the answer comes too late; the reservation the enforcer made
    # for it must not keep the user's room for timeout_seconds (600 s).
    client = QuotaClient(serve.api, serve.api_token, timeout=0.3, fail_mode="closed")
    key = ("dave", "ops", "kb", MODEL)
    pid = serve._proc.pid  # type: ignore[union-attr]
    try:
        os.kill(pid, signal.SIGSTOP)
        try:
            refused = client.check(key, 500, 500)
        finally:
            os.kill(pid, signal.SIGCONT)
        assert (refused.action, refused.fail_open) == (semconv.QUOTA_UNAVAILABLE, False)
        # the paused check is answered (and reserved) after the client left; its release by check id undoes it
        assert wait_for(lambda: enforcer_metric(serve, "tokenmeter_enforcer_checks_total") >= 1)
        assert wait_for(lambda: usage(serve, "team-daily", "ops")["reserved_tokens"] == 0)
        assert enforcer_metric(serve, "tokenmeter_enforcer_reservations ") == 0
    finally:
        client.close()


def test_calls_far_from_every_limit_are_decided_from_a_lease(
    serve: ServeProcess, openai_server: OpenAICompatibleServer
) -> None:
    # erin has no budget of her own; her department's is huge: checks come with leases of 8 calls.
    app = MeteredApp(serve, openai_server)
    try:
        outcomes = Counter(app.chat("erin") for _ in range(40))
        decisions = app.decisions()
        checks = enforcer_metric(serve, "tokenmeter_enforcer_checks_total")
    finally:
        app.close()  # gives back what the leases did not use
    assert outcomes == {"answered": 40} and decisions == {"allow": 40}
    assert checks <= 40 / 8 + 2, checks  # most calls never asked the enforcer
    # every lease came back with its unused room: what stays reserved is exactly the 40 calls' estimates
    estimate = estimate_tokens(json.dumps(MESSAGES, ensure_ascii=False)) + MAX_TOKENS
    assert wait_for(lambda: usage(serve, "team-daily", "ops")["reserved_tokens"] == 40 * estimate)
