"""End to end: an app under `opentelemetry-instrument` with the SDK's real OTLP exporters,
a local OpenAI-compatible server, and a real `tokenmeter serve`; then SQL on the store.

Every test checks per-user token totals against what the upstream server reported
(41 input tokens per call, max_tokens output tokens per call).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from openai_server import SERVER_PROMPT_TOKENS, OpenAICompatibleServer
from serve_process import ServeProcess, running_serve

from tokenmeter.store.usage_queries import period_usage

APP = Path(__file__).parent / "support" / "metered_app.py"

Plan = list[list[list[Any]]]


def _instrument() -> str:
    found = Path(sys.executable).parent / "opentelemetry-instrument"
    return str(found) if found.exists() else str(shutil.which("opentelemetry-instrument"))


def _app_env(
    server: OpenAICompatibleServer, serve: ServeProcess, plan_file: Path, protocol: str, **extra: str
) -> dict[str, str]:
    endpoint = f"http://{serve.otlp_grpc}" if protocol == "grpc" else serve.otlp_http
    return {
        **os.environ,
        "TEST_OPENAI_BASE_URL": server.base_url,
        "TEST_PLAN": str(plan_file),
        "OTEL_SERVICE_NAME": "e2e-app",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "TOKENMETER_HASH_KEY": "e2e",
        **extra,
    }


def _write_plan(tmp_path: Path, plan: Plan, name: str = "plan.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(plan), encoding="utf-8")
    return path


def _expected(plan: Plan) -> dict[str, tuple[int, int, int]]:
    """user -> (calls, input tokens, output tokens) as the server reported them."""
    calls: Counter[str] = Counter()
    outputs: Counter[str] = Counter()
    for phase in plan:
        for user, _department, max_tokens in phase:
            calls[user] += 1
            outputs[user] += max_tokens
    return {user: (calls[user], calls[user] * SERVER_PROMPT_TOKENS, outputs[user]) for user in calls}


def _run_app(env: dict[str, str]) -> None:
    result = subprocess.run(
        [_instrument(), sys.executable, str(APP)], env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]


def _today_period() -> tuple[datetime, datetime]:
    start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return start, start + timedelta(days=1)


def _counter_totals(client: Any) -> dict[str, tuple[int, int, int]]:
    start, end = _today_period()
    return {u.subject: (u.calls, u.input_tokens, u.output_tokens) for u in period_usage(client, start, end, "user")}


def _span_totals(client: Any) -> dict[str, tuple[int, int, int]]:
    rows = client.query(
        "SELECT user, count(), sum(input_tokens), sum(output_tokens) FROM llm_usage FINAL GROUP BY user"
    ).result_rows
    return {str(user): (int(calls), int(tokens_in), int(tokens_out)) for user, calls, tokens_in, tokens_out in rows}


def _plan(users: int, calls_per_user: int, phases: int = 1) -> Plan:
    return [
        [[f"user-{u}", f"dept-{u % 3}", 5 + (u * 7 + c + p) % 50] for u in range(users) for c in range(calls_per_user)]
        for p in range(phases)
    ]


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_usage_from_the_sdk_exporters_equals_server_usage(
    tmp_path: Path, openai_server: OpenAICompatibleServer, protocol: str
) -> None:
    plan = _plan(users=4, calls_per_user=3)
    plan[0].append(['o\'brien "q" 张三', "研发部", 17])  # quotes and CJK pass through parameterised SQL
    with running_serve(tmp_path / "serve") as serve:
        _run_app(_app_env(openai_server, serve, _write_plan(tmp_path, plan), protocol))
    with serve.store() as client:
        assert _counter_totals(client) == _expected(plan)
        assert _span_totals(client) == _expected(plan)
        [(cost_rows,)] = client.query("SELECT count() FROM llm_usage WHERE cost IS NOT NULL").result_rows
        assert cost_rows == sum(len(phase) for phase in plan)


def test_sampled_traces_still_give_exact_totals(tmp_path: Path, openai_server: OpenAICompatibleServer) -> None:
    plan = _plan(users=5, calls_per_user=20)
    with running_serve(tmp_path / "serve") as serve:
        env = _app_env(
            openai_server,
            serve,
            _write_plan(tmp_path, plan),
            "grpc",
            OTEL_TRACES_SAMPLER="traceidratio",
            OTEL_TRACES_SAMPLER_ARG="0.1",
        )
        _run_app(env)
    with serve.store() as client:
        assert _counter_totals(client) == _expected(plan)  # the bill is exact
        spans = sum(calls for calls, _, _ in _span_totals(client).values())
        assert 0 < spans < 50  # ~10 of 100 calls kept as audit spans


def test_app_restart_mid_period_adds_up(tmp_path: Path, openai_server: OpenAICompatibleServer) -> None:
    first, second = _plan(users=3, calls_per_user=4), _plan(users=3, calls_per_user=2)
    with running_serve(tmp_path / "serve") as serve:
        _run_app(_app_env(openai_server, serve, _write_plan(tmp_path, first, "first.json"), "grpc"))
        _run_app(_app_env(openai_server, serve, _write_plan(tmp_path, second, "second.json"), "grpc"))
    with serve.store() as client:
        assert _counter_totals(client) == _expected(first + second)
        [(instances,)] = client.query("SELECT uniqExact(service_instance_id) FROM usage_counter_series").result_rows
        assert instances == 2  # two processes, two series each, both counted


def test_collector_down_then_back_loses_nothing(tmp_path: Path, openai_server: OpenAICompatibleServer) -> None:
    """Calls made while the receiver is down are in the next cumulative export after it is back."""
    plan = _plan(users=3, calls_per_user=5, phases=3)
    serve = ServeProcess(tmp_path / "serve").start()
    env = _app_env(openai_server, serve, _write_plan(tmp_path, plan), "grpc", OTEL_EXPORTER_OTLP_TIMEOUT="2")
    app = subprocess.Popen(
        [_instrument(), sys.executable, str(APP)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert app.stdin is not None and app.stdout is not None
    try:
        assert app.stdout.readline().strip() == "phase 0 done"
        assert serve.stop() == 0  # the collector goes away
        app.stdin.write("go\n")
        app.stdin.flush()
        assert app.stdout.readline().strip() == "phase 1 done"
        # exports fail for a while: several metric intervals with nobody listening
        subprocess.run([sys.executable, "-c", "import time; time.sleep(3)"], check=True)
        serve.start()  # back, on the same ports
        app.stdin.write("go\n")
        app.stdin.flush()
        assert app.stdout.readline().strip() == "phase 2 done"
        app.stdin.close()
        assert app.wait(120) == 0
        assert app.stderr is not None
        log = app.stderr.read()
        assert "Failed to export" in log, log[-2000:]  # the outage was real: exports failed meanwhile
    finally:
        if app.poll() is None:
            app.kill()
        serve.stop()
    with serve.store() as client:
        assert _counter_totals(client) == _expected(plan)


def test_five_thousand_users_in_one_process_are_exact(tmp_path: Path, openai_server: OpenAICompatibleServer) -> None:
    plan = _plan(users=5000, calls_per_user=1)
    with running_serve(tmp_path / "serve") as serve:
        _run_app(
            _app_env(
                openai_server,
                serve,
                _write_plan(tmp_path, plan),
                "grpc",
                OTEL_METRIC_EXPORT_INTERVAL="600000",
                OTEL_TRACES_EXPORTER="none",
            )
        )
    with serve.store() as client:
        totals = _counter_totals(client)
        assert totals == _expected(plan)
        [(overflow,)] = client.query(
            "SELECT count() FROM otel_metrics_sum WHERE Attributes['otel.metric.overflow'] = 'true'"
        ).result_rows
        assert overflow == 0
