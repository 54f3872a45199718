"""`opentelemetry-instrument python app.py` meters an app that contains no tokenmeter code."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from openai_server import SERVER_PROMPT_TOKENS, OpenAICompatibleServer

from tokenmeter import semconv

APP = Path(__file__).parent / "support" / "auto_instrumented_app.py"
OTHER_CLIENTS_APP = Path(__file__).parent / "support" / "other_clients_app.py"


def _instrument_command(app: Path = APP) -> list[str]:
    executable = Path(sys.executable).parent / "opentelemetry-instrument"
    found = str(executable) if executable.exists() else shutil.which("opentelemetry-instrument")
    if not found:
        pytest.fail("opentelemetry-instrument is not installed (it comes with the project's otlp extra)")
    return [found, sys.executable, str(app)]


def _run(server: OpenAICompatibleServer, **extra_env: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "TEST_OPENAI_BASE_URL": server.base_url,
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_METRICS_EXPORTER": "console",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_SERVICE_NAME": "auto-app",
        "TOKENMETER_HASH_KEY": "k",
        **extra_env,
    }
    return subprocess.run(_instrument_command(), env=env, capture_output=True, text=True, timeout=120, check=False)


def test_opentelemetry_instrument_prints_genai_usage_spans(openai_server: OpenAICompatibleServer) -> None:
    result = _run(openai_server)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "app done" in out
    assert f'"{semconv.GEN_AI_USAGE_INPUT_TOKENS}": {SERVER_PROMPT_TOKENS}' in out
    assert f'"{semconv.TM_USAGE_SOURCE}": "server"' in out
    assert f'"{semconv.TM_USAGE_SOURCE}": "tokenizer"' in out  # the stream carried no usage
    assert '"name": "chat qwen2.5-7b-instruct"' in out
    assert f'"{semconv.TM_APP}": "auto-app"' in out  # app defaults to service.name
    assert semconv.METRIC_USAGE_TOKENS in out  # usage counters exported at exit


def test_disabled_instrumentations_switch_it_off(openai_server: OpenAICompatibleServer) -> None:
    result = _run(openai_server, OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="tokenmeter")
    assert result.returncode == 0, result.stderr
    assert "app done" in result.stdout
    assert semconv.GEN_AI_USAGE_INPUT_TOKENS not in result.stdout


def test_sigterm_flushes_spans_and_counters(openai_server: OpenAICompatibleServer) -> None:
    """A server stopped by SIGTERM (as `chatchat start -a` stops its child) still exports its usage."""
    env = {
        **os.environ,
        "TEST_OPENAI_BASE_URL": openai_server.base_url,
        "TEST_WAIT_FOR_SIGNAL": "1",
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_METRICS_EXPORTER": "console",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_BSP_SCHEDULE_DELAY": "600000",  # nothing would be exported on a timer in time
        "OTEL_METRIC_EXPORT_INTERVAL": "600000",
    }
    process = subprocess.Popen(
        _instrument_command(), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert "app done" in first, process.stderr.read() if process.stderr else ""
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == -signal.SIGTERM  # the default action still ends the process
    assert f'"{semconv.GEN_AI_USAGE_INPUT_TOKENS}": {SERVER_PROMPT_TOKENS}' in out
    assert semconv.METRIC_USAGE_TOKENS in out


def test_opentelemetry_instrument_meters_the_other_clients_sdks() -> None:
    """The same entry point, environment variables only, meters the Anthropic SDK, the Ollama client and DashScope's
    SDK (each patched when the script imports it), with the servers' counts."""
    pytest.importorskip("anthropic")
    pytest.importorskip("ollama")
    pytest.importorskip("dashscope")
    from anthropic_server import AnthropicServer
    from dashscope_server import DashScopeServer
    from ollama_server import OllamaServer

    with AnthropicServer() as claude, OllamaServer() as local, DashScopeServer() as qwen:
        servers = {"TEST_ANTHROPIC_URL": claude.url, "TEST_OLLAMA_HOST": local.host}
        otel = {"OTEL_TRACES_EXPORTER": "console", "OTEL_METRICS_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none"}
        env = {**os.environ, **servers, **otel, "TEST_DASHSCOPE_URL": qwen.base_url,
               "OTEL_SERVICE_NAME": "other-clients", "TOKENMETER_HASH_KEY": "k"}  # fmt: skip
        result = subprocess.run(_instrument_command(OTHER_CLIENTS_APP), env=env, capture_output=True, text=True,
                                timeout=120, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "app done" in out
    for provider, output_tokens in (("anthropic", 7), ("ollama", 8), ("dashscope", 9)):
        assert f'"{semconv.GEN_AI_PROVIDER_NAME}": "{provider}"' in out
        assert f'"{semconv.GEN_AI_USAGE_OUTPUT_TOKENS}": {output_tokens}' in out
    assert out.count(f'"{semconv.TM_USAGE_SOURCE}": "server"') == 3
