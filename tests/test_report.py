"""`tokenmeter report`: exact period totals from counters sent to a real serve, three formats, store or API."""

from __future__ import annotations

import argparse
import csv
import io
import json
import socket
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.metrics.v1 import metrics_pb2
from otlp_requests import attributes, post, resource
from serve_process import ServeProcess

from tokenmeter import semconv
from tokenmeter.cli import build_parser
from tokenmeter.report_command import run_report
from tokenmeter.reporting import UsageReport, resolve_period
from tokenmeter.settings import get_settings

START = datetime(2026, 9, 30, 12, 0, tzinfo=UTC)  # the series started in the previous month
BEFORE = datetime(2026, 9, 30, 23, 0, tzinfo=UTC)
DURING = datetime(2026, 10, 15, 9, 30, tzinfo=UTC)
QUOTED = 'o\'brien "x"'


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


def _usage(user: str, department: str, model: str, tokens_in: int, tokens_out: int, calls: int,
           cost: tuple[str, bool, Decimal] | None, earlier_in: int = 0) -> list[metrics_pb2.Metric]:  # fmt: skip
    """One user's counters as the instrumentation exports them, with `earlier_in` input tokens before October."""
    base = {semconv.ENDUSER_ID: user, semconv.TM_DEPARTMENT: department, semconv.GEN_AI_REQUEST_MODEL: model,
            semconv.GEN_AI_OPERATION_NAME: "chat"}  # fmt: skip
    before = [(BEFORE, earlier_in)] if earlier_in else []
    metrics = [
        _series(semconv.METRIC_USAGE_TOKENS, {**base, semconv.GEN_AI_TOKEN_TYPE: "input"},
                [*before, (DURING, earlier_in + tokens_in)]),
        _series(semconv.METRIC_USAGE_TOKENS, {**base, semconv.GEN_AI_TOKEN_TYPE: "output"}, [(DURING, tokens_out)]),
        _series(semconv.METRIC_USAGE_CALLS, {**base, semconv.TM_COST_UNPRICED: cost is None}, [(DURING, calls)]),
    ]  # fmt: skip
    if cost is not None:
        currency, virtual, amount = cost
        metrics.append(_series(semconv.METRIC_USAGE_COST, {**base, semconv.TM_COST_CURRENCY: currency,
                                                           semconv.TM_COST_VIRTUAL: virtual},
                               [(DURING, int(amount * semconv.COST_UNITS_PER_CURRENCY_UNIT))]))  # fmt: skip
    return metrics


def _request() -> bytes:
    metrics = [
        *_usage("alice", "研发部", "qwen2.5-7b-instruct", 100, 40, 3, ("CNY", True, Decimal("0.5")), earlier_in=50),
        *_usage("bob", "sales", "gpt-4o", 200, 10, 2, ("USD", False, Decimal("1.25"))),
        *_usage("bob", "sales", "mystery-model", 7, 3, 1, None),
        *_usage(QUOTED, "sales", "gpt-4o", 5, 5, 1, ("USD", False, Decimal("0.01"))),
        *_usage("", "", "gpt-4o", 1, 1, 1, ("USD", False, Decimal("0.000001"))),
    ]
    request = ExportMetricsServiceRequest(resource_metrics=[metrics_pb2.ResourceMetrics(
        resource=resource("report-app"),
        scope_metrics=[metrics_pb2.ScopeMetrics(scope=InstrumentationScope(name="tokenmeter"), metrics=metrics)],
    )])  # fmt: skip
    return request.SerializeToString()


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    process = ServeProcess(tmp_path_factory.mktemp("report") / "serve").start()
    try:
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


def _json(*argv: str) -> dict[str, object]:
    code, out = _report(*argv, "--format", "json")
    assert code == 0
    return json.loads(out)


def test_periods_are_utc_calendar_periods() -> None:
    assert resolve_period("day", date(2026, 10, 15)) == (datetime(2026, 10, 15, tzinfo=UTC),
                                                         datetime(2026, 10, 16, tzinfo=UTC))  # fmt: skip
    assert resolve_period("week", date(2026, 10, 15)) == (datetime(2026, 10, 12, tzinfo=UTC),
                                                          datetime(2026, 10, 19, tzinfo=UTC))  # fmt: skip
    assert resolve_period("month", date(2026, 12, 31)) == (datetime(2026, 12, 1, tzinfo=UTC),
                                                           datetime(2027, 1, 1, tzinfo=UTC))  # fmt: skip
    with pytest.raises(ValueError, match="period must be one of"):
        resolve_period("year", None)


def test_report_through_the_api_of_a_running_serve(serve_environment: ServeProcess) -> None:
    """serve holds the chDB directory: report finds it, notices, and asks serve's API with the token file."""
    document = _json("--by", "user", "--at", "2026-10-15", "--clickhouse-url", serve_environment.url)
    rows = {row["subject"]: row for row in document["rows"]}
    assert rows["alice"]["input_tokens"] == 100  # only October's increase of a series begun in September
    assert rows["alice"]["costs"] == [{"currency": "CNY", "virtual": True, "amount": "0.5"}]
    assert (rows["bob"]["calls"], rows["bob"]["unpriced_calls"], rows["bob"]["input_tokens"]) == (3, 1, 207)
    assert rows["bob"]["costs"] == [{"currency": "USD", "virtual": False, "amount": "1.25"}]
    assert rows[QUOTED]["output_tokens"] == 5
    assert rows["(none)"]["calls"] == 1
    assert document["totals"]["costs"] == [
        {"currency": "CNY", "virtual": True, "amount": "0.5"},
        {"currency": "USD", "virtual": False, "amount": "1.260001"},
    ]
    assert [row["subject"] for row in document["rows"]][:2] == ["bob", "alice"]  # most tokens first
    # the same question, asked of the API explicitly and for one subject with quotes in it
    [only] = _json("--by", "user", "--at", "2026-10-15", "--api", serve_environment.api, "--subject", QUOTED)["rows"]
    assert only["subject"] == QUOTED and only["calls"] == 1


def test_periods_cut_exactly(serve_environment: ServeProcess) -> None:
    department = {"--by": "department", "--api": serve_environment.api}
    argv = [item for pair in department.items() for item in pair]
    october = {r["subject"]: r["input_tokens"] for r in _json(*argv, "--at", "2026-10-01")["rows"]}
    september = {r["subject"]: r["input_tokens"] for r in _json(*argv, "--at", "2026-09-30")["rows"]}
    assert october["研发部"] == 100 and september == {"研发部": 50}
    day = {r["subject"]: r["input_tokens"] for r in _json(*argv, "--period", "day", "--at", "2026-10-15")["rows"]}
    assert day == october
    assert _json(*argv, "--period", "day", "--at", "2026-10-14")["rows"] == []
    week = _json(*argv, "--period", "week", "--at", "2026-10-17")
    assert (week["label"], week["start"]) == ("2026-W42", "2026-10-12T00:00:00+00:00")


def test_formats_agree(serve_environment: ServeProcess) -> None:
    argv = ("--by", "model", "--at", "2026-10-15", "--api", serve_environment.api)
    document = _json(*argv)
    report = UsageReport.from_dict(document)
    assert report.to_dict() == document  # exact round trip, Decimal amounts included

    code, text = _report(*argv, "--format", "csv")
    assert code == 0
    lines = list(csv.DictReader(io.StringIO(text)))
    gpt = [line for line in lines if line["model"] == "gpt-4o"]
    assert len(gpt) == 1 and gpt[0]["cost"] == "1.260001" and gpt[0]["currency"] == "USD"
    assert sum(int(line["input_tokens"]) for line in lines) == document["totals"]["input_tokens"]
    [mystery] = [line for line in lines if line["model"] == "mystery-model"]
    assert (mystery["cost"], mystery["unpriced_calls"]) == ("", "1")

    code, table = _report(*argv)
    assert code == 0
    assert "Usage by model, 2026-10 (month, UTC)" in table
    assert "0.5 CNY (virtual)" in table and "qwen2.5-7b-instruct" in table
    assert "unpriced calls" in table and "mystery-model" in table


def test_a_wrong_token_and_an_unreachable_api_are_clear_errors(
    serve_environment: ServeProcess, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TOKENMETER_API_TOKEN", "wrong")
    get_settings.cache_clear()
    code, _ = _report("--api", serve_environment.api)
    assert code == 1
    assert "refused the token" in capsys.readouterr().err
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    code, _ = _report("--api", f"http://127.0.0.1:{free}")
    assert code == 1
    assert "cannot reach the serve API" in capsys.readouterr().err


def test_a_store_without_the_schema_is_a_setup_step_not_a_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = _report("--clickhouse-url", f"chdb://{tmp_path / 'empty'}")
    assert code == 1
    err = capsys.readouterr().err
    assert "has no tokenmeter schema" in err and "tokenmeter db migrate" in err and "Traceback" not in err


def test_bad_input_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = _report("--at", "2026-13-01")
    assert code == 2
    assert "--at '2026-13-01' is not a date" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["report", "--by", "team"])


def test_direct_from_a_store_no_process_holds(serve: ServeProcess, tmp_path: Path) -> None:
    """Last in this module: stops serve and reads its chDB directory in this process."""
    serve.stop()
    document = _json("--by", "user", "--at", "2026-10-15", "--clickhouse-url", serve.url)
    rows = {row["subject"]: row for row in document["rows"]}
    assert rows["alice"]["input_tokens"] == 100 and rows["bob"]["unpriced_calls"] == 1
    del tmp_path


def test_namespace_has_what_run_report_reads() -> None:
    args = build_parser().parse_args(["report"])
    assert isinstance(args, argparse.Namespace)
    assert (args.by, args.period, args.format, args.at, args.api) == ("department", "month", "table", None, None)
