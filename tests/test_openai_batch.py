"""The OpenAI Batch API metered and checked: uploads, batches.create / retrieve and the result files' content.

The real openai SDK (sync and async) against a local Batch API server (tests/support/openai_batch_server.py), the
real OTel SDK with in-memory readers, and, for the quota gate, the loopback enforcer stand-in.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openai
import pytest
from deciding_enforcer import DecidingEnforcer
from openai_batch_server import COMPLETED_AT, CREATED_AT, OpenAIBatchServer, ServedLine
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.trace import StatusCode
from telemetry_fixtures import Telemetry, make_telemetry

import tokenmeter
from tokenmeter import semconv
from tokenmeter.catalog import CatalogError, ModelCatalog
from tokenmeter.instrumentation.batch_lines import with_models_swapped
from tokenmeter.instrumentation.instrumentor import TokenmeterInstrumentor
from tokenmeter.instrumentation.quota.errors import QuotaDegraded, QuotaExceeded
from tokenmeter.pricing import PER_1M, Price, PriceTier, TokenCounts, cost_of_tokens
from tokenmeter.settings import Settings

MODEL = "o-test"  # the server reports reasoning for models named o*
CHEAP = "o-test-mini"
PLAIN = "plain-model"  # a price without a batch share: batch calls at the standard rates
CHAT = "/v1/chat/completions"
# MODEL's price changed after the test batches were created (CREATED_AT) and before they are read (now).
CATALOG = f"""
- match: {MODEL}
  price:
    - {{input: "2", cached_input: "0.5", output: "8", reasoning: "12", per: 1M, currency: USD, batch: "0.5"}}
    - {{from: 2026-01-01T12:00:00Z, input: "4", output: "16", per: 1M, currency: USD, batch: "0.5"}}
- match: {CHEAP}
  price: {{input: "1", output: "2", per: 1M, currency: USD, batch: "0.5"}}
- match: {PLAIN}
  price: {{input: "3", output: "6", per: 1M, currency: USD}}
"""


@pytest.fixture
def models(tmp_path: Path) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(CATALOG, encoding="utf-8")
    return path


def instrument(models: Path, **settings: Any) -> tuple[TokenmeterInstrumentor, Telemetry]:
    telemetry = make_telemetry()
    instrumentor = TokenmeterInstrumentor()
    instrumentor.instrument(
        tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider,
        settings=Settings(**{"hash_key": "test-hash-key", "local_count": "fallback", "models": models, **settings}),
        skip_dep_check=True,
    )  # fmt: skip
    return instrumentor, telemetry


@pytest.fixture
def instrumented(models: Path) -> Iterator[Telemetry]:
    instrumentor, telemetry = instrument(models)
    try:
        yield telemetry
    finally:
        instrumentor.uninstrument()


@pytest.fixture
def server() -> Iterator[OpenAIBatchServer]:
    with OpenAIBatchServer() as running:
        yield running


def client_for(server: OpenAIBatchServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)


def async_client_for(server: OpenAIBatchServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)


def body_for(endpoint: str, model: str, n: int, output: int | None) -> dict[str, Any]:
    limit = {} if output is None else {"max_output_tokens" if endpoint == "/v1/responses" else "max_tokens": output}
    if endpoint == "/v1/embeddings":
        return {"model": model, "input": f"第 {n} 段文字"}
    if endpoint == "/v1/completions":
        return {"model": model, "prompt": f"Say {n} in Chinese:", **limit}
    if endpoint == "/v1/responses":
        return {"model": model, "input": f"什么是 {n}？", **limit}
    return {"model": model, "messages": [{"role": "user", "content": f"什么是 {n}？ Explain briefly."}], **limit}


def input_file(prefix: str, models: list[str], endpoint: str = CHAT, outputs: list[int | None] | None = None) -> bytes:
    """One request line per model (custom ids ``{prefix}:{n}``), output limits 20, 21, ... unless given."""
    limits = outputs if outputs is not None else [20 + n for n in range(len(models))]
    lines = [{"custom_id": f"{prefix}:{n}", "method": "POST", "url": endpoint,
              "body": body_for(endpoint, model, n, limits[n])} for n, model in enumerate(models)]  # fmt: skip
    return "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode()


def submit(client: openai.OpenAI, data: bytes, endpoint: str = CHAT, **extra: Any) -> Any:
    uploaded = client.files.create(file=("requests.jsonl", io.BytesIO(data)), purpose="batch")
    return client.batches.create(input_file_id=uploaded.id, endpoint=endpoint, completion_window="24h", **extra)


def read_results(client: openai.OpenAI, batch_id: str) -> list[bytes]:
    batch = client.batches.retrieve(batch_id)
    files = [file_id for file_id in (batch.output_file_id, batch.error_file_id) if file_id]
    return [client.files.content(file_id).content for file_id in files]


def spans_by_custom_id(telemetry: Telemetry) -> dict[str, dict[str, Any]]:
    """Each result's span attributes, keyed by the custom id its response id carries (cmpl-/resp-<custom id>)."""
    assert tokenmeter.flush(5)
    spans = {}
    for span in telemetry.spans():
        attributes = {"name": span.name, "status": span.status.status_code, "start": span.start_time,
                      "end": span.end_time, **dict(span.attributes or {})}  # fmt: skip
        response_id = attributes.get(semconv.GEN_AI_RESPONSE_ID, "")
        key = response_id.split("-", 1)[1] if response_id else f"error-{len(spans)}"
        assert key not in spans, f"{key} metered twice"
        spans[key] = attributes
    return spans


def batch_cost(price: Price, line: ServedLine) -> Decimal:
    """The reference cost: each rate halved, by hand (the price's batch share is 0.5)."""
    rate = {"input": price.input, "cached": price.cached_input or price.input, "output": price.output,
            "reasoning": price.reasoning or price.output}  # fmt: skip
    full = ((line.input_tokens - line.cached_tokens) * rate["input"] + line.cached_tokens * rate["cached"]
            + (line.output_tokens - line.reasoning_tokens) * rate["output"]
            + line.reasoning_tokens * rate["reasoning"])  # fmt: skip
    return full * Decimal("0.5") / PER_1M


def token_totals(telemetry: Telemetry) -> dict[tuple[str | None, str, str | None], int]:
    """Usage counter totals by (user, token type, cache or phase part)."""
    assert tokenmeter.flush(5)
    totals: dict[tuple[str | None, str, str | None], int] = {}
    for attributes, value in telemetry.points(semconv.METRIC_USAGE_TOKENS):
        part = attributes.get(semconv.GEN_AI_TOKEN_CACHE, attributes.get(semconv.GEN_AI_TOKEN_PHASE))
        key = (attributes.get(semconv.ENDUSER_ID), attributes[semconv.GEN_AI_TOKEN_TYPE], part)
        totals[key] = totals.get(key, 0) + value
    return {key: value for key, value in totals.items() if value}


def served_totals(lines: list[ServedLine], user_of: dict[str, str]) -> dict[tuple[str | None, str, str | None], int]:
    """What the server counted, in the counters' terms: input by cache part, output by phase."""
    totals: dict[tuple[str | None, str, str | None], int] = {}
    for line in lines:
        if line.status != 200:
            continue
        user = user_of[line.custom_id.split(":")[0]]
        parts = {("input", "none"): line.input_tokens - line.cached_tokens, ("input", "read"): line.cached_tokens,
                 ("output", "response"): line.output_tokens - line.reasoning_tokens,
                 ("output", "reasoning"): line.reasoning_tokens}  # fmt: skip
        for (kind, part), value in parts.items():
            totals[(user, kind, part)] = totals.get((user, kind, part), 0) + value
    return {key: value for key, value in totals.items() if value}


# --- results: one metered call per line ------------------------------------------------------------------------


def test_each_result_line_is_a_call_priced_at_the_batch_share_valid_when_the_batch_was_created(
    instrumented: Telemetry, server: OpenAIBatchServer
) -> None:
    client = client_for(server)
    with tokenmeter.attribution(user="alice", department="finance", app="kb"):
        batch = submit(client, input_file("a", [MODEL, MODEL, MODEL, PLAIN]))
        contents = read_results(client, batch.id)
    assert len(contents) == 1 and len(contents[0].splitlines()) == 4  # the caller gets the file as it was
    spans = spans_by_custom_id(instrumented)
    assert sorted(spans) == ["a:0", "a:1", "a:2", "a:3"]
    catalog_price = Price(Decimal("2"), Decimal("8"), PER_1M, "USD", cached_input=Decimal("0.5"),
                          reasoning=Decimal("12"), batch=Decimal("0.5"))  # fmt: skip
    for custom_id in ("a:0", "a:1", "a:2"):
        line, span = server.state.served[custom_id], spans[custom_id]
        assert span["name"] == f"chat {MODEL}"
        assert span[semconv.GEN_AI_OPERATION_NAME] == "chat" and span[semconv.GEN_AI_PROVIDER_NAME] == "openai"
        assert span[semconv.GEN_AI_REQUEST_MODEL] == span[semconv.GEN_AI_RESPONSE_MODEL] == MODEL
        assert span[semconv.TM_BATCH_ID] == batch.id
        assert span[semconv.TM_USAGE_SOURCE] == "server"
        assert span[semconv.GEN_AI_USAGE_INPUT_TOKENS] == line.input_tokens
        assert span[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == line.output_tokens
        assert span[semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == line.cached_tokens
        assert span[semconv.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS] == line.reasoning_tokens
        assert (span[semconv.ENDUSER_ID], span[semconv.TM_DEPARTMENT], span[semconv.TM_APP]) == ("alice", "finance",
                                                                                                   "kb")  # fmt: skip
        # The first price (valid when the batch was created), every rate at half: not the later one valid now.
        assert Decimal(span[semconv.TM_COST]) == batch_cost(catalog_price, line)
        assert semconv.TM_PRICE_FROM not in span
        assert (span["start"], span["end"]) == (CREATED_AT * 10**9, COMPLETED_AT * 10**9)  # when OpenAI ran it
        assert span[semconv.TM_COST_CURRENCY] == "USD"
    # The cached line and the reasoning line are really there (the server's rule: every 3rd, every 2nd of o*).
    assert server.state.served["a:2"].cached_tokens > 0 and server.state.served["a:1"].reasoning_tokens > 0
    plain, line = spans["a:3"], server.state.served["a:3"]
    assert Decimal(plain[semconv.TM_COST]) == (line.input_tokens * 3 + line.output_tokens * 6) / Decimal(PER_1M)
    costs = sum(Decimal(span[semconv.TM_COST]) for span in spans.values())
    assert sum(value for _, value in instrumented.points(semconv.METRIC_USAGE_COST)) == costs * 10**9
    calls = instrumented.points(semconv.METRIC_USAGE_CALLS)
    assert sum(value for _, value in calls) == 4


def test_the_batch_share_applies_to_every_rate_and_tier() -> None:
    tiers = (PriceTier(500, Decimal("1"), Decimal("3")), PriceTier(None, Decimal("2"), Decimal("6"), Decimal("0.4")))
    tiered = Price(Decimal("1"), Decimal("3"), PER_1M, "USD", tiers=tiers, batch=Decimal("0.25"))
    tokens = TokenCounts(1000, 100, cache_read=600)  # the second tier: 400 x 2 + 600 x 0.4 + 100 x 6 per 1M
    assert cost_of_tokens(tiered, tokens).amount == Decimal("0.00164")
    assert cost_of_tokens(tiered, tokens, batch=True).amount == Decimal("0.00041")
    no_share = Price(Decimal("2"), Decimal("6"), PER_1M, "USD")
    assert cost_of_tokens(no_share, TokenCounts(1000, 100), batch=True).amount == Decimal("0.0026")  # standard


@pytest.mark.parametrize("share", ['"0"', '"1.5"', "-1", '"half"'])
def test_a_batch_share_outside_0_to_1_is_refused_with_the_fix(tmp_path: Path, share: str) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(f'- match: m\n  price: {{input: "1", output: "2", per: 1M, currency: USD, batch: {share}}}\n')
    with pytest.raises(CatalogError) as raised:
        ModelCatalog.load(path)
    assert "price.batch must be the share of the standard rates a batch call costs, above 0 and at most 1" in str(
        raised.value
    )
    with pytest.raises(ValueError, match=r"Price\.batch must be a Decimal above 0 and at most 1"):
        Price(Decimal("1"), Decimal("2"), PER_1M, "USD", batch=Decimal("0"))


def test_the_builtin_openai_prices_have_the_batch_share_where_the_copy_lists_half() -> None:
    catalog = ModelCatalog.load(None)
    names = ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-5", "o3", "o4-mini", "gpt-4", "gpt-4-turbo", "gpt-3.5-turbo",
             "gpt-4-vision-preview", "gpt-3.5-turbo-0613", "text-embedding-3-small")  # fmt: skip
    shares = {model: getattr(catalog.price_for(model), "batch", None) for model in names}
    assert shares == {"gpt-4o": Decimal("0.5"), "gpt-4o-mini": Decimal("0.5"), "gpt-4.1": Decimal("0.5"),
                      "gpt-5": Decimal("0.5"), "o3": Decimal("0.5"), "o4-mini": Decimal("0.5"),
                      "gpt-4": Decimal("0.5"), "gpt-4-turbo": Decimal("0.5"), "gpt-3.5-turbo": Decimal("0.5"),
                      "gpt-4-vision-preview": None, "gpt-3.5-turbo-0613": None,
                      "text-embedding-3-small": None}  # fmt: skip


@pytest.mark.parametrize(
    ("endpoint", "operation", "model"),
    [
        ("/v1/completions", "text_completion", MODEL),
        ("/v1/embeddings", "embeddings", PLAIN),
        ("/v1/responses", "chat", MODEL),
    ],
)
def test_other_endpoints_are_metered_as_their_operation(
    instrumented: Telemetry, server: OpenAIBatchServer, endpoint: str, operation: str, model: str
) -> None:
    client = client_for(server)
    with tokenmeter.attribution(user="bob"):
        batch = submit(client, input_file("e", [model, model], endpoint), endpoint)
        read_results(client, batch.id)
    assert tokenmeter.flush(5)
    embeddings = operation == "embeddings"
    served = list(server.state.served.values())
    spans = [dict(span.attributes or {}) for span in instrumented.spans()]
    assert [span.name for span in instrumented.spans()] == [f"{operation} {model}"] * 2
    assert {(s[semconv.GEN_AI_OPERATION_NAME], s[semconv.TM_BATCH_ID]) for s in spans} == {(operation, batch.id)}
    # An embeddings list has no id: the calls are compared by their counts (input, output, reasoning).
    assert sorted((s[semconv.GEN_AI_USAGE_INPUT_TOKENS], s.get(semconv.GEN_AI_USAGE_OUTPUT_TOKENS),
                   s.get(semconv.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS)) for s in spans) == sorted(
        (line.input_tokens, None if embeddings else line.output_tokens, None if embeddings else line.reasoning_tokens)
        for line in served)  # fmt: skip
    if embeddings:  # no output, and no cache split reported: one point per call
        assert token_totals(instrumented) == {("bob", "input", None): sum(line.input_tokens for line in served)}
    else:
        assert token_totals(instrumented) == served_totals(served, {"e": "bob"})


def test_error_lines_are_failed_calls_that_bill_nothing(instrumented: Telemetry, server: OpenAIBatchServer) -> None:
    client = client_for(server)
    with tokenmeter.attribution(user="carol"):
        batch = submit(client, input_file("f", [MODEL, "fail-400", "fail-expired"]))
        assert batch.error_file_id is not None
        contents = read_results(client, batch.id)
    assert [len(content.splitlines()) for content in contents] == [1, 2]
    assert tokenmeter.flush(5)
    failed = sorted(((s.attributes or {}).get(semconv.ERROR_TYPE), s.status.status_code) for s in instrumented.spans()
                    if (s.attributes or {}).get(semconv.ERROR_TYPE))  # fmt: skip
    assert failed == [("400", StatusCode.ERROR), ("batch_expired", StatusCode.ERROR)]
    for span in instrumented.spans():
        attributes = span.attributes or {}
        if semconv.ERROR_TYPE in attributes:
            assert semconv.GEN_AI_USAGE_INPUT_TOKENS not in attributes and semconv.TM_COST not in attributes
            assert attributes[semconv.TM_BATCH_ID] == batch.id and attributes[semconv.ENDUSER_ID] == "carol"
    line = server.state.served["f:0"]
    assert token_totals(instrumented) == served_totals([line], {"f": "carol"})
    errors = [attributes.get(semconv.ERROR_TYPE) for attributes, value in
              instrumented.points(semconv.METRIC_USAGE_CALLS) for _ in range(int(value))]  # fmt: skip
    assert sorted(errors, key=str) == ["400", None, "batch_expired"]  # the success, and the two failures


def test_a_file_that_is_not_a_batchs_results_is_untouched(instrumented: Telemetry, server: OpenAIBatchServer) -> None:
    client = client_for(server)
    requests = input_file("n", [MODEL])  # has custom_id, no response: a batch's input, not its results
    notes = "第一行\nsecond line\n".encode()
    for data, purpose in ((requests, "batch"), (notes, "user_data"), (b"", "user_data")):
        uploaded = client.files.create(file=("f.jsonl", data), purpose=purpose)  # type: ignore[arg-type]
        assert client.files.content(uploaded.id).content == data
    assert tokenmeter.flush(5)
    assert instrumented.spans() == ()
    assert instrumented.points(semconv.METRIC_USAGE_CALLS) == []


@pytest.mark.filterwarnings("ignore:The `.content\\(\\)` method should be used instead:DeprecationWarning")
def test_results_read_twice_or_three_ways_are_metered_once(instrumented: Telemetry, server: OpenAIBatchServer) -> None:
    client = client_for(server)
    batch = submit(client, input_file("t", [MODEL, MODEL]))
    batch = client.batches.retrieve(batch.id)
    with suppress_instrumentation():  # how a second process that reads the same results avoids counting them again
        client.files.content(batch.output_file_id)
    assert tokenmeter.flush(5) and instrumented.spans() == ()
    first = client.files.content(batch.output_file_id).content
    assert client.files.with_raw_response.content(batch.output_file_id).content == first
    assert client.files.retrieve_content(batch.output_file_id) == first.decode()
    assert sorted(spans_by_custom_id(instrumented)) == ["t:0", "t:1"]


def test_a_streamed_download_is_left_to_the_caller(instrumented: Telemetry, server: OpenAIBatchServer) -> None:
    client = client_for(server)
    batch = client.batches.retrieve(submit(client, input_file("s", [MODEL])).id)
    with client.files.with_streaming_response.content(batch.output_file_id) as response:
        data = response.read()
    assert json.loads(data)["custom_id"] == "s:0"
    assert tokenmeter.flush(5)
    assert instrumented.spans() == ()  # its body was the caller's to read: not read here, not metered
    client.files.content(batch.output_file_id)  # read whole later: metered then
    assert sorted(spans_by_custom_id(instrumented)) == ["s:0"]


async def test_the_async_client(instrumented: Telemetry, server: OpenAIBatchServer) -> None:
    client = async_client_for(server)
    with tokenmeter.attribution(user="dora", department="research"):
        uploaded = await client.files.create(file=("r.jsonl", input_file("y", [MODEL, MODEL])), purpose="batch")
        batch = await client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")
    with tokenmeter.attribution(user="someone-else"):
        batch = await client.batches.retrieve(batch.id)
        content = await client.files.content(batch.output_file_id)
    await client.close()
    assert len(content.content.splitlines()) == 2
    spans = spans_by_custom_id(instrumented)
    assert sorted(spans) == ["y:0", "y:1"]
    assert {(s[semconv.ENDUSER_ID], s[semconv.TM_DEPARTMENT], s[semconv.TM_BATCH_ID]) for s in spans.values()} == {
        ("dora", "research", batch.id)}  # fmt: skip
    assert token_totals(instrumented) == served_totals(list(server.state.served.values()), {"y": "dora"})


# --- attribution: the submitter's ------------------------------------------------------------------------------


def test_results_are_the_submitters_also_in_a_process_that_did_not_submit(
    models: Path, server: OpenAIBatchServer
) -> None:
    client = client_for(server)
    instrumentor, telemetry = instrument(models)
    try:
        with tokenmeter.attribution(user="alice", department="finance", session="conv-7"):
            own = submit(client, input_file("m", [MODEL]), metadata={"job": "nightly"})
            other = submit(client, input_file("o", [MODEL]))
            unknown = submit(client, input_file("u", [MODEL]))
        with tokenmeter.attribution(user="bob", department="sales"):
            read_results(client, own.id)  # the same process: the submitter it remembers
    finally:
        instrumentor.uninstrument()
    unknown_output = server.state.batches[unknown.id]["output_file_id"]
    # What the server received: the app's metadata, and the submitter beside it.
    assert server.state.batches[own.id]["metadata"] == {"job": "nightly", "tokenmeter.user": "alice",
        "tokenmeter.department": "finance", "tokenmeter.conversation": "conv-7"}  # fmt: skip
    spans = spans_by_custom_id(telemetry)
    assert (spans["m:0"][semconv.ENDUSER_ID], spans["m:0"][semconv.TM_DEPARTMENT]) == ("alice", "finance")
    assert spans["m:0"][semconv.GEN_AI_CONVERSATION_ID] == "conv-7"
    # Another process (a new instrumentation remembers nothing): a retrieved batch's metadata names the submitter;
    # a file read without its batch is the reader's.
    for read, expected in ((lambda: read_results(client, other.id), ("alice", "finance")),
                           (lambda: client.files.content(unknown_output), ("bob", "sales"))):  # fmt: skip
        instrumentor, telemetry = instrument(models)
        try:
            with tokenmeter.attribution(user="bob", department="sales"):
                read()
        finally:
            instrumentor.uninstrument()
        (span,) = spans_by_custom_id(telemetry).values()
        assert (span[semconv.ENDUSER_ID], span[semconv.TM_DEPARTMENT]) == expected
    unknown_span = span
    assert (unknown_span[semconv.ENDUSER_ID], unknown_span[semconv.TM_DEPARTMENT]) == ("bob", "sales")
    assert unknown_span[semconv.TM_BATCH_ID] == unknown_output  # its batch unknown: the file it was read from


def test_metadata_without_room_is_sent_as_the_app_wrote_it(instrumented: Telemetry, server: OpenAIBatchServer) -> None:
    full = {f"key{n}": "v" for n in range(16)}
    client = client_for(server)
    with tokenmeter.attribution(user="alice"):
        batch = submit(client, input_file("x", [MODEL]), metadata=full)
    assert server.state.batches[batch.id]["metadata"] == full
    with tokenmeter.attribution(user="bob"):
        read_results(client, batch.id)
    assert spans_by_custom_id(instrumented)["x:0"][semconv.ENDUSER_ID] == "alice"  # remembered in this process


# --- the quota gate at submission ------------------------------------------------------------------------------

DECISIONS = {
    "dave": {"decision": "deny", "budget": "dave-all", "reason": "over budget"},
    "erin": {"decision": "degrade", "budget": "erin-all", "reason": "over budget"},
    "carol": {"decision": "downgrade", "requested_model": MODEL, "effective_model": CHEAP},
}


def test_deny_and_degrade_stop_the_batch_before_it_is_created(models: Path, server: OpenAIBatchServer) -> None:
    enforcer = DecidingEnforcer(DECISIONS)
    instrumentor, telemetry = instrument(models, enforcer_url=enforcer.url, enforcer_cache_seconds=0)
    client = client_for(server)
    try:
        with tokenmeter.attribution(user="dave"), pytest.raises(QuotaExceeded):
            submit(client, input_file("d", [MODEL, MODEL], outputs=[100, 50]))
        with tokenmeter.attribution(user="erin"), pytest.raises(QuotaDegraded):
            asyncio.run(_submit_async(server, input_file("e", [MODEL]), CHAT))
    finally:
        instrumentor.uninstrument()
        enforcer.close()
    assert server.state.batches == {}  # nothing was created
    assert [method for method, path in server.state.requests if "content" in path] == []  # uploads remembered
    # The check of a model's requests: their counted input, and their output limits summed.
    assert [(c["user"], c["model"], c.get("max_output_tokens")) for c in enforcer.checks] == [
        ("dave", MODEL, 150), ("erin", MODEL, 20)]  # fmt: skip
    assert enforcer.checks[0]["input_tokens"] > enforcer.checks[1]["input_tokens"] > 0  # two requests against one
    assert tokenmeter.flush(5)
    assert telemetry.spans() == ()  # a checked submission is no call: no span, no usage
    assert telemetry.points(semconv.METRIC_USAGE_CALLS) == []
    decisions = [attributes[semconv.TM_QUOTA_DECISION] for attributes, value in
                 telemetry.points(semconv.METRIC_QUOTA_DECISIONS) for _ in range(int(value))]  # fmt: skip
    assert sorted(decisions) == ["degrade", "deny"]


async def _submit_async(server: OpenAIBatchServer, data: bytes, endpoint: str) -> Any:
    client = async_client_for(server)
    try:
        uploaded = await client.files.create(file=("r.jsonl", data), purpose="batch")
        return await client.batches.create(input_file_id=uploaded.id, endpoint=endpoint, completion_window="24h")
    finally:
        await client.close()


def test_a_downgrade_sends_the_batch_to_the_cheaper_model(models: Path, server: OpenAIBatchServer) -> None:
    enforcer = DecidingEnforcer(DECISIONS)
    client = client_for(server)
    # Uploaded before tokenmeter was there: the check downloads the input with the same client.
    uploaded = client.files.create(file=("in.jsonl", input_file("c", [MODEL, MODEL])), purpose="batch")
    instrumentor, telemetry = instrument(models, enforcer_url=enforcer.url, enforcer_cache_seconds=0)
    try:
        with tokenmeter.attribution(user="carol"):
            batch = client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")
            submitted_tokens = token_totals(telemetry)
            read_results(client, batch.id)
        with tokenmeter.attribution(user="carol"):  # the async client, its upload remembered
            downgraded_async = asyncio.run(_submit_async(server, input_file("ca", [MODEL]), CHAT))
        with tokenmeter.attribution(user="alice"):  # allowed: its batch goes as it was
            allowed = submit(client, input_file("k", [MODEL, PLAIN, PLAIN], outputs=[30, None, 10]))
    finally:
        instrumentor.uninstrument()
        enforcer.close()
    assert submitted_tokens == {}  # the submission counted nothing: the results do, when read
    assert ("GET", f"/v1/files/{uploaded.id}/content") in server.state.requests
    assert batch.input_file_id != uploaded.id
    sent = server.input_of(batch.id)
    assert [line["body"]["model"] for line in sent] == [CHEAP, CHEAP]
    original = [json.loads(raw) for raw in server.state.files[uploaded.id].data.splitlines()]
    assert [{**line, "body": {**line["body"], "model": MODEL}} for line in sent] == original  # only the model
    assert [line["body"]["model"] for line in server.input_of(downgraded_async.id)] == [CHEAP]
    assert [line["body"]["model"] for line in server.input_of(allowed.id)] == [MODEL, PLAIN, PLAIN]
    spans = spans_by_custom_id(telemetry)
    assert {spans[c][semconv.GEN_AI_REQUEST_MODEL] for c in ("c:0", "c:1")} == {CHEAP}
    # One check per model; a model whose requests do not all give an output limit: none (the policy's default).
    assert [(c["user"], c["model"], c.get("max_output_tokens")) for c in enforcer.checks] == [
        ("carol", MODEL, 41), ("carol", MODEL, 20), ("alice", MODEL, 30), ("alice", PLAIN, None)]  # fmt: skip


class ReservingEnforcer:
    """An enforcer stand-in that allows every check with a reservation of its own, and keeps what it received."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))) or b"{}")
                outer.received.append((self.path, body))
                answer = json.dumps({"decision": "allow", "reservation_id": f"r-{len(outer.received)}"}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def test_the_checks_reservations_are_released_once_the_batch_is_submitted(
    models: Path, server: OpenAIBatchServer
) -> None:
    enforcer = ReservingEnforcer()
    instrumentor, telemetry = instrument(models, enforcer_url=enforcer.url, enforcer_cache_seconds=0)
    try:
        with tokenmeter.attribution(user="alice"):
            submit(client_for(server), input_file("r", [MODEL, PLAIN]))
        quota = TokenmeterInstrumentor.quota_client()
        assert quota is not None
        quota.flush_sends()
        received = [(path, body.get("model") or body.get("reservation_id")) for path, body in enforcer.received]
    finally:
        instrumentor.uninstrument()
        enforcer.close()
    # Checked per model, then both reservations released: the batch's spend reaches the budget with its results.
    assert received == [("/v1/check", MODEL), ("/v1/check", PLAIN), ("/v1/release", "r-1"), ("/v1/release", "r-2")]
    assert len(server.state.batches) == 1
    assert tokenmeter.flush(5)
    assert telemetry.points(semconv.METRIC_USAGE_TOKENS) == []


def test_swapping_models_rewrites_only_their_lines() -> None:
    data = input_file("w", [MODEL, PLAIN, MODEL]) + b"not json\n"
    rewritten = with_models_swapped(data, {MODEL: CHEAP})
    lines = rewritten.splitlines()
    assert [json.loads(raw)["body"]["model"] for raw in lines[:3]] == [CHEAP, PLAIN, CHEAP]
    assert lines[1] == data.splitlines()[1] and lines[3] == b"not json"


# --- every user's total is what the server counted -------------------------------------------------------------


def test_every_users_total_equals_what_the_server_counted(models: Path) -> None:
    """Users submitting batches at once, from threads and asyncio tasks, sync and async clients; some results read
    by another user: each user's counter totals by token type (and cache / reasoning part) are the sum of what the
    server counted for that user's requests."""
    users = [f"user-{n}" for n in range(12)]
    with OpenAIBatchServer(complete_on="retrieve") as server:
        instrumentor, telemetry = instrument(models)
        try:
            threads = [threading.Thread(target=_sync_user, args=(server, user, n)) for n, user in enumerate(users)]
            for thread in threads:
                thread.start()
            asyncio.run(_async_users(server, users))
            for thread in threads:
                thread.join()
            assert tokenmeter.flush(10)
            served = list(server.state.served.values())
        finally:
            instrumentor.uninstrument()
    user_of = {**{f"{user}.s": user for user in users}, **{f"{user}.a": user for user in users}}
    assert len(served) == sum(3 + n % 4 for n in range(12)) + 2 * 12
    assert token_totals(telemetry) == served_totals(served, user_of)
    assert sum(value for _, value in telemetry.points(semconv.METRIC_USAGE_CALLS)) == len(served)


def _sync_user(server: OpenAIBatchServer, user: str, n: int) -> None:
    client = client_for(server)
    size = 3 + n % 4
    outputs: list[int | None] = [5 + (n * 7 + k) % 40 for k in range(size)]
    outputs[0] = None  # the server's default output size
    with tokenmeter.attribution(user=user, department=f"dept-{n % 3}"):
        batch = submit(client, input_file(f"{user}.s", [MODEL] * size, outputs=outputs))
        read_results(client, batch.id)


async def _async_users(server: OpenAIBatchServer, users: list[str]) -> None:
    client = async_client_for(server)

    async def one(user: str, n: int) -> None:
        with tokenmeter.attribution(user=user):
            uploaded = await client.files.create(file=("a.jsonl", input_file(f"{user}.a", [MODEL, PLAIN],
                                                                              outputs=[n + 1, 2 * n + 1])),
                                                 purpose="batch")  # fmt: skip
            batch = await client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")
        with tokenmeter.attribution(user="reader"):  # read by someone else: still the submitter's
            batch = await client.batches.retrieve(batch.id)
            await client.files.content(batch.output_file_id)

    await asyncio.gather(*(one(user, n) for n, user in enumerate(users)))
    await client.close()
