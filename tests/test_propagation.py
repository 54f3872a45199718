"""Privacy: by default the user's identity (W3C baggage) goes only to the app's own hop servers.

A model server on loopback (Xinference, Ollama, vLLM, one-api ...) gets neither baggage nor
trace context unless TOKENMETER_PROPAGATE opts in: a local proxy may forward headers to a
third-party API. The real openai SDK against a local server that records every request.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import openai
import pytest
from openai_server import OpenAICompatibleServer
from opentelemetry import baggage
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from telemetry_fixtures import make_telemetry

import tokenmeter
from tokenmeter import semconv
from tokenmeter.catalog import ModelCatalog
from tokenmeter.instrumentation.hop_servers import PROCESS_HOP_SERVERS
from tokenmeter.instrumentation.instrumentor import TokenmeterInstrumentor
from tokenmeter.instrumentation.propagation import should_propagate
from tokenmeter.settings import Settings
from tokenmeter.tokenizers import TokenizerRegistry

USER = "alice.secret-7f3"
DEPARTMENT = "研发部"


@contextmanager
def instrumented(settings: Settings) -> Iterator[None]:
    telemetry = make_telemetry()
    instrumentor = TokenmeterInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider,
                            settings=settings, registry=TokenizerRegistry(ModelCatalog.load(None)),
                            skip_dep_check=True)  # fmt: skip
    try:
        yield
    finally:
        instrumentor.uninstrument()


def headers_of_a_call_by_alice(server: OpenAICompatibleServer) -> dict[str, str]:
    client = openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)
    with tokenmeter.attribution(user=USER, department=DEPARTMENT):
        client.chat.completions.create(model="qwen2.5-7b-instruct", messages=[{"role": "user", "content": "你好"}])
    return server.requests[-1].headers


def port_of(server: OpenAICompatibleServer) -> int:
    return int(server.base_url.rsplit(":", 1)[1].split("/")[0])


def default_settings(monkeypatch: pytest.MonkeyPatch, **values: Any) -> Settings:
    monkeypatch.delenv("TOKENMETER_PROPAGATE", raising=False)
    monkeypatch.delenv("TOKENMETER_HOP_SERVERS", raising=False)
    return Settings(hash_key="k", **values)


def test_by_default_a_loopback_model_server_gets_no_identity_and_no_trace_context(
    openai_server: OpenAICompatibleServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert ("127.0.0.1", port_of(openai_server)) not in PROCESS_HOP_SERVERS  # a model server, not a hop
    with instrumented(default_settings(monkeypatch)):
        headers = headers_of_a_call_by_alice(openai_server)
    assert "baggage" not in {name.lower() for name in headers}
    assert "traceparent" not in {name.lower() for name in headers}
    everything_sent = " ".join(f"{name}: {value}" for name, value in headers.items())
    assert "alice" not in everything_sent and "%E7%A0%94" not in everything_sent  # nor the department, encoded


@pytest.mark.parametrize("registered_by", ["TOKENMETER_HOP_SERVERS", "an integration"])
def test_by_default_a_hop_server_gets_the_identity(
    openai_server: OpenAICompatibleServer, monkeypatch: pytest.MonkeyPatch, registered_by: str
) -> None:
    """Chatchat's own /v1 (registered by the integration from its settings) must learn whose call it forwards."""
    port = port_of(openai_server)
    if registered_by == "an integration":
        PROCESS_HOP_SERVERS.add("127.0.0.1", port)  # as the Chatchat integration adds its API server
        settings = default_settings(monkeypatch)
    else:
        settings = default_settings(monkeypatch, hop_servers=[f"localhost:{port}"])
    with instrumented(settings):
        headers = headers_of_a_call_by_alice(openai_server)
    received = W3CBaggagePropagator().extract({"baggage": headers["baggage"]})
    assert baggage.get_baggage(semconv.BAGGAGE_USER, received) == USER
    assert baggage.get_baggage(semconv.BAGGAGE_DEPARTMENT, received) == DEPARTMENT
    assert headers["traceparent"]


def test_each_policy_sends_to_a_superset_of_the_one_before() -> None:
    # (hop, host) -> policies that send the headers
    cases = {
        (True, "127.0.0.1"): {"hops", "loopback", "always"},
        (True, "gateway.internal"): {"hops", "loopback", "always"},  # a hop beyond loopback is still your own
        (False, "localhost"): {"loopback", "always"},
        (False, "api.openai.com"): {"always"},
        (False, None): {"always"},
    }
    for (hop, host), sending in cases.items():
        for policy in ("never", "hops", "loopback", "always"):
            assert should_propagate(policy, host, hop=hop) == (policy in sending), (policy, hop, host)
    assert Settings.model_fields["propagate"].default == "hops"
