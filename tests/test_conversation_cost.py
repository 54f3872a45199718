"""`tokenmeter report --by conversation`: cost per conversation from llm_usage, ranked by cost within each currency,
from a chDB store and through a running serve's API (the same document); amounts exact to the last digit."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from otlp_requests import post
from rich.console import Console
from serve_process import ServeProcess
from stored_calls import call_attributes, calls_request, store_calls
from waiting import wait_for

from tokenmeter import semconv
from tokenmeter.cli.conversation_report import SOURCE_NOTE, render_table
from tokenmeter.cli.main import main
from tokenmeter.settings import get_settings
from tokenmeter.store import open_store
from tokenmeter.store.conversation_queries import ConversationCosts
from tokenmeter.store.migrations import RenderOptions, migrate

CONVERSATION = semconv.GEN_AI_CONVERSATION_ID


def at(day: int, hour: int = 0, minute: int = 0, month: int = 11) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)


def in_conversation(conversation: str | None, model: str, tokens: tuple[int, int], cost: str | None,
                    currency: str = "CNY", **more: Any) -> dict[str, Any]:  # fmt: skip
    extra = {CONVERSATION: conversation} if conversation else {}
    amount = None if cost is None else Decimal(cost)
    return call_attributes(model, *tokens, amount, currency, **extra, **more)


CALLS: list[tuple[datetime | int, dict[str, Any]]] = [
    (at(31, 23, month=10), in_conversation("conv-a", "qwen-plus", (9, 9), "0.3")),  # October: outside
    (at(3, 9), in_conversation("conv-a", "qwen-plus", (100, 10), "0.001")),
    (at(3, 9, 5), in_conversation("conv-a", "qwen-plus", (200, 20), "0.002")),
    (at(4, 8), in_conversation("conv-a", "qwen-plus", (1, 1), "0.0000006")),
    (at(4, 12), in_conversation("conv-a", "gpt-4o", (50, 5), "0.5", "USD")),
    (at(4, 13), {semconv.GEN_AI_OPERATION_NAME: "chat", semconv.GEN_AI_REQUEST_MODEL: "qwen-plus",
                 semconv.ENDUSER_ID: "alice", CONVERSATION: "conv-a", semconv.ERROR_TYPE: "500"}),  # failed: no bill
    (at(5, 10), in_conversation("conv-b", "qwen-max", (1000, 200), "0.01", user="bob")),
    (at(5, 11), {semconv.GEN_AI_OPERATION_NAME: "chat", semconv.GEN_AI_REQUEST_MODEL: "qwen-max",
                 semconv.ENDUSER_ID: "bob", CONVERSATION: "conv-b", semconv.ERROR_TYPE: "QuotaExceeded"}),  # refused
    (at(6), in_conversation("conv-c", "qwen-plus", (10, 10), "0.0015")),
    (at(7), in_conversation("conv-c", "qwen-plus", (10, 10), "0.001", user="carol", **{semconv.TM_APP: "agent"})),
    (at(8), in_conversation("conv-d", "my-local-llm", (500, 100), None)),
    (at(9), in_conversation("conv-e", "qwen2.5-7b", (30, 30), "0.0009", virtual=True)),
    (at(10), in_conversation(None, "qwen-plus", (40, 4), "0.004")),
    (at(10, 1), in_conversation(None, "qwen-plus", (40, 4), "0.004")),
]  # fmt: skip
RESENT = [CALLS[6]]  # conv-b's call, sent again by a retrying exporter: one row


def row(conversation: str, user: str, calls: int, tokens: tuple[int, int], cost: str | None, first: datetime,
        last: datetime, app: str = "kb-chat") -> dict[str, Any]:  # fmt: skip
    return {"conversation": conversation, "users": 1, "user": user, "apps": 1, "app": app, "calls": calls,
            "input_tokens": tokens[0], "output_tokens": tokens[1], "cost": cost, "first": first.isoformat(),
            "last": last.isoformat()}  # fmt: skip


def section(currency: str | None, virtual: bool, conversations: int, calls: int, tokens: tuple[int, int],
            cost: str | None, rows: list[dict[str, Any]]) -> dict[str, Any]:  # fmt: skip
    return {"currency": currency, "virtual": virtual, "conversations": conversations, "calls": calls,
            "input_tokens": tokens[0], "output_tokens": tokens[1], "cost": cost, "rows": rows}  # fmt: skip


EXPECTED_TOP_2 = {
    "by": "conversation",
    "period": "month",
    "start": "2026-11-01T00:00:00+00:00",
    "end": "2026-12-01T00:00:00+00:00",
    "limit": 2,
    "subject": None,
    "source": "llm_usage",
    "sections": [
        # 0.0015 + 0.001 (conv-c) + 0.001 + 0.002 + 0.0000006 (conv-a) + 0.01 (conv-b)
        section("CNY", False, 3, 6, (1321, 251), "0.0155006", [
            row("conv-b", "bob", 1, (1000, 200), "0.01", at(5, 10), at(5, 10)),
            row("conv-a", "alice", 3, (301, 31), "0.0030006", at(3, 9), at(4, 8)),
        ]),
        section("CNY", True, 1, 1, (30, 30), "0.0009", [row("conv-e", "alice", 1, (30, 30), "0.0009", at(9), at(9))]),
        section("USD", False, 1, 1, (50, 5), "0.5", [row("conv-a", "alice", 1, (50, 5), "0.5", at(4, 12), at(4, 12))]),
        section(None, False, 1, 1, (500, 100), None, [row("conv-d", "alice", 1, (500, 100), None, at(8), at(8))]),
    ],
    "without_conversation": [section("CNY", False, 0, 2, (80, 8), "0.008", [])],
}  # fmt: skip


@pytest.fixture(scope="module")
def store_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"chdb://{tmp_path_factory.mktemp('conversations') / 'chdb'}"
    client = open_store(url)
    try:
        migrate(client, RenderOptions())
        store_calls(client, CALLS)
        store_calls(client, RESENT, first_index=13)  # the same trace and span ids as CALLS[6]
    finally:
        client.close()
    return url


def report(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code = main(["report", "--by", "conversation", "--at", "2026-11-15", *argv])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def test_ranked_by_cost_within_each_currency(store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    document = json.loads(report(capsys, "--clickhouse-url", store_url, "--limit", "2", "--format", "json"))
    assert document == EXPECTED_TOP_2
    assert ConversationCosts.from_dict(document).to_dict() == document


def test_several_users_and_apps_in_one_conversation(store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    document = json.loads(report(capsys, "--clickhouse-url", store_url, "--format", "json"))
    [cny] = [item for item in document["sections"] if item["currency"] == "CNY" and not item["virtual"]]
    assert [item["conversation"] for item in cny["rows"]] == ["conv-b", "conv-a", "conv-c"]
    shared = cny["rows"][2]
    assert (shared["users"], shared["apps"], shared["calls"], shared["cost"]) == (2, 2, 2, "0.0025")
    assert shared["user"] in {"alice", "carol"}


def test_one_conversation(store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    document = json.loads(report(capsys, "--clickhouse-url", store_url, "--subject", "conv-a", "--format", "json"))
    assert document["subject"] == "conv-a"
    found = [
        (item["currency"], item["cost"], [r["conversation"] for r in item["rows"]]) for item in document["sections"]
    ]
    assert found == [("CNY", "0.0030006", ["conv-a"]), ("USD", "0.5", ["conv-a"])]
    assert document["without_conversation"] == []


def test_table_and_csv(store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    table = " ".join(report(capsys, "--clickhouse-url", store_url, "--limit", "2").split())
    assert "Cost per conversation, 2026-11 (month, UTC): CNY, the 2 costliest of 3" in table
    assert "0.0030006" in table and "CNY (virtual)" in table and "without a price" in table
    assert "Calls without a conversation id (CNY): 2 calls, 88 tokens, cost 0.008." in table
    assert " ".join(SOURCE_NOTE.split()) in table
    lines = report(capsys, "--clickhouse-url", store_url, "--limit", "1", "--format", "csv").splitlines()
    assert lines == [
        "conversation,period,currency,virtual,user,users,app,apps,calls,input_tokens,output_tokens,cost,first,last",
        "conv-b,2026-11,CNY,false,bob,1,kb-chat,1,1,1000,200,0.01,2026-11-05T10:00:00+00:00,2026-11-05T10:00:00+00:00",
        "conv-e,2026-11,CNY,true,alice,1,kb-chat,1,1,30,30,0.0009,2026-11-09T00:00:00+00:00,2026-11-09T00:00:00+00:00",
        "conv-a,2026-11,USD,false,alice,1,kb-chat,1,1,50,5,0.5,2026-11-04T12:00:00+00:00,2026-11-04T12:00:00+00:00",
        "conv-d,2026-11,,false,alice,1,kb-chat,1,1,500,100,,2026-11-08T00:00:00+00:00,2026-11-08T00:00:00+00:00",
    ]


def test_an_empty_period_and_bad_input(store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    empty = ConversationCosts("day", at(1), at(2), 20)
    render_table(empty, Console(file=out, width=200), store="chdb:///x")
    assert out.getvalue().startswith("Cost per conversation, 2026-11-01 (day, UTC): no calls with a conversation id.")
    assert main(["report", "--by", "conversation", "--limit", "0", "--clickhouse-url", store_url]) == 2
    assert "--limit: '0' is not a positive number" in capsys.readouterr().err
    assert main(["report", "--limit", "5", "--clickhouse-url", store_url]) == 2
    assert "--limit is the conversation report's: add --by conversation" in capsys.readouterr().err


@pytest.fixture
def serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServeProcess]:
    process = ServeProcess(tmp_path / "serve").start()
    monkeypatch.setenv("XDG_DATA_HOME", str(process.data_dir / "xdg"))  # where serve wrote its API token
    monkeypatch.delenv("TOKENMETER_API_TOKEN", raising=False)
    get_settings.cache_clear()
    try:
        yield process
    finally:
        process.stop()
        get_settings.cache_clear()


def test_through_serve_as_from_the_store(serve: ServeProcess, capsys: pytest.CaptureFixture[str]) -> None:
    """serve holds the chDB directory: the report asks its API (GET /v1/report?by=conversation), and the same
    document comes from the directory once serve has stopped."""
    for request in (calls_request(CALLS), calls_request(RESENT, first_index=13)):
        assert post(serve.otlp_http, "traces", request.SerializeToString()).status_code == 200

    def stored() -> dict[str, Any]:
        return dict(json.loads(report(capsys, "--clickhouse-url", serve.url, "--format", "json")))

    assert wait_for(lambda: sum(item["calls"] for item in stored()["sections"]) == 9)
    assert main(["report", "--by", "conversation", "--at", "2026-11-15", "--clickhouse-url", serve.url,
                 "--format", "json"]) == 0  # fmt: skip
    captured = capsys.readouterr()
    assert "is held by `tokenmeter serve` (PID" in captured.err and f"asking its API at {serve.api}" in captured.err
    through_api = json.loads(captured.out)
    assert main(["report", "--by", "conversation", "--at", "2026-11-15", "--clickhouse-url", serve.url,
                 "--limit", "1", "--format", "json"]) == 0  # fmt: skip
    limited_through_api = json.loads(capsys.readouterr().out)  # serve applies the limit (GET ...&limit=1)
    serve.stop()
    get_settings.cache_clear()
    direct = stored()
    assert through_api == direct
    assert limited_through_api == json.loads(report(capsys, "--clickhouse-url", serve.url, "--limit", "1",
                                                    "--format", "json")) != direct  # fmt: skip
    assert direct["sections"][0]["cost"] == "0.0155006"
