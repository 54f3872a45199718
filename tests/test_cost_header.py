"""X-Tokenmeter-Cost: a real Starlette app behind the identity middleware, calling the real openai SDK against the
local OpenAI-compatible server; the header says what the request's finished calls cost, to the last digit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai_server import SERVER_PROMPT_TOKENS, OpenAICompatibleServer, openai_usage
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route
from telemetry_fixtures import Telemetry, make_telemetry

import tokenmeter
from tokenmeter.catalog import ModelCatalog
from tokenmeter.instrumentation.asgi import IdentityMiddleware
from tokenmeter.instrumentation.instrumentor import TokenmeterInstrumentor
from tokenmeter.instrumentation.request_costs import cost_header
from tokenmeter.pricing import UNPRICED, Cost
from tokenmeter.settings import Settings
from tokenmeter.tokenizers import TokenizerRegistry

pytestmark = pytest.mark.usefixtures("no_service_name")

CATALOG = """\
- match: tm-chat*
  provider: openai
  price: {input: "2.00", output: "8.00", cached_input: "0.50", per: 1M, currency: CNY}
- match: tm-usd*
  provider: openai
  price: {input: "1.25", output: "10.00", per: 1M, currency: USD}
- match: tm-local*
  price: {input: "0.30", output: "0.60", per: 1M, currency: CNY, virtual: true}
"""
CACHED = 30  # of the server's SERVER_PROMPT_TOKENS (41) input tokens, cache reads


def per_million(units: int) -> Decimal:
    return Decimal(units) / 1_000_000


# Hand-computed: (41 - 30) x 2.00 + 30 x 0.50 + completion x 8.00 per 1M tokens, and so on.
CHAT_100 = per_million((SERVER_PROMPT_TOKENS - CACHED) * 200 + CACHED * 50 + 100 * 800) / 100
USD_7 = per_million(SERVER_PROMPT_TOKENS * 125 + 7 * 1000) / 100
LOCAL_9 = per_million(SERVER_PROMPT_TOKENS * 30 + 9 * 60) / 100


class MeteredApp:
    """The instrumented process: tokenmeter with a catalog file, the SDK clients, a Starlette app."""

    def __init__(self, server: OpenAICompatibleServer, catalog_path: Path, *, cost_header: bool) -> None:
        self.telemetry: Telemetry = make_telemetry()
        self.instrumentor = TokenmeterInstrumentor()
        self.instrumentor.instrument(
            tracer_provider=self.telemetry.tracer_provider,
            meter_provider=self.telemetry.meter_provider,
            settings=Settings(models=catalog_path, local_count="fallback"),
            registry=TokenizerRegistry(ModelCatalog.load(catalog_path)),
            skip_dep_check=True,
        )
        self.sync_client = openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)
        self.async_client = openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)
        routes = [Route(path, endpoint) for path, endpoint in (("/ask", self.ask), ("/many", self.many),
                  ("/stream", self.stream), ("/none", self.none), ("/failed", self.failed))]  # fmt: skip
        self.asgi = IdentityMiddleware(Starlette(routes=routes), settings=Settings(cost_header=cost_header))

    def close(self) -> None:
        self.instrumentor.uninstrument()

    async def ask(self, _request: Request) -> JSONResponse:
        reply = await self.async_client.chat.completions.create(model="tm-chat-1", messages=_QUESTION, max_tokens=100)
        return JSONResponse({"model": reply.model})

    def many(self, _request: Request) -> JSONResponse:
        """A sync endpoint (Starlette runs it in a worker thread): four models, one of them unpriced."""
        for model, completion in (("tm-chat-1", 100), ("tm-usd-1", 7), ("tm-local-1", 9), ("zz-unlisted", 5)):
            self.sync_client.chat.completions.create(model=model, messages=_QUESTION, max_tokens=completion)
        return JSONResponse({"calls": 4})

    async def stream(self, _request: Request) -> StreamingResponse:
        chunks = await self.async_client.chat.completions.create(
            model="tm-chat-1", messages=_QUESTION, max_tokens=100, stream=True, stream_options={"include_usage": True}
        )

        async def body() -> AsyncIterator[str]:
            async for chunk in chunks:
                yield "".join(choice.delta.content or "" for choice in chunk.choices)

        return StreamingResponse(body(), media_type="text/plain")

    async def none(self, _request: Request) -> PlainTextResponse:
        return PlainTextResponse("no LLM call here")

    async def failed(self, _request: Request) -> PlainTextResponse:
        with pytest.raises(openai.InternalServerError):
            await self.async_client.chat.completions.create(model="fail-500", messages=_QUESTION)
        return PlainTextResponse("the model failed")

    def get(self, path: str) -> httpx.Response:
        async def request() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.asgi, client=("127.0.0.1", 50000))
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
                return await client.get(path, headers={"X-Forwarded-User": "alice"})

        return asyncio.run(request())


_QUESTION = [{"role": "user", "content": "人工智能是什么？"}]


@pytest.fixture
def catalog_path(tmp_path: Path) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(CATALOG, encoding="utf-8")
    return path


@pytest.fixture
def cached_server() -> Iterator[OpenAICompatibleServer]:
    with OpenAICompatibleServer(usage_fields=openai_usage(cached=CACHED)) as server:
        yield server


@pytest.fixture
def app(cached_server: OpenAICompatibleServer, catalog_path: Path) -> Iterator[MeteredApp]:
    metered = MeteredApp(cached_server, catalog_path, cost_header=True)
    try:
        yield metered
    finally:
        metered.close()


def test_one_call_with_cache_reads_costs_exactly(app: MeteredApp) -> None:
    response = app.get("/ask")
    assert response.status_code == 200
    assert Decimal("0.000837") == CHAT_100  # (11 x 2.00 + 30 x 0.50 + 100 x 8.00) / 1M
    assert response.headers["x-tokenmeter-cost"] == "0.000837 CNY"
    assert tokenmeter.flush(timeout_s=30)
    [span] = app.telemetry.spans()
    assert Decimal(str(span.attributes["tokenmeter.cost"])) == CHAT_100  # the header is the span's cost


def test_currencies_virtual_and_unpriced_from_a_sync_endpoint(app: MeteredApp) -> None:
    response = app.get("/many")
    assert response.status_code == 200
    assert (Decimal("0.00012125"), Decimal("0.0000177")) == (USD_7, LOCAL_9)
    assert response.headers["x-tokenmeter-cost"] == "0.000837 CNY, 0.0000177 CNY virtual, 0.00012125 USD, unpriced"


def test_a_streamed_answer_is_not_known_when_the_headers_go(app: MeteredApp) -> None:
    response = app.get("/stream")
    assert response.status_code == 200 and response.text
    assert "x-tokenmeter-cost" not in response.headers
    assert tokenmeter.flush(timeout_s=30)
    [span] = app.telemetry.spans()
    assert Decimal(str(span.attributes["tokenmeter.cost"])) == CHAT_100  # billed all the same, after the headers


def test_no_call_or_nothing_billed_means_no_header(app: MeteredApp) -> None:
    assert "x-tokenmeter-cost" not in app.get("/none").headers
    failed = app.get("/failed")
    assert failed.status_code == 200
    assert "x-tokenmeter-cost" not in failed.headers


def test_off_unless_asked(cached_server: OpenAICompatibleServer, catalog_path: Path) -> None:
    metered = MeteredApp(cached_server, catalog_path, cost_header=False)
    try:
        response = metered.get("/ask")
    finally:
        metered.close()
    assert response.status_code == 200
    assert "x-tokenmeter-cost" not in response.headers
    assert Settings().cost_header is False  # the default


def test_the_setting_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENMETER_COST_HEADER", "true")
    assert Settings().cost_header is True


@pytest.mark.parametrize(
    ("costs", "pending", "header"),
    [
        ([Cost(Decimal("0.0000006"), "CNY", False, False)], 0, "0.0000006 CNY"),  # never 6E-7
        ([Cost(Decimal("1.50"), "USD", False, False), Cost(Decimal("2.5"), "USD", False, False)], 0, "4 USD"),
        ([Cost(Decimal(0), "CNY", False, False)], 0, "0 CNY"),  # an answer-cache hit's
        ([UNPRICED, UNPRICED], 0, "unpriced"),
        ([Cost(Decimal("0.1"), "CNY", False, False)], 1, "0.1 CNY, pending"),
        ([None], 0, ""),  # nothing billed (failed before the server answered): no header
    ],
)
def test_header_text(costs: list[Any], pending: int, header: str) -> None:
    assert cost_header(costs, pending) == header
