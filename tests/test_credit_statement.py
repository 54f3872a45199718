"""Monthly credits statements: usage counters ingested into chDB, the ledger written by the store, the statement
read back exactly (Decimal), its month cut in the policy's time zone, its CSV and HTML, the CLI and serve's API.

The usage goes in as OTLP export requests (the real opentelemetry-proto classes) through the collector's ingest
into the store; the ledger's entries through ``credit_ledger.record_entry``. Expected figures are worked out here
from the test's own numbers, never read from the store.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.metrics.v1 import metrics_pb2
from otlp_requests import attributes, resource
from serve_process import ServeProcess

from tokenmeter import semconv
from tokenmeter.cli import main
from tokenmeter.credits.ledger import LedgerEntry, charge_id, yearly_grant_id
from tokenmeter.credits.statement import StatementMonth
from tokenmeter.credits.statement_renderings import CSV_COLUMNS, render_csv, render_html
from tokenmeter.enforcer.policy import parse_policy
from tokenmeter.settings import get_settings

SHANGHAI = ZoneInfo("Asia/Shanghai")
DEPARTMENT = "研发部"
ACCOUNT = "dept-credits/研发部"
SCRIPT_USER = "<script>alert(1)</script>"
POLICY = """\
version: 1
timezone: Asia/Shanghai
wallets:
  - name: dept-credits
    scope: department
    rates: {CNY: 10, USD: 72}
    yearly_grant: 100000
budgets: []
"""
SERIES_START = datetime(2026, 10, 1, tzinfo=UTC)


def local(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=SHANGHAI)  # type: ignore[misc]


@dataclass(frozen=True)
class Usage:
    """One user's calls of one model in one department, exported at ``at`` (a running total from 0)."""

    user: str
    department: str
    model: str
    at: datetime
    input_tokens: int
    output_tokens: int
    calls: int
    cost: tuple[str, bool, Decimal]  # currency, virtual, amount
    earlier: tuple[datetime, int] | None = None  # an earlier point of the same series: (when, input tokens)


USAGE = [
    # before November (local): only what grew after October 31 counts
    Usage(
        "alice",
        DEPARTMENT,
        "deepseek-chat",
        local(2026, 11, 10, 10, 0),
        1000,
        500,
        4,
        ("CNY", False, Decimal("1.25")),
        earlier=(local(2026, 10, 31, 23, 0), 300),
    ),
    Usage(
        "alice", DEPARTMENT, "qwen2.5-7b-instruct", local(2026, 11, 10, 11, 0), 50, 20, 1, ("CNY", True, Decimal("0.3"))
    ),
    Usage(SCRIPT_USER, DEPARTMENT, "gpt-4o", local(2026, 11, 20, 9, 0), 200, 100, 2, ("USD", False, Decimal("0.5"))),
    # 2026-11-30 23:30 local (15:30 UTC): November's last half hour
    Usage("carol", DEPARTMENT, "deepseek-chat", local(2026, 11, 30, 23, 30), 7, 3, 1, ("CNY", False, Decimal("0.02"))),
    # 2026-12-01 00:30 local = 2026-11-30 16:30 UTC: December, though it is still November in UTC
    Usage("bob", DEPARTMENT, "deepseek-chat", local(2026, 12, 1, 0, 30), 10, 10, 1, ("CNY", False, Decimal("0.1"))),
    Usage("dave", "sales", "gpt-4o", local(2026, 11, 12, 9, 0), 999, 999, 9, ("USD", False, Decimal("9"))),
]
# November's credits at CNY 10, USD 72: 12.5 + 3 (virtual, charged) + 36 + 0.2
NOVEMBER_CREDITS = Decimal("51.7")
YEAR_END = local(2027, 1, 1)


def _entry(entry_id: str, kind: str, amount: str, at: datetime, actor: str, reason: str, **extra: Any) -> LedgerEntry:
    return LedgerEntry(entry_id, ACCOUNT, kind, Decimal(amount), at, actor, reason, **extra)  # type: ignore[arg-type]


LEDGER = [
    _entry(yearly_grant_id(ACCOUNT, 2026), "grant", "100000", local(2026, 1, 1), "policy", "yearly grant 2026",
           valid_until=YEAR_END),
    _entry("top_up:req-7", "top_up", "300", local(2026, 10, 8, 9, 0), "李四", "october launch", valid_until=YEAR_END),
    _entry(charge_id(ACCOUNT, "2026-10-31", 0), "charge", "5", local(2026, 10, 31), "enforcer", "usage on 2026-10-31"),
    _entry(charge_id(ACCOUNT, "2026-11-10", 0), "charge", "15.5", local(2026, 11, 10), "enforcer", "usage"),
    _entry("top_up:req-42", "top_up", "500", local(2026, 11, 15, 10, 0), "王经理", 'quarter-end "reports" <b>',
           valid_until=YEAR_END),
    _entry("adjustment:fin-3", "adjustment", "-20", local(2026, 11, 16, 12, 0), "finance", "double grant"),
    _entry(charge_id(ACCOUNT, "2026-11-20", 0), "charge", "30", local(2026, 11, 20), "enforcer", "usage"),
    # late usage of the 20th, charged after the day closed
    _entry(charge_id(ACCOUNT, "2026-11-20", 1), "charge", "6", local(2026, 11, 20), "enforcer", "late usage"),
    _entry(charge_id(ACCOUNT, "2026-11-30", 0), "charge", "0.2", local(2026, 11, 30), "enforcer", "usage"),
    # December 1 (bob's call) is not charged yet
]  # fmt: skip


def _series(name: str, point_attributes: dict[str, object], totals: list[tuple[datetime, int]]) -> metrics_pb2.Metric:
    points = [metrics_pb2.NumberDataPoint(attributes=attributes(point_attributes),
                                          start_time_unix_nano=int(SERIES_START.timestamp()) * 10**9,
                                          time_unix_nano=int(moment.timestamp()) * 10**9, as_int=total)
              for moment, total in totals]  # fmt: skip
    return metrics_pb2.Metric(name=name, sum=metrics_pb2.Sum(data_points=points, aggregation_temporality=2,
                                                             is_monotonic=True))  # fmt: skip


def _metrics(usage: Usage) -> list[metrics_pb2.Metric]:
    """The counters as the instrumentation exports them: cumulative totals of one process."""
    base = {semconv.ENDUSER_ID: usage.user, semconv.TM_DEPARTMENT: usage.department,
            semconv.GEN_AI_REQUEST_MODEL: usage.model, semconv.GEN_AI_OPERATION_NAME: "chat"}  # fmt: skip
    earlier = [usage.earlier] if usage.earlier else []
    first = usage.earlier[1] if usage.earlier else 0
    currency, virtual, amount = usage.cost
    return [
        _series(semconv.METRIC_USAGE_TOKENS, {**base, semconv.GEN_AI_TOKEN_TYPE: "input"},
                [*earlier, (usage.at, first + usage.input_tokens)]),
        _series(semconv.METRIC_USAGE_TOKENS, {**base, semconv.GEN_AI_TOKEN_TYPE: "output"},
                [(usage.at, usage.output_tokens)]),
        _series(semconv.METRIC_USAGE_CALLS, {**base, semconv.TM_COST_UNPRICED: False}, [(usage.at, usage.calls)]),
        _series(semconv.METRIC_USAGE_COST, {**base, semconv.TM_COST_CURRENCY: currency,
                                            semconv.TM_COST_VIRTUAL: virtual},
                [(usage.at, int(amount * semconv.COST_UNITS_PER_CURRENCY_UNIT))]),
    ]  # fmt: skip


def _request() -> bytes:
    request = ExportMetricsServiceRequest(resource_metrics=[metrics_pb2.ResourceMetrics(
        resource=resource("statement-app"),
        scope_metrics=[metrics_pb2.ScopeMetrics(scope=InstrumentationScope(name="tokenmeter"),
                                                metrics=[metric for usage in USAGE for metric in _metrics(usage)])],
    )])  # fmt: skip
    return request.SerializeToString()


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A chDB directory with the usage ingested (twice: a re-sent batch) and the ledger recorded; closed."""
    from tokenmeter.collector.ingest_queue import IngestSchema, insert_payloads
    from tokenmeter.collector.payloads import Signal, decode_protobuf
    from tokenmeter.store import open_store
    from tokenmeter.store.credit_ledger import record_entry
    from tokenmeter.store.migrations import RenderOptions, migrate

    directory = tmp_path_factory.mktemp("statement") / "serve" / "chdb"
    client = open_store(f"chdb://{directory}")
    try:
        migrate(client, RenderOptions())
        for _ in range(2):
            payload = decode_protobuf(Signal.METRICS, _request())
            insert_payloads(client, Signal.METRICS, [payload], IngestSchema.for_store(embedded=True))
        for entry in LEDGER:
            assert record_entry(client, entry) is True
    finally:
        client.close()
    return directory


@pytest.fixture
def store(store_dir: Path) -> Iterator[Any]:
    from tokenmeter.store import open_store

    client = open_store(f"chdb://{store_dir}", create=False)
    try:
        yield client
    finally:
        client.close()


def _statement(client: Any, month: str, department: str = DEPARTMENT, policy_text: str = POLICY) -> Any:
    from tokenmeter.store.statement_queries import read_statement

    policy = parse_policy(policy_text)
    made = datetime(2026, 12, 2, tzinfo=UTC)
    return read_statement(client, department, StatementMonth.parse(month, policy.zone), policy.wallets, made)


def test_november_usage_credits_and_ledger_are_exact(store: Any) -> None:
    statement = _statement(store, "2026-11")
    by_line = {(line.user, line.model): line for line in statement.lines}
    assert set(by_line) == {("alice", "deepseek-chat"), ("alice", "qwen2.5-7b-instruct"), (SCRIPT_USER, "gpt-4o"),
                            ("carol", "deepseek-chat")}  # no bob (December), no dave (sales)  # fmt: skip
    alice = by_line[("alice", "deepseek-chat")]
    assert (alice.calls, alice.input_tokens, alice.output_tokens) == (4, 1000, 500)  # not the 300 of October
    assert [(c.currency, c.virtual, c.amount) for c in alice.costs] == [("CNY", False, Decimal("1.25"))]
    assert alice.credits == {"dept-credits": Decimal("12.5")}
    assert by_line[("alice", "qwen2.5-7b-instruct")].credits["dept-credits"] == Decimal(3)  # virtual, charged
    assert by_line[(SCRIPT_USER, "gpt-4o")].credits["dept-credits"] == Decimal(36)
    totals = statement.totals
    assert (totals.calls, totals.input_tokens, totals.output_tokens) == (8, 1257, 623)
    assert [(c.currency, c.virtual, c.amount) for c in totals.costs] == [
        ("CNY", False, Decimal("1.27")), ("CNY", True, Decimal("0.3")), ("USD", False, Decimal("0.5"))]  # fmt: skip
    (wallet,) = statement.wallets
    assert (wallet.name, wallet.account, wallet.unit) == ("dept-credits", ACCOUNT, "credits")
    assert wallet.usage_credits == wallet.charged == NOVEMBER_CREDITS  # the late #1 charge of the 20th included
    assert wallet.not_yet_charged == 0
    assert (wallet.yearly_grant, wallet.top_ups, wallet.adjustments) == (0, Decimal(500), Decimal(-20))
    assert wallet.granted_in_month == Decimal(480)
    assert wallet.granted_year_to_date == Decimal(100780)  # 100000 + 300 (October) + 500 - 20
    assert wallet.balance == Decimal("100723.3")  # 100800 added - 5 (October) - 51.7 - 20
    assert [(a.entry_id, a.actor, a.reason, a.amount) for a in wallet.added] == [
        ("top_up:req-42", "王经理", 'quarter-end "reports" <b>', Decimal(500)),
        ("adjustment:fin-3", "finance", "double grant", Decimal(-20))]  # fmt: skip


def test_a_call_after_local_midnight_counts_in_december_and_shows_as_not_charged_yet(store: Any) -> None:
    statement = _statement(store, "2026-12")
    assert statement.month.start == datetime(2026, 11, 30, 16, 0, tzinfo=UTC)
    [line] = statement.lines
    assert (line.user, line.calls, line.input_tokens, line.credits) == ("bob", 1, 10, {"dept-credits": Decimal(1)})
    (wallet,) = statement.wallets
    assert (wallet.usage_credits, wallet.charged, wallet.not_yet_charged) == (Decimal(1), 0, Decimal(1))
    assert wallet.granted_year_to_date == Decimal(100780)
    assert wallet.balance == Decimal("100723.3")  # the year's grant is not expired at the year's last instant
    document = statement.to_dict()["wallets"][0]
    assert (document["not_yet_charged"], document["charges_match_usage"]) == ("1", False)


def test_a_wallet_for_every_department_gives_each_its_own_account(store: Any) -> None:
    (wallet,) = _statement(store, "2026-11", "sales").wallets
    assert (wallet.account, wallet.usage_credits, wallet.charged, wallet.balance) == ("dept-credits/sales", 648, 0, 0)


def test_a_department_without_a_wallet_gets_its_usage_and_says_so(store: Any) -> None:
    statement = _statement(store, "2026-11", "sales", "budgets: []\n")
    assert statement.wallets == ()
    assert [(line.user, line.calls) for line in statement.lines] == [("dave", 9)]
    rows = list(csv.DictReader(io.StringIO(render_csv(statement))))
    assert [row["note"] for row in rows if row["record"] == "no_wallet"] == [
        "the policy gives department 'sales' no wallet: the statement shows its usage, and no credits"
    ]
    assert "no wallet" in render_html(statement)


def test_the_csv_loads_with_the_csv_module_and_adds_up(store: Any) -> None:
    statement = _statement(store, "2026-11")
    rows = list(csv.DictReader(io.StringIO(render_csv(statement))))
    assert all(list(row) == list(CSV_COLUMNS) and None not in row.values() for row in rows)
    usage = [row for row in rows if row["record"] == "usage"]
    assert {row["user"] for row in usage} == {"alice", SCRIPT_USER, "carol"}
    assert sum(int(row["calls"]) for row in usage if row["calls"]) == 8
    assert sum(Decimal(row["credits"]) for row in usage if row["credits"]) == NOVEMBER_CREDITS
    ledger = {row["item"]: Decimal(row["amount"]) for row in rows if row["record"] == "ledger"}
    assert ledger["charged_in_month"] == ledger["usage_credits"] == NOVEMBER_CREDITS
    assert ledger["balance_at_month_end"] == Decimal("100723.3")
    [top_up] = [row for row in rows if row["record"] == "top_up"]
    assert (top_up["actor"], top_up["note"], top_up["amount"]) == ("王经理", 'quarter-end "reports" <b>', "500")
    [check] = [row for row in rows if row["record"] == "check"]
    assert (check["amount"], check["note"]) == ("0", "the ledger's charges for the month equal its usage's credits")
    assert {row["department"] for row in rows} == {DEPARTMENT} and {row["month"] for row in rows} == {"2026-11"}


def test_the_html_page_is_self_contained_and_escapes_what_users_wrote(store: Any) -> None:
    page = render_html(_statement(store, "2026-11"))
    assert SCRIPT_USER not in page and "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "quarter-end &quot;reports&quot; &lt;b&gt;" in page and "王经理" in page
    assert "http://" not in page and "https://" not in page and "<link" not in page and "@media print" in page
    assert "51.7" in page and "100723.3" in page


def test_a_wallet_without_a_rate_for_a_priced_currency_is_an_error_naming_it(store: Any) -> None:
    from tokenmeter.credits.ledger import LedgerError
    from tokenmeter.store.statement_queries import read_statement

    policy = parse_policy(POLICY.replace("{CNY: 10, USD: 72}", "{CNY: 10}"))
    month = StatementMonth.parse("2026-11", policy.zone)
    with pytest.raises(LedgerError, match="no rate from USD to credits"):
        read_statement(store, DEPARTMENT, month, policy.wallets, datetime.now(UTC))


@pytest.mark.parametrize("text", ["2026-13", "2026-1", "November", "", "1999-12"])
def test_a_bad_month_is_refused_naming_the_form(text: str) -> None:
    with pytest.raises(ValueError, match="use YYYY-MM"):
        StatementMonth.parse(text, SHANGHAI)


def test_month_bounds_are_local_midnights() -> None:
    month = StatementMonth.parse("2026-12", SHANGHAI)
    assert (month.start.astimezone(UTC), month.end.astimezone(UTC)) == (
        datetime(2026, 11, 30, 16, tzinfo=UTC), datetime(2026, 12, 31, 16, tzinfo=UTC))  # fmt: skip
    assert month.end - month.start == timedelta(days=31)


def test_the_cli_reads_the_store_and_writes_the_file(store_dir: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY, encoding="utf-8")
    output = tmp_path / "november.json"
    store = f"chdb://{store_dir}"
    code = main(["statement", "--department", DEPARTMENT, "--month", "2026-11", "--format", "json",
                 "--policy", str(policy), "--clickhouse-url", store, "--output", str(output)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    document = json.loads(output.read_text(encoding="utf-8"))
    assert document["wallets"][0]["usage_credits"] == document["wallets"][0]["charged_in_month"] == "51.7"
    assert document["time_zone"] == "Asia/Shanghai" and document["start"] == "2026-11-01T00:00:00+08:00"
    assert f"answered by the store chdb://{store_dir}" in capsys.readouterr().err
    code = main(["statement", "--department", DEPARTMENT, "--month", "2026-11", "--format", "csv",
                 "--clickhouse-url", f"chdb://{store_dir}"])  # fmt: skip
    out, _ = capsys.readouterr()
    assert code == 0 and "no_wallet" in out  # without a policy: usage only
    assert main(["statement", "--department", DEPARTMENT, "--month", "2026-1", "--clickhouse-url",
                 f"chdb://{store_dir}"]) == 2  # fmt: skip
    assert "month: '2026-1' is not a month; use YYYY-MM" in capsys.readouterr().err


@pytest.fixture(scope="module")
def serve(store_dir: Path) -> Iterator[ServeProcess]:
    """A real `tokenmeter serve` holding the store, with the wallets' policy (last: it holds the directory)."""
    policy = store_dir.parent / "policy.yaml"
    policy.write_text(POLICY, encoding="utf-8")
    process = ServeProcess(store_dir.parent, extra_args=["--policy", str(policy)]).start()
    try:
        yield process
    finally:
        process.stop()


def test_serve_answers_the_statement_behind_its_token(serve: ServeProcess) -> None:
    url = f"{serve.api}/v1/credits/statement"
    params = {"department": DEPARTMENT, "month": "2026-11"}
    assert httpx.get(url, params=params, timeout=30).status_code == 401
    headers = {"authorization": f"Bearer {serve.api_token}"}
    document = httpx.get(url, params={**params, "format": "json"}, headers=headers, timeout=30).json()
    assert document["wallets"][0]["balance_at_month_end"] == "100723.3"
    assert document["totals"]["calls"] == 8
    page = httpx.get(url, params={**params, "format": "html"}, headers=headers, timeout=30)
    assert page.headers["content-type"].startswith("text/html") and "&lt;script&gt;" in page.text
    table = httpx.get(url, params={**params, "format": "csv"}, headers=headers, timeout=30)
    assert table.headers["content-type"].startswith("text/csv")
    assert next(csv.reader(io.StringIO(table.text))) == list(CSV_COLUMNS)
    bad = httpx.get(url, params={"department": DEPARTMENT, "month": "11/2026"}, headers=headers, timeout=30)
    assert (bad.status_code, bad.json()["error"]) == (400, "month: '11/2026' is not a month; use YYYY-MM, e.g. 2026-11")


def test_the_cli_asks_the_serve_holding_the_store(serve: ServeProcess, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    monkeypatch.setenv("XDG_DATA_HOME", str(serve.data_dir / "xdg"))
    monkeypatch.delenv("TOKENMETER_API_TOKEN", raising=False)
    get_settings.cache_clear()
    try:
        code = main(["statement", "--department", DEPARTMENT, "--month", "2026-11", "--format", "csv",
                     "--clickhouse-url", serve.url])  # fmt: skip
    finally:
        get_settings.cache_clear()
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"answered by the serve API at {serve.api}" in err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert {row["item"]: row["amount"] for row in rows if row["record"] == "ledger"}["charged_in_month"] == "51.7"
