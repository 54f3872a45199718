"""The answer's message id on calls: on every call's span, never on the usage counters or quota keys,
and believed from a request's baggage only where the rest of its identity is.

The real openai SDK against a local OpenAI-compatible server, the real OTel SDK with in-memory
exporters, the identity middleware around a real ASGI app.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai_server import OpenAICompatibleServer
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from telemetry_fixtures import Telemetry, make_telemetry

import tokenmeter
from tokenmeter import semconv
from tokenmeter.catalog import ModelCatalog
from tokenmeter.instrumentation.asgi import IdentityMiddleware
from tokenmeter.instrumentation.attribution import Attribution, attribution, current_attribution
from tokenmeter.instrumentation.instrumentor import TokenmeterInstrumentor
from tokenmeter.instrumentation.quota.client import check_key
from tokenmeter.settings import Settings
from tokenmeter.tokenizers import TokenizerRegistry

try:  # the openai SDK 3.x ships httpx2; older environments have httpx
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    httpx = pytest.importorskip("httpx")

MODEL = "qwen2.5-7b-instruct"
USAGE_METRICS = (semconv.METRIC_USAGE_TOKENS, semconv.METRIC_USAGE_CALLS, semconv.METRIC_USAGE_COST)
SPEC_METRICS = (semconv.METRIC_TOKEN_USAGE, semconv.METRIC_OPERATION_DURATION)

pytestmark = pytest.mark.usefixtures("no_service_name")


@pytest.fixture
def instrumented() -> Iterator[Telemetry]:
    telemetry = make_telemetry()
    instrumentor = TokenmeterInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider,
                            settings=Settings(hash_key="k"), registry=TokenizerRegistry(ModelCatalog.load(None)),
                            skip_dep_check=True)  # fmt: skip
    try:
        yield telemetry
    finally:
        instrumentor.uninstrument()


def ask(server: OpenAICompatibleServer, **kwargs: Any) -> None:
    client = openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "你好"}], max_tokens=8, **kwargs)


def test_every_call_of_an_answer_carries_its_message_id_and_the_counters_do_not(
    instrumented: Telemetry, openai_server: OpenAICompatibleServer
) -> None:
    for message in ("m-1", "m-2", "m-3"):
        with attribution(user="alice", department="ml", app="kb", message=message):
            ask(openai_server)
            ask(openai_server, stream=True)
    ask(openai_server)  # a call outside any answer
    assert tokenmeter.flush(5)
    spans = instrumented.spans()
    assert [span.attributes.get(semconv.TM_MESSAGE_ID) for span in spans] == [
        "m-1", "m-1", "m-2", "m-2", "m-3", "m-3", None]  # fmt: skip
    for name in USAGE_METRICS + SPEC_METRICS:
        points = instrumented.points(name)
        assert points, name
        assert all(semconv.TM_MESSAGE_ID not in attributes for attributes, _ in points), name
    # Three answers of one user: one series per kind of call (billed by the server's usage, or
    # counted for the stream), not one per answer.
    alice_calls = [value for attributes, value in instrumented.points(semconv.METRIC_USAGE_CALLS)
                   if attributes.get(semconv.ENDUSER_ID) == "alice"]  # fmt: skip
    assert sorted(alice_calls) == [3, 3]


def test_the_quota_key_does_not_depend_on_the_answer() -> None:
    who = Attribution(user="alice", department="ml", app="kb")
    assert check_key(Attribution(user="alice", department="ml", app="kb", message="m-1"), MODEL) == check_key(
        who, MODEL)  # fmt: skip


# --- the identity middleware ----------------------------------------------------------


async def seen_message(peer: tuple[str, int], headers: dict[str, str]) -> dict[str, Any]:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        who = current_attribution()
        body = json.dumps({"user": who.user, "message": who.message}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    transport = httpx.ASGITransport(app=IdentityMiddleware(app, Settings()), client=peer)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        response = await http.post("/v1/chat/completions", headers=headers)
    seen: dict[str, Any] = response.json()
    return seen


def baggage_of(**fields: str) -> dict[str, str]:
    carrier: dict[str, str] = {}
    with attribution(**fields):
        W3CBaggagePropagator().inject(carrier)
    return carrier


async def test_a_hops_message_id_is_believed_from_a_trusted_peer() -> None:
    """Chatchat's agent calls its own /v1 over loopback: the forwarded call belongs to the same answer."""
    seen = await seen_message(("127.0.0.1", 50000), baggage_of(user="alice", message="m-1"))
    assert seen == {"user": "alice", "message": "m-1"}


async def test_an_untrusted_peers_message_id_is_dropped_with_the_rest_of_its_baggage() -> None:
    seen = await seen_message(("203.0.113.7", 50000), baggage_of(user="mallory", message="someone-elses-answer"))
    assert seen == {"user": None, "message": None}
