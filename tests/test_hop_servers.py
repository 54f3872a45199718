"""Hops: calls to your own forwarding service (Chatchat's /v1) keep a span but are billed once, downstream."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from openai_server import OpenAICompatibleServer
from otlp_requests import CHAT_CALL, now_ns, span, traces_request
from telemetry_fixtures import make_telemetry

from tokenmeter import semconv
from tokenmeter.catalog import ModelCatalog
from tokenmeter.collector.ingest_queue import IngestSchema, insert_payloads
from tokenmeter.collector.payloads import Signal, decode_protobuf
from tokenmeter.instrumentation.hop_servers import HopServers, parse_server
from tokenmeter.instrumentation.instrumentor import TokenmeterInstrumentor
from tokenmeter.settings import Settings
from tokenmeter.tokenizers import TokenizerRegistry

MESSAGES = [{"role": "user", "content": "人工智能是什么？"}]


def test_loopback_names_are_one_host_and_bad_entries_are_refused() -> None:
    hops = HopServers(["localhost:7861", "gateway.internal"])
    assert ("127.0.0.1", 7861) in hops and ("::1", 7861) in hops
    assert ("127.0.0.1", 7862) not in hops
    assert ("gateway.internal", 443) in hops  # a bare host: any port
    assert ("api.openai.com", 443) not in hops
    with pytest.raises(ValueError, match="not host:port"):
        parse_server("127.0.0.1:http")
    with pytest.raises(ValueError, match="hop_servers"):
        Settings(hop_servers=["127.0.0.1:x"])


def test_a_hop_keeps_its_span_but_adds_no_usage_and_is_not_checked(openai_server: OpenAICompatibleServer) -> None:
    telemetry = make_telemetry()
    instrumentor = TokenmeterInstrumentor()
    port = int(openai_server.base_url.rsplit(":", 1)[1].split("/")[0])
    # A fail-closed enforcer that cannot be reached would refuse any checked call.
    settings = Settings(hop_servers=[f"localhost:{port}"], enforcer_url="http://127.0.0.1:9", fail_mode="closed")
    instrumentor.instrument(tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider,
                            settings=settings, registry=TokenizerRegistry(ModelCatalog.load(None)),
                            skip_dep_check=True)  # fmt: skip
    try:
        client = openai.OpenAI(base_url=openai_server.base_url, api_key="sk-test", max_retries=0)
        client.chat.completions.create(model="qwen2.5-7b-instruct", messages=MESSAGES)
        assert instrumentor.flush()
    finally:
        instrumentor.uninstrument()
    (hop,) = telemetry.spans()
    assert hop.attributes[semconv.TM_HOP] is True
    assert semconv.TM_QUOTA_DECISION not in hop.attributes
    assert telemetry.points(semconv.METRIC_USAGE_TOKENS) == []
    assert telemetry.points(semconv.METRIC_USAGE_CALLS) == []
    assert telemetry.points(semconv.METRIC_TOKEN_USAGE)  # the conventions' client metric stays


def test_llm_usage_leaves_hops_out(migrated_store: Any) -> None:
    start = now_ns()
    spans = [span("chat hop", 1, start, {**CHAT_CALL, semconv.TM_HOP: True}), span("chat", 2, start, CHAT_CALL)]
    request = traces_request(spans, scope=semconv.INSTRUMENTATION_SCOPE)
    payload = decode_protobuf(Signal.TRACES, request.SerializeToString())
    insert_payloads(migrated_store, Signal.TRACES, [payload], IngestSchema.for_store(embedded=True))
    rows = migrated_store.query("SELECT user, input_tokens FROM llm_usage FINAL").result_rows
    assert rows == [("alice", 10)]
