"""An experiment end to end: the real openai SDK, tokenmeter's instrumentation and a real `tokenmeter serve`.

The policy sends half of the legal department's kb-assistant users from qwen2.5-7b-instruct to
baichuan2-7b-chat. Several users make several calls each (leases on, as by default: most calls after a
user's first are decided in the app); the upstream server sees which model each call asked for, the
spans and serve's llm_usage say which experiment and arm each call was in.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai_server import OpenAICompatibleServer
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from ready_process import free_port
from serve_process import ServeProcess
from telemetry_fixtures import make_telemetry

import tokenmeter
from tokenmeter import semconv
from tokenmeter.catalog import ModelCatalog
from tokenmeter.enforcer.experiment_policy import in_candidate_arm
from tokenmeter.instrumentation.instrumentor import TokenmeterInstrumentor
from tokenmeter.settings import Settings
from tokenmeter.tokenizers import TokenizerRegistry

EXPERIMENT = "kb-qwen-vs-baichuan"
CONTROL, CANDIDATE = "qwen2.5-7b-instruct", "baichuan2-7b-chat"
APP = "kb-assistant"
POLICY = f"""
timezone: Asia/Shanghai
budgets:
  - {{name: per-user, scope: user, period: day, limit: {{tokens: 100000000}}}}
experiments:
  - name: {EXPERIMENT}
    app: {APP}
    model: {CONTROL}
    candidate: {CANDIDATE}
    share: 0.5
    departments: [legal]
"""
USERS = [f"legal-{number}" for number in range(8)]
CALLS_PER_USER = 4


def arm_of(user: str) -> str:
    return semconv.ARM_CANDIDATE if in_candidate_arm(EXPERIMENT, user, 0.5) else semconv.ARM_CONTROL


def model_of(arm: str) -> str:
    return CANDIDATE if arm == semconv.ARM_CANDIDATE else CONTROL


class App:
    """The metered app: openai SDK calls with attribution, spans kept here and exported to serve."""

    def __init__(self, serve: ServeProcess, upstream: OpenAICompatibleServer) -> None:
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.tracer_provider.add_span_processor(
            SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{serve.otlp_http}/v1/traces"))
        )
        self.instrumentor = TokenmeterInstrumentor()
        self.instrumentor.instrument(
            tracer_provider=self.tracer_provider,
            meter_provider=make_telemetry().meter_provider,
            settings=Settings(enforcer_url=serve.api, enforcer_token=serve.api_token, local_count="fallback",
                              enforcer_timeout=30),  # (generous: a fail-open would not be an experiment's call)
            registry=TokenizerRegistry(ModelCatalog.load(None)),
            skip_dep_check=True,
        )  # fmt: skip
        self.upstream = upstream
        self.client = openai.OpenAI(base_url=upstream.base_url, api_key="sk-test", max_retries=0)

    def chat(self, user: str | None, department: str, app: str = APP) -> tuple[str, str, dict[str, Any]]:
        """One call; the model the upstream was asked for, the model the reply names, the call's span."""
        with tokenmeter.attribution(user=user, department=department, app=app):
            reply = self.client.chat.completions.create(
                model=CONTROL, messages=[{"role": "user", "content": "合同的违约条款是什么意思？"}], max_tokens=20
            )
        assert tokenmeter.flush(timeout_s=30)  # spans end on the background finisher
        span = self.spans.get_finished_spans()[-1]
        return self.upstream.requests[-1].body["model"], reply.model, {"name": span.name, **(span.attributes or {})}

    def close(self) -> None:
        self.instrumentor.uninstrument()
        self.tracer_provider.shutdown()


def checks_answered(serve: ServeProcess) -> int:
    """How many checks serve's enforcer has answered (calls decided from a lease are not among them)."""
    response = httpx.get(f"{serve.api}/metrics", headers={"authorization": f"Bearer {serve.api_token}"}, timeout=10)
    response.raise_for_status()
    return sum(int(float(n)) for n in re.findall(r"^tokenmeter_enforcer_checks_total\{[^}]*\} (\S+)$",
                                                 response.text, flags=re.MULTILINE))  # fmt: skip


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServeProcess]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY, encoding="utf-8")
    serve = ServeProcess(tmp_path / "serve", ["--policy", str(policy), "--refresh-interval", "0.2"]).start()
    try:
        yield serve
    finally:
        serve.stop()


def _assert_in_arm(user: str, asked_upstream: str, replied: str, span: dict[str, Any]) -> None:
    arm = arm_of(user)
    model = model_of(arm)
    assert (asked_upstream, replied) == (model, model), user
    assert (span[semconv.TM_EXPERIMENT], span[semconv.TM_EXPERIMENT_ARM]) == (EXPERIMENT, arm), user
    assert (span[semconv.TM_REQUESTED_MODEL], span[semconv.TM_EFFECTIVE_MODEL]) == (CONTROL, model)
    assert (span[semconv.GEN_AI_REQUEST_MODEL], span["name"]) == (model, f"chat {model}")
    assert span[semconv.TM_QUOTA_DECISION] == "allow"  # an experiment is not a quota action


def _assert_untouched(asked_upstream: str, replied: str, span: dict[str, Any]) -> None:
    assert (asked_upstream, replied, span[semconv.GEN_AI_REQUEST_MODEL]) == (CONTROL, CONTROL, CONTROL)
    assert semconv.TM_EXPERIMENT not in span and semconv.TM_EXPERIMENT_ARM not in span


def test_each_user_keeps_one_arm_and_every_call_is_labelled(serve: ServeProcess,
                                                            openai_server: OpenAICompatibleServer) -> None:  # fmt: skip
    arms = {user: arm_of(user) for user in USERS}
    assert set(arms.values()) == {semconv.ARM_CONTROL, semconv.ARM_CANDIDATE}  # both arms have users here
    app = App(serve, openai_server)
    leased: list[str] = []
    try:
        for user in USERS:
            for _ in range(CALLS_PER_USER):
                checks_before = checks_answered(serve)
                _assert_in_arm(user, *app.chat(user, "legal"))
                if checks_answered(serve) == checks_before:
                    leased.append(user)  # decided in the app, from the lease of the user's last check
        # outside the experiment: another department, another app, no user id
        _assert_untouched(*app.chat("sales-1", "sales"))
        candidate_user = next(user for user in USERS if arms[user] == semconv.ARM_CANDIDATE)
        _assert_untouched(*app.chat(candidate_user, "legal", app="hr-bot"))
        _assert_untouched(*app.chat(None, "legal"))
    finally:
        app.close()
    assert leased, "no call was decided from a lease: the lease's verdicts went untested"
    assert {arms[user] for user in leased} == {semconv.ARM_CONTROL, semconv.ARM_CANDIDATE}

    serve.stop()
    with serve.store() as store:
        rows = store.query(
            "SELECT user, experiment, experiment_arm, request_model, effective_model, count() FROM llm_usage FINAL "
            "GROUP BY user, experiment, experiment_arm, request_model, effective_model ORDER BY user"
        ).result_rows
    expected = [(user, EXPERIMENT, arms[user], CONTROL, model_of(arms[user]), CALLS_PER_USER) for user in USERS]
    expected += [("", "", "", CONTROL, CONTROL, 1), ("sales-1", "", "", CONTROL, CONTROL, 1)]
    expected.append((candidate_user, "", "", CONTROL, CONTROL, 1))  # its hr-bot call
    assert sorted(rows) == sorted(expected)


def test_with_the_enforcer_unreachable_a_call_goes_as_asked(openai_server: OpenAICompatibleServer) -> None:
    """Fail open: no answer, so no experiment; the candidate-arm user's call asks for the control model."""
    telemetry = make_telemetry()
    instrumentor = TokenmeterInstrumentor()
    instrumentor.instrument(
        tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider,
        settings=Settings(enforcer_url=f"http://127.0.0.1:{free_port()}", local_count="fallback"),
        registry=TokenizerRegistry(ModelCatalog.load(None)), skip_dep_check=True,
    )  # fmt: skip
    user = next(user for user in USERS if arm_of(user) == semconv.ARM_CANDIDATE)
    try:
        client = openai.OpenAI(base_url=openai_server.base_url, api_key="sk-test", max_retries=0)
        with tokenmeter.attribution(user=user, department="legal", app=APP):
            client.chat.completions.create(model=CONTROL, messages=[{"role": "user", "content": "你好"}], max_tokens=5)
        assert tokenmeter.flush(timeout_s=30)
    finally:
        instrumentor.uninstrument()
    span = dict(telemetry.spans()[-1].attributes or {})
    assert (span[semconv.TM_QUOTA_DECISION], span[semconv.TM_QUOTA_FAIL_OPEN]) == ("unavailable", True)
    assert openai_server.requests[-1].body["model"] == CONTROL
    assert semconv.TM_EXPERIMENT not in span and semconv.TM_EXPERIMENT_ARM not in span
