"""The app side of routing: the real openai SDK, tokenmeter's instrumentation, a local model server, and an
enforcer: a small local HTTP one that answers with fixed documents (what the client does with each answer),
then a real `tokenmeter serve` with a routing policy (end to end).

Proved: a chat check carries the question's features and the intent classified here; the upstream server
receives the routed model; spans name the rule, the tier and the intent; questions of different intents are
routed differently in one process; the routing document is fetched once, and again after its version
changes; a routed verdict is never reused from a lease; a failing ``GET /v1/routing`` leaves the intent
unknown and the call going ahead, and is tried again later; embeddings carry no features.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai_server import OpenAICompatibleServer
from serve_process import ServeProcess
from telemetry_fixtures import Telemetry, make_telemetry
from waiting import wait_for

import tokenmeter
from tokenmeter import semconv
from tokenmeter.catalog import ModelCatalog
from tokenmeter.instrumentation.instrumentor import TokenmeterInstrumentor
from tokenmeter.settings import Settings
from tokenmeter.tokenizers import TokenizerRegistry

SMALL, LARGE, REMOTE = "qwen2.5-7b-instruct", "qwen2.5-72b-instruct", "deepseek-chat"
LOOKUP_QUESTION = "年假是多少天？"
REASONING_QUESTION = "为什么年假要按工龄计算？"
OTHER_QUESTION = "年假有几天？"  # no intent of the first document names it


def routing_document(version: str, lookup_keywords: list[str]) -> dict[str, Any]:
    return {"version": version, "classifier": None, "intents": [
        {"name": "reasoning", "keywords": [], "patterns": ["为什么|如何"]},
        {"name": "lookup", "keywords": lookup_keywords, "patterns": []},
    ]}  # fmt: skip


class FixedEnforcer:
    """Answers ``GET /v1/routing`` with ``document`` (or ``routing_status``) and ``POST /v1/check`` with allow:
    a lookup question routed to the small tier by rule short-lookup, with a lease (which a real enforcer would
    not grant for a routed check: the client must not keep it). Records what it received."""

    def __init__(self) -> None:
        self.document = routing_document("v1", ["是什么", "多少"])
        self.routing_status = 200
        self.routing_gets = 0
        self.checks: list[dict[str, Any]] = []
        enforcer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                enforcer.routing_gets += 1
                ok = enforcer.routing_status == 200
                self._answer(enforcer.routing_status, enforcer.document if ok else {"error": "broken"})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                if self.path != "/v1/check":
                    self._answer(200, {})  # releases
                    return
                enforcer.checks.append(body)
                self._answer(200, enforcer.decision(body))

            def _answer(self, status: int, document: dict[str, Any]) -> None:
                payload = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def decision(self, body: dict[str, Any]) -> dict[str, Any]:
        answer = {"decision": "allow", "requested_model": body["model"], "effective_model": body["model"],
                  "reservation_id": f"r{len(self.checks)}", "routing_version": self.document["version"]}  # fmt: skip
        if (body.get("route") or {}).get("intent") == "lookup":
            answer |= {
                "effective_model": SMALL,
                "route_rule": "short-lookup",
                "route_tier": "small",
                "lease": {"calls": 10, "seconds": 60, "tokens": 1_000_000, "default_output_tokens": 10},
            }
        return answer

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class MeteredApp:
    def __init__(self, enforcer_url: str, token: str | None, upstream: OpenAICompatibleServer) -> None:
        self.telemetry: Telemetry = make_telemetry()
        self.instrumentor = TokenmeterInstrumentor()
        settings = Settings(enforcer_url=enforcer_url, enforcer_token=token, local_count="fallback",
                            enforcer_timeout=30, enforcer_cache_seconds=0)  # fmt: skip
        registry = TokenizerRegistry(ModelCatalog.load(None))
        self.instrumentor.instrument(tracer_provider=self.telemetry.tracer_provider,
                                     meter_provider=self.telemetry.meter_provider, settings=settings,
                                     registry=registry, skip_dep_check=True)  # fmt: skip
        self.upstream = upstream
        self.client = openai.OpenAI(base_url=upstream.base_url, api_key="sk-test", max_retries=0)

    def ask(self, question: str, passages: int | None = None, top_score: float | None = None
            ) -> tuple[str, dict[str, Any]]:  # fmt: skip
        """One chat call asking for the large model: the model the upstream was asked for, and the call's span."""
        retrieved = tokenmeter.retrieval(passages, top_score) if passages is not None else contextlib.nullcontext()
        with tokenmeter.attribution(user="alice", department="hr", app="kb"), retrieved:
            self.client.chat.completions.create(
                model=LARGE,
                messages=[
                    {"role": "system", "content": "资料：年假满一年五天。"},
                    {"role": "user", "content": question},
                ],
            )
        assert tokenmeter.flush(timeout_s=30)
        return self.upstream.requests[-1].body["model"], dict(self.telemetry.spans()[-1].attributes or {})

    def close(self) -> None:
        self.instrumentor.uninstrument()


@pytest.fixture
def enforcer() -> Iterator[FixedEnforcer]:
    enforcer = FixedEnforcer()
    try:
        yield enforcer
    finally:
        enforcer.close()


@pytest.fixture
def app(enforcer: FixedEnforcer, openai_server: OpenAICompatibleServer) -> Iterator[MeteredApp]:
    app = MeteredApp(enforcer.url, None, openai_server)
    try:
        yield app
    finally:
        app.close()


def test_a_routed_question_reaches_the_tier_model_and_its_span_names_rule_tier_and_intent(
    app: MeteredApp, enforcer: FixedEnforcer
) -> None:
    model, span = app.ask(LOOKUP_QUESTION, passages=3, top_score=0.8)
    assert model == SMALL
    assert (span[semconv.TM_ROUTE_RULE], span[semconv.TM_ROUTE_TIER], span[semconv.TM_ROUTE_INTENT]) == (
        "short-lookup", "small", "lookup",
    )  # fmt: skip
    assert (span[semconv.TM_REQUESTED_MODEL], span[semconv.TM_EFFECTIVE_MODEL]) == (LARGE, SMALL)
    assert span[semconv.GEN_AI_REQUEST_MODEL] == SMALL
    assert (span[semconv.TM_QUESTION_CHARS], span[semconv.TM_CONVERSATION_DEPTH], span[semconv.TM_PROMPT_CHARS]) == (
        7, 1, 18,
    )  # fmt: skip
    assert (span[semconv.TM_RETRIEVAL_PASSAGES], span[semconv.TM_RETRIEVAL_TOP_SCORE]) == (3, 0.8)
    assert enforcer.checks[-1]["route"] == {"intent": "lookup", "question_chars": 7, "depth": 1, "passages": 3,
                                            "top_score": 0.8}  # fmt: skip
    assert enforcer.checks[-1]["model"] == LARGE  # the enforcer routes; the app asks about what it asked for

    model, span = app.ask(REASONING_QUESTION)  # another intent, in the same process: not routed here
    assert (model, span[semconv.TM_ROUTE_INTENT]) == (LARGE, "reasoning")
    assert semconv.TM_ROUTE_RULE not in span and semconv.TM_ROUTE_TIER not in span
    assert enforcer.checks[-1]["route"] == {"intent": "reasoning", "question_chars": 12, "depth": 1}

    checks = len(enforcer.checks)
    assert app.ask(LOOKUP_QUESTION, passages=3)[0] == SMALL
    assert app.ask(LOOKUP_QUESTION, passages=3)[0] == SMALL
    assert len(enforcer.checks) == checks + 2  # the routed answers' leases were not kept: each call was checked
    assert enforcer.routing_gets == 1  # the routing document was fetched once, before the first check


def test_the_routing_document_is_fetched_again_when_an_answer_names_another_version(
    app: MeteredApp, enforcer: FixedEnforcer
) -> None:
    assert app.ask(OTHER_QUESTION)[1].get(semconv.TM_ROUTE_INTENT) is None
    enforcer.document = routing_document("v2", ["是什么", "多少", "几天"])  # the policy changed
    model, span = app.ask(OTHER_QUESTION)  # classified with what the app held; its answer names v2
    assert (model, span.get(semconv.TM_ROUTE_INTENT), enforcer.routing_gets) == (LARGE, None, 1)
    model, span = app.ask(OTHER_QUESTION)  # fetched v2 first
    assert (model, span[semconv.TM_ROUTE_INTENT], span[semconv.TM_ROUTE_RULE]) == (SMALL, "lookup", "short-lookup")
    app.ask(OTHER_QUESTION)
    assert enforcer.routing_gets == 2


def test_a_failing_routing_document_leaves_the_intent_unknown_and_the_call_going_ahead(
    app: MeteredApp, enforcer: FixedEnforcer
) -> None:
    enforcer.routing_status = 500
    model, span = app.ask(LOOKUP_QUESTION, passages=3, top_score=0.9)
    assert (model, span[semconv.TM_QUOTA_DECISION]) == (LARGE, "allow")  # checked, not routed: no intent
    assert semconv.TM_ROUTE_INTENT not in span
    assert enforcer.checks[-1]["route"] == {"question_chars": 7, "depth": 1, "passages": 3, "top_score": 0.9}
    enforcer.routing_status = 200
    model, span = app.ask(LOOKUP_QUESTION, passages=3, top_score=0.9)  # tried again (cache_seconds 0 here)
    assert (model, span[semconv.TM_ROUTE_INTENT]) == (SMALL, "lookup")
    assert enforcer.routing_gets == 2


def test_embeddings_carry_no_question(app: MeteredApp, enforcer: FixedEnforcer) -> None:
    with tokenmeter.attribution(user="alice", department="hr", app="kb"), tokenmeter.retrieval(2, 0.7):
        app.client.embeddings.create(model="text-embedding-3-small", input=LOOKUP_QUESTION)
    assert "route" not in enforcer.checks[-1]
    assert enforcer.routing_gets == 0  # nothing asked for it yet


def test_an_async_call_is_routed_too(enforcer: FixedEnforcer, openai_server: OpenAICompatibleServer) -> None:
    app = MeteredApp(enforcer.url, None, openai_server)

    async def ask() -> None:
        client = openai.AsyncOpenAI(base_url=openai_server.base_url, api_key="sk-test", max_retries=0)
        async with client:
            with tokenmeter.retrieval(1, 0.95):
                await client.chat.completions.create(model=LARGE, messages=[{"role": "user", "content": "价格是多少"}])

    try:
        asyncio.run(ask())
        assert tokenmeter.flush(timeout_s=30)
    finally:
        app.close()
    span = dict(app.telemetry.spans()[-1].attributes or {})
    assert openai_server.requests[-1].body["model"] == SMALL
    assert (span[semconv.TM_ROUTE_RULE], span[semconv.TM_ROUTE_INTENT]) == ("short-lookup", "lookup")
    assert enforcer.routing_gets == 1


# --- end to end: a real `tokenmeter serve` with a routing policy ------------------------------------------

POLICY = f"""
timezone: UTC
budgets:
  - {{name: per-user, scope: user, period: day, limit: {{tokens: 100000000}}}}
routing:
  tiers:
    - {{name: small, model: {SMALL}}}
    - {{name: large, model: {LARGE}}}
    - {{name: remote, model: {REMOTE}}}
  intents:
    - {{name: reasoning, patterns: ["为什么|如何|比较|分析"]}}
    - {{name: lookup, keywords: [{{LOOKUP_KEYWORDS}}]}}
  rules:
    - name: short-lookup
      when: {{intent: [lookup], question_chars: {{max: 80}}, passages: {{min: 1}}, top_score: {{min: 0.6}}}}
      tier: small
    - name: reasoning-remote
      when: {{intent: [reasoning]}}
      tier: remote
"""


def _policy(keywords: str) -> str:
    return POLICY.replace("{LOOKUP_KEYWORDS}", keywords)


def _served_version(serve: ServeProcess) -> str:
    response = httpx.get(f"{serve.api}/v1/routing", headers={"authorization": f"Bearer {serve.api_token}"},
                         timeout=10)  # fmt: skip
    response.raise_for_status()
    return str(response.json()["version"])


def test_end_to_end_with_a_real_enforcer(tmp_path: Path, openai_server: OpenAICompatibleServer) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(_policy('"是什么", "多少"'), encoding="utf-8")
    serve = ServeProcess(tmp_path / "serve", ["--policy", str(policy), "--refresh-interval", "0.2"]).start()
    app = MeteredApp(serve.api, serve.api_token, openai_server)
    try:
        first_version = _served_version(serve)
        model, span = app.ask(LOOKUP_QUESTION, passages=3, top_score=0.8)
        assert (model, span[semconv.TM_ROUTE_RULE], span[semconv.TM_ROUTE_TIER]) == (SMALL, "short-lookup", "small")
        assert (span[semconv.TM_ROUTE_INTENT], span[semconv.TM_REQUESTED_MODEL]) == ("lookup", LARGE)
        model, span = app.ask(REASONING_QUESTION)
        assert (model, span[semconv.TM_ROUTE_RULE], span[semconv.TM_ROUTE_TIER]) == (REMOTE, "reasoning-remote",
                                                                                     "remote")  # fmt: skip
        model, span = app.ask(LOOKUP_QUESTION)  # no retrieval reported: the rule's passages condition fails
        assert (model, span[semconv.TM_ROUTE_INTENT]) == (LARGE, "lookup") and semconv.TM_ROUTE_RULE not in span
        assert app.instrumentor.quota_client().intents.version == first_version  # type: ignore[union-attr]

        policy.write_text(_policy('"是什么", "多少", "几天"'), encoding="utf-8")
        assert wait_for(lambda: _served_version(serve) != first_version, timeout=60)
        assert app.ask(OTHER_QUESTION, passages=2, top_score=0.7)[0] == LARGE  # classified with what it held
        model, span = app.ask(OTHER_QUESTION, passages=2, top_score=0.7)  # the new document's intents
        assert (model, span[semconv.TM_ROUTE_INTENT], span[semconv.TM_ROUTE_RULE]) == (SMALL, "lookup",
                                                                                       "short-lookup")  # fmt: skip
        assert app.instrumentor.quota_client().intents.version == _served_version(serve)  # type: ignore[union-attr]
    finally:
        app.close()
        serve.stop()
