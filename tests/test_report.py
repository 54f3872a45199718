"""`tokenmeter report`: exact period totals from counters sent to a real serve, three formats, store or API.

One real `tokenmeter serve` (a subprocess holding its chDB directory) receives the counters
as OTLP, twice (a re-sent batch must not count). The report reads them through serve's
API (found through the lock, or named with --api) and, last, directly from the chDB
directory once serve has stopped; both must give the same document.
"""

from __future__ import annotations

import csv
import io
import json
import re
import socket
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.metrics.v1 import metrics_pb2
from otlp_requests import attributes, post, resource
from rich.console import Console
from serve_process import ServeProcess

from tokenmeter import semconv
from tokenmeter.cli import build_parser, main
from tokenmeter.cli.report import run_report
from tokenmeter.reporting import DIMENSIONS, ReportRow, UsageReport, parse_day, render_table, resolve_period
from tokenmeter.settings import get_settings
from tokenmeter.store.usage_queries import CostAmount

START = datetime(2026, 9, 30, 12, 0, tzinfo=UTC)  # every series started in September
BEFORE = datetime(2026, 9, 30, 23, 0, tzinfo=UTC)  # a point in the previous month (and the previous day)
DURING = datetime(2026, 10, 15, 9, 30, tzinfo=UTC)  # Thursday of ISO week 2026-W42
APP = "report-app"  # service.name, the app of calls without tokenmeter.app
QUOTED = 'o\'brien "x"'


@dataclass(frozen=True)
class Usage:
    """One user's calls of one model, as counter increments in October (`earlier_in`: input tokens in September)."""

    user: str
    department: str
    model: str
    input_tokens: int
    output_tokens: int
    calls: int
    cost: tuple[str, bool, Decimal] | None  # (currency, virtual, amount); None: the model has no price
    earlier_in: int = 0
    app: str = ""
    refused: tuple[str, int] | None = None  # (error.type, calls) a quota refused: never sent, no tokens

    def subject(self, by: str) -> str:
        value = {"user": self.user, "department": self.department, "model": self.model, "app": self.app or APP}[by]
        return value or "(none)"


USAGE = [
    Usage("alice", "研发部", "qwen2.5-7b-instruct", 100, 40, 3, ("CNY", True, Decimal("0.5")), earlier_in=50),
    Usage("bob", "sales", "gpt-4o", 200, 10, 2, ("USD", False, Decimal("1.25")), refused=("QuotaExceeded", 2)),
    Usage("bob", "sales", "mystery-model", 7, 3, 1, None),
    Usage(QUOTED, "sales", "gpt-4o", 5, 5, 1, ("USD", False, Decimal("0.01"))),
    Usage("", "", "gpt-4o", 1, 1, 1, ("USD", False, Decimal("0.000001"))),
    # the large spend in CNY; one call degraded by a quota (refused), one failed at the server (sent)
    Usage(
        "张三",
        "研发部",
        "deepseek-chat",
        30,
        20,
        2,
        ("CNY", False, Decimal("0.3")),
        app="kb-chat",
        refused=("QuotaDegraded", 1),
    ),
    Usage("张三", "研发部", "deepseek-chat", 0, 0, 1, ("CNY", False, Decimal(0)), app="kb-chat"),
    # a tiny cost in USD (embeddings)
    Usage("embedder", "研发部", "text-embedding-3-small", 30, 0, 2, ("USD", False, Decimal("0.0000006"))),
]
SERVER_ERROR = "500"  # error.type of the call that failed at the server: sent all the same


def expected_rows(by: str) -> dict[str, dict[str, Any]]:
    """What the report must say for October, computed from USAGE, not from the store."""
    rows: dict[str, dict[str, Any]] = {}
    for usage in USAGE:
        row = rows.setdefault(usage.subject(by), {"calls": 0, "refused_calls": 0, "input_tokens": 0,
                                                  "output_tokens": 0, "unpriced_calls": 0,
                                                  "costs": defaultdict(Decimal)})  # fmt: skip
        row["calls"] += usage.calls
        row["refused_calls"] += usage.refused[1] if usage.refused else 0
        row["input_tokens"] += usage.input_tokens
        row["output_tokens"] += usage.output_tokens
        if usage.cost is None:
            row["unpriced_calls"] += usage.calls
        else:
            currency, virtual, amount = usage.cost
            row["costs"][(currency, virtual)] += amount
    return {subject: {**row, "costs": dict(row["costs"])} for subject, row in rows.items()}


def _ns(moment: datetime) -> int:
    return int(moment.timestamp()) * 10**9


def _series(name: str, point_attributes: dict[str, object], totals: list[tuple[datetime, int]]) -> metrics_pb2.Metric:
    points = [
        metrics_pb2.NumberDataPoint(attributes=attributes(point_attributes), start_time_unix_nano=_ns(START),
                                    time_unix_nano=_ns(moment), as_int=total)
        for moment, total in totals
    ]  # fmt: skip
    return metrics_pb2.Metric(name=name, sum=metrics_pb2.Sum(data_points=points, aggregation_temporality=2,
                                                             is_monotonic=True))  # fmt: skip


def _metrics(usage: Usage) -> list[metrics_pb2.Metric]:
    """The counters as the instrumentation exports them (cumulative totals since START)."""
    base = {semconv.ENDUSER_ID: usage.user, semconv.TM_DEPARTMENT: usage.department,
            semconv.GEN_AI_REQUEST_MODEL: usage.model, semconv.GEN_AI_OPERATION_NAME: "chat"}  # fmt: skip
    if usage.app:
        base[semconv.TM_APP] = usage.app
    before = [(BEFORE, usage.earlier_in)] if usage.earlier_in else []
    calls = {**base, semconv.TM_COST_UNPRICED: usage.cost is None}
    if usage.input_tokens == 0:  # the call that failed at the server: a calls series of its own, nothing billed
        return [_series(semconv.METRIC_USAGE_CALLS, {**calls, semconv.ERROR_TYPE: SERVER_ERROR},
                        [(DURING, usage.calls)])]  # fmt: skip
    metrics = [
        _series(semconv.METRIC_USAGE_TOKENS, {**base, semconv.GEN_AI_TOKEN_TYPE: "input"},
                [*before, (DURING, usage.earlier_in + usage.input_tokens)]),
        _series(semconv.METRIC_USAGE_TOKENS, {**base, semconv.GEN_AI_TOKEN_TYPE: "output"},
                [(DURING, usage.output_tokens)]),
        _series(semconv.METRIC_USAGE_CALLS, calls, [(DURING, usage.calls)]),
    ]  # fmt: skip
    if usage.refused is not None:  # the refused calls' own series, as the instrumentation writes it
        error_type, refused = usage.refused
        metrics.append(_series(semconv.METRIC_USAGE_CALLS, {**calls, semconv.ERROR_TYPE: error_type},
                               [(DURING, refused)]))  # fmt: skip
    if usage.cost is not None:
        currency, virtual, amount = usage.cost
        metrics.append(_series(semconv.METRIC_USAGE_COST, {**base, semconv.TM_COST_CURRENCY: currency,
                                                           semconv.TM_COST_VIRTUAL: virtual},
                               [(DURING, int(amount * semconv.COST_UNITS_PER_CURRENCY_UNIT))]))  # fmt: skip
    return metrics


def _request() -> bytes:
    request = ExportMetricsServiceRequest(resource_metrics=[metrics_pb2.ResourceMetrics(
        resource=resource(APP),
        scope_metrics=[metrics_pb2.ScopeMetrics(scope=InstrumentationScope(name="tokenmeter"),
                                                metrics=[metric for usage in USAGE for metric in _metrics(usage)])],
    )])  # fmt: skip
    return request.SerializeToString()


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    process = ServeProcess(tmp_path_factory.mktemp("report") / "serve").start()
    try:
        for _ in range(2):  # a re-sent batch (an exporter retry) must not count twice
            assert post(process.otlp_http, "metrics", _request()).status_code == 200
        yield process
    finally:
        process.stop()


@pytest.fixture
def serve_environment(serve: ServeProcess, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServeProcess]:
    """Settings as a user on serve's machine has them: its data dir (token file) and API URL."""
    monkeypatch.setenv("XDG_DATA_HOME", str(serve.data_dir / "xdg"))
    monkeypatch.setenv("TOKENMETER_API_URL", serve.api)
    monkeypatch.delenv("TOKENMETER_API_TOKEN", raising=False)
    get_settings.cache_clear()
    yield serve
    get_settings.cache_clear()


def _report(*argv: str) -> tuple[int, str]:
    args = build_parser().parse_args(["report", *argv])
    out = io.StringIO()
    return run_report(args, out), out.getvalue()


def _json(*argv: str) -> dict[str, Any]:
    code, out = _report(*argv, "--format", "json")
    assert code == 0
    document: dict[str, Any] = json.loads(out)
    return document


def _as_expected(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The document's rows in the shape of expected_rows (cost amounts as Decimal)."""
    return {
        row["subject"]: {
            "calls": row["calls"], "refused_calls": row["refused_calls"], "input_tokens": row["input_tokens"],
            "output_tokens": row["output_tokens"],
            "unpriced_calls": row["unpriced_calls"],
            "costs": {(c["currency"], c["virtual"]): Decimal(c["amount"]) for c in row["costs"]},
        }
        for row in document["rows"]
    }  # fmt: skip


# --- pure parts -----------------------------------------------------------------------


def test_periods_are_utc_calendar_periods() -> None:
    def utc(*parts: int) -> datetime:
        return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]

    assert resolve_period("day", date(2026, 10, 15)) == (utc(2026, 10, 15), utc(2026, 10, 16))
    assert resolve_period("week", date(2026, 10, 15)) == (utc(2026, 10, 12), utc(2026, 10, 19))
    assert resolve_period("week", date(2027, 1, 1)) == (utc(2026, 12, 28), utc(2027, 1, 4))  # ISO week 2026-W53
    assert resolve_period("month", date(2026, 12, 31)) == (utc(2026, 12, 1), utc(2027, 1, 1))
    assert resolve_period("month", date(2028, 2, 29)) == (utc(2028, 2, 1), utc(2028, 3, 1))
    # no --at: the period holding "now" in UTC (23:30 in UTC-5 is already the next day)
    late = datetime.fromisoformat("2026-11-30T23:30:00-05:00")
    assert resolve_period("month", None, now=late) == (utc(2026, 12, 1), utc(2027, 1, 1))
    assert resolve_period("year", date(2026, 10, 15)) == (utc(2026, 1, 1), utc(2027, 1, 1))  # credits count per year
    with pytest.raises(ValueError, match="period must be one of"):
        resolve_period("quarter", None)


@pytest.mark.parametrize("text", ["2026-13-01", "20261015", "2026-W42-4", "yesterday", "2026-10-15T00:00"])
def test_at_must_be_a_day(text: str) -> None:
    with pytest.raises(ValueError, match="use YYYY-MM-DD"):
        parse_day(text)
    assert parse_day("2026-10-15") == date(2026, 10, 15) and parse_day(None) is None


def test_from_dict_refuses_what_is_not_a_report() -> None:
    with pytest.raises(ValueError, match="not a usage report"):
        UsageReport.from_dict({"by": "user"})
    document = {"by": "user", "period": "day", "start": "2026-10-15T00:00:00+00:00", "end": "2026-10-16T00:00:00+00:00",
                "rows": [{"subject": "a", "calls": 1, "input_tokens": 1, "output_tokens": 1, "unpriced_calls": 0,
                          "costs": [{"currency": "USD", "virtual": False, "amount": 0.1}]}]}  # fmt: skip
    with pytest.raises(ValueError, match="decimal string"):  # a float amount would not be exact
        UsageReport.from_dict(document)


# --- through serve's API ------------------------------------------------------------------


@pytest.mark.parametrize("by", DIMENSIONS)
def test_every_dimension_totals_the_october_increments(serve_environment: ServeProcess, by: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """serve holds the chDB directory: report notices, says so, and asks serve's API with the token file."""
    document = _json("--by", by, "--at", "2026-10-15", "--clickhouse-url", serve_environment.url)
    assert "held by" in capsys.readouterr().err
    assert _as_expected(document) == expected_rows(by)
    assert document["totals"] == {
        "subject": "total", "calls": 13, "refused_calls": 3, "input_tokens": 373, "output_tokens": 79,
        "unpriced_calls": 1,
        "costs": [{"currency": "CNY", "virtual": False, "amount": "0.3"},
                  {"currency": "CNY", "virtual": True, "amount": "0.5"},
                  {"currency": "USD", "virtual": False, "amount": "1.2600016"}],
    }  # fmt: skip
    assert (document["by"], document["period"], document["label"]) == (by, "month", "2026-10")
    assert (document["start"], document["end"]) == ("2026-10-01T00:00:00+00:00", "2026-11-01T00:00:00+00:00")


def test_rows_sorted_by_tokens(serve_environment: ServeProcess) -> None:
    """Most tokens first: a tiny USD embedding cost no longer ranks above a CNY spend (currencies are never
    compared). Ties: most calls sent, then the name."""
    users = _json("--by", "user", "--at", "2026-10-15", "--api", serve_environment.api)["rows"]
    assert [row["subject"] for row in users] == ["bob", "alice", "张三", "embedder", QUOTED, "(none)"]
    models = _json("--by", "model", "--at", "2026-10-15", "--api", serve_environment.api)["rows"]
    assert [row["subject"] for row in models] == ["gpt-4o", "qwen2.5-7b-instruct", "deepseek-chat",
                                                  "text-embedding-3-small", "mystery-model"]  # fmt: skip
    code, table = _report("--by", "user", "--at", "2026-10-15", "--api", serve_environment.api)
    assert code == 0 and "rows: most tokens first (input + output), then most calls sent." in table


def test_sent_and_refused_calls_apart(serve_environment: ServeProcess) -> None:
    """A call a quota refused was never sent: its own column, in every format; a call that failed at the server
    was sent."""
    rows = {row["subject"]: row for row in _json("--by", "user", "--at", "2026-10-15",
                                                 "--api", serve_environment.api)["rows"]}  # fmt: skip
    assert (rows["bob"]["calls"], rows["bob"]["refused_calls"]) == (3, 2)
    assert (rows["张三"]["calls"], rows["张三"]["refused_calls"]) == (3, 1)
    assert rows["bob"]["unpriced_calls"] == 1  # the refused calls are not among them
    code, text = _report("--by", "user", "--at", "2026-10-15", "--api", serve_environment.api, "--format", "csv")
    assert code == 0
    [bob] = [line for line in csv.DictReader(io.StringIO(text)) if line["user"] == "bob"]
    assert (bob["calls"], bob["refused_calls"]) == ("3", "2")
    code, table = _report("--by", "user", "--at", "2026-10-15", "--api", serve_environment.api)
    assert code == 0 and "calls sent" in table and "calls refused" in table
    assert "stopped by a quota before the request" in table
    [bob_line] = [line for line in table.splitlines() if "│ bob " in line]
    assert re.match(r"│ bob +│ +3 │ +2 │ +207 │ +13 │", bob_line), bob_line


def test_the_refused_error_types_are_the_quota_errors_the_gate_raises() -> None:
    """The store tells refused calls by error.type: every QuotaError the gate raises, by the name metering records."""
    from tokenmeter.instrumentation.quota.errors import QuotaError
    from tokenmeter.store.usage_queries import REFUSED_ERROR_TYPES

    def subclasses(cls: type) -> set[type]:
        return {sub for direct in cls.__subclasses__() for sub in {direct, *subclasses(direct)}}

    import tokenmeter.integrations.langchain_quota  # noqa: F401 - its refusal of a downgrade is a QuotaError too

    recorded = {getattr(cls, "tokenmeter_error_type", None) or cls.__qualname__ for cls in subclasses(QuotaError)}
    assert recorded == set(REFUSED_ERROR_TYPES)


def test_periods_cut_exactly(serve_environment: ServeProcess) -> None:
    """Only the in-period increase counts: alice's series had 50 input tokens before October."""

    def inputs(period: str, at: str) -> dict[str, int]:
        rows = _json("--by", "department", "--period", period, "--at", at, "--api", serve_environment.api)["rows"]
        return {row["subject"]: row["input_tokens"] for row in rows}

    october = inputs("month", "2026-10-31")
    assert october == {"研发部": 160, "sales": 212, "(none)": 1}
    assert inputs("month", "2026-09-01") == {"研发部": 50}
    assert inputs("day", "2026-09-30") == {"研发部": 50}
    assert inputs("day", "2026-10-15") == october and inputs("day", "2026-10-14") == {}
    assert inputs("week", "2026-10-18") == october  # Sunday: ISO week 42 is Monday 12th to Sunday 18th
    assert inputs("week", "2026-10-01") == {"研发部": 50}  # W40 straddles the months: September's part only
    week = _json("--period", "week", "--at", "2026-10-17", "--api", serve_environment.api)
    assert (week["label"], week["start"], week["end"]) == ("2026-W42", "2026-10-12T00:00:00+00:00",
                                                           "2026-10-19T00:00:00+00:00")  # fmt: skip


@pytest.mark.parametrize(("by", "subject"), [("user", QUOTED), ("user", "张三"), ("department", "研发部"),
                                             ("user", ""), ("model", "nobody's model")])  # fmt: skip
def test_one_subject_passes_through_intact(serve_environment: ServeProcess, by: str, subject: str) -> None:
    """Quotes and Unicode reach the query as a bound parameter; '' is the unattributed usage."""
    document = _json("--by", by, "--at", "2026-10-15", "--api", serve_environment.api, "--subject", subject)
    assert document["subject"] == subject
    expected = {name: row for name, row in expected_rows(by).items() if name == (subject or "(none)")}
    assert {row["subject"]: row["calls"] for row in document["rows"]} == {n: r["calls"] for n, r in expected.items()}


def test_formats_agree(serve_environment: ServeProcess) -> None:
    argv = ("--by", "department", "--at", "2026-10-15", "--api", serve_environment.api)
    document = _json(*argv)
    assert UsageReport.from_dict(document).to_dict() == document  # exact round trip, Decimal amounts included

    code, text = _report(*argv, "--format", "csv")
    assert code == 0
    lines = list(csv.DictReader(io.StringIO(text)))
    assert list(lines[0]) == ["department", "period", "calls", "refused_calls", "input_tokens", "output_tokens",
                              "cost", "currency", "virtual", "unpriced_calls"]  # fmt: skip
    research = [line for line in lines if line["department"] == "研发部"]
    assert {(line["currency"], line["virtual"]): Decimal(line["cost"]) for line in research} == {
        ("CNY", "false"): Decimal("0.3"), ("CNY", "true"): Decimal("0.5"),
        ("USD", "false"): Decimal("0.0000006")}  # fmt: skip
    assert {line["input_tokens"] for line in research} == {"160"}  # repeated on each of the subject's cost lines
    assert [line["cost"] for line in research if line["currency"] == "USD"] == ["0.0000006"]  # never 6E-7
    first_lines = {line["department"]: line for line in reversed(lines)}  # one line per subject
    assert sum(int(line["calls"]) for line in first_lines.values()) == document["totals"]["calls"]
    assert sum(int(line["unpriced_calls"]) for line in first_lines.values()) == 1
    costs: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for line in lines:
        costs[(line["currency"], line["virtual"])] += Decimal(line["cost"])
    assert costs == {("CNY", "false"): Decimal("0.3"), ("CNY", "true"): Decimal("0.5"),
                     ("USD", "false"): Decimal("1.2600016")}  # fmt: skip

    code, text = _report("--by", "model", *argv[2:], "--format", "csv")
    [mystery] = [line for line in csv.DictReader(io.StringIO(text)) if line["model"] == "mystery-model"]
    assert (mystery["cost"], mystery["currency"], mystery["unpriced_calls"]) == ("", "", "1")

    code, table = _report("--by", "model", *argv[2:])
    assert code == 0
    assert "Usage by model, 2026-10 (month, UTC)" in table and f"serve API {serve_environment.api}" in table
    assert "0.5 CNY (virtual)" in table and "qwen2.5-7b-instruct" in table and "1.260002 USD" in table
    assert "unpriced calls" in table and "mystery-model" in table and "their cost is not in the totals" in table


def test_a_wrong_token_and_an_unreachable_api_are_clear_errors(
    serve_environment: ServeProcess, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TOKENMETER_API_TOKEN", "wrong")
    get_settings.cache_clear()
    assert _report("--api", serve_environment.api) == (1, "")
    assert "refused the token: set TOKENMETER_API_TOKEN" in capsys.readouterr().err
    monkeypatch.setenv("XDG_DATA_HOME", str(serve_environment.data_dir / "no-token"))  # no token at all
    monkeypatch.delenv("TOKENMETER_API_TOKEN")
    get_settings.cache_clear()
    assert _report("--api", serve_environment.api)[0] == 1
    assert "needs a bearer token and none was sent" in capsys.readouterr().err

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    assert _report("--api", f"http://127.0.0.1:{free}") == (1, "")
    [line] = capsys.readouterr().err.splitlines()
    assert "cannot reach the serve API" in line and "start `tokenmeter serve`" in line and "--clickhouse-url" in line


def test_bad_input_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert _report("--at", "2026-13-01") == (2, "")
    assert capsys.readouterr().err == (
        "tokenmeter report: at: '2026-13-01' is not a date; use YYYY-MM-DD, e.g. 2026-11-28\n"
    )
    assert _report("--clickhouse-url", "ftp://example.com/x")[0] == 2
    assert "unsupported store URL scheme" in capsys.readouterr().err
    assert main(["report", "--by", "team"]) == 2
    assert "invalid choice: 'team'" in capsys.readouterr().err
    assert main(["report", "--period", "year"]) == 2


def test_a_store_without_tables_says_to_migrate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    assert _report("--clickhouse-url", f"chdb://{tmp_path / 'empty'}") == (1, "")
    [line] = capsys.readouterr().err.splitlines()
    assert "has no usage tables yet; run `tokenmeter db migrate" in line


def test_a_chdb_path_that_does_not_exist_is_bad_input_and_is_not_created(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "nonexistent" / "dir" / "x"
    result = subprocess.run([sys.executable, "-m", "tokenmeter.cli", "report", "--clickhouse-url", f"chdb://{path}"],
                            capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"tokenmeter report: no store at chdb://{path}: {path} does not exist")
    assert "Check the URL (--clickhouse-url or TOKENMETER_CLICKHOUSE_URL)" in line
    assert f"run `tokenmeter db migrate --clickhouse-url chdb://{path}` (or `tokenmeter serve`" in line
    assert not (tmp_path / "nonexistent").exists()


def test_table_title_and_an_empty_period() -> None:
    report = UsageReport(by="user", period="month", start=datetime(2026, 11, 1, tzinfo=UTC),
                         end=datetime(2026, 12, 1, tzinfo=UTC), subject="张三")  # fmt: skip
    out = io.StringIO()
    render_table(report, Console(file=out, width=120), store="chdb:///x", now=datetime(2026, 11, 28, 9, tzinfo=UTC))
    assert out.getvalue() == "Usage by user for 张三, 2026-11 (month to date, UTC): no usage recorded. (chdb:///x)\n"


def test_subjects_are_text_not_markup() -> None:
    """A user id is whatever the app sent; "[/bold]" would be a rich markup error if it were read as markup."""
    row = ReportRow(subject="[/bold] [red]eve", calls=1, input_tokens=2, output_tokens=3,
                    costs=(CostAmount("USD", False, Decimal("0.1")),))  # fmt: skip
    report = UsageReport(by="user", period="day", start=datetime(2026, 10, 15, tzinfo=UTC),
                         end=datetime(2026, 10, 16, tzinfo=UTC), rows=(row,), subject="[/bold] [red]eve")  # fmt: skip
    out = io.StringIO()
    render_table(report, Console(file=out, width=120), store="[b]store")
    assert "Usage by user for [/bold] [red]eve, 2026-10-15 (day, UTC)" in out.getvalue()
    assert "│ [/bold] [red]eve │" in out.getvalue() and "[b]store" in out.getvalue()


def test_direct_from_a_store_no_process_holds(serve: ServeProcess, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """Last in this module: the same documents from serve's API and, serve stopped, from its chDB directory."""
    monkeypatch.setenv("XDG_DATA_HOME", str(serve.data_dir / "xdg"))
    monkeypatch.delenv("TOKENMETER_API_TOKEN", raising=False)
    get_settings.cache_clear()
    questions = [
        ("--by", by, "--period", period, "--at", "2026-10-15")
        for by in DIMENSIONS
        for period in ("day", "week", "month")
    ] + [("--by", "user", "--subject", QUOTED, "--at", "2026-10-15")]
    through_api = [_json(*question, "--api", serve.api) for question in questions]
    serve.stop()
    get_settings.cache_clear()
    direct = [_json(*question, "--clickhouse-url", serve.url) for question in questions]
    assert "asking its API" not in capsys.readouterr().err
    assert direct == through_api
    assert _as_expected(direct[2]) == expected_rows("department")
