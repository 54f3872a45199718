"""`tokenmeter demo` (what `make demo` runs): it finishes, its report equals the store, and the data stays."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest


def _tokenmeter(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tokenmeter.cli", *args], capture_output=True, text=True,
                          timeout=600, check=False)  # fmt: skip


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    directory = tmp_path_factory.mktemp("demo") / "run"
    return directory, _tokenmeter("demo", "--dir", str(directory), "--scale", "0.5")


def test_the_demo_ends_with_a_report_equal_to_the_store(demo_run: tuple[Path, subprocess.CompletedProcess[str]]
                                                       ) -> None:  # fmt: skip
    _directory, result = demo_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    for heading in ("Usage by department", "Usage by user", "Usage by model", "Budgets today", "Quota decisions"):
        assert heading in out
    assert "tokens per user in the report = the stored counters, per user" in out
    assert "tokens per model in the report = what the LLM server counted and served" in out
    # sent and refused calls apart, each checked by the demo against what happened
    assert "calls sent per model in the report = the calls the LLM server answered, per model" in out
    refused = re.search(r"calls refused in the report = the user turns a quota refused \(([\d,]+)\)", out)
    assert refused is not None and int(refused.group(1).replace(",", "")) > 0, out[-3000:]
    assert "calls sent" in out and "calls refused" in out and "rows: most tokens first" in out
    assert "(used + reserved) / limit" in out
    assert "(virtual)" in out  # local models at virtual prices
    # Routing and the repeat-answer cache at work (docs/routing.md, docs/answer-cache.md): the short lookups
    # moved to the local 7B, and the service desk's repeated questions answered from the cache.
    assert "Routing and the answer cache" in out and "routing rule short-lookup" in out
    hits = re.search(r"\(([\d,]+)\s+of\s+([\d,]+)\s+chat\s+calls\s+answered\s+without\s+an\s+LLM\s+call\)", out)
    assert hits is not None and int(hits.group(1).replace(",", "")) > 0, out[-3000:]
    # The month reconciled with DeepSeek's bill (docs/reconcile.md): the model server's ledger as DeepSeek's export,
    # its price changed mid-month, cache hits and reasoning; the only difference is a script's bypassing calls.
    assert "the month against DeepSeek's bill" in out
    bypass = re.search(r"except (\d+) calls a script made with its own HTTP client on (\S+): ([\d,]+) input", out)
    assert bypass is not None and bypass.group(1) == "3", out[-3000:]
    cached = [int(n.replace(",", "")) for n in re.findall(r"│ cached_input │ ([\d,]+)", out)]  # the month totals
    assert cached and max(cached) > 0, out[-3000:]
    reasoning = re.search(r"([\d,]+) reasoning tokens of deepseek-reasoner", out)
    assert reasoning is not None and int(reasoning.group(1).replace(",", "")) > 0, out[-3000:]
    assert "Traceback" not in result.stderr
    # Not at a terminal: it ends (does not keep serving) with the dashboard's address and how to open it.
    last_line = out.strip().splitlines()[-1]
    assert last_line.startswith("Web dashboard: http://127.0.0.1:9400/ while `tokenmeter demo --show"), last_line


def test_the_data_stays_for_tokenmeter_report(demo_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    directory, result = demo_run
    assert result.returncode == 0
    report = _tokenmeter("report", "--clickhouse-url", f"chdb://{directory / 'chdb'}", "--by", "user",
                         "--period", "day", "--format", "json")  # fmt: skip
    assert report.returncode == 0, report.stderr
    document = json.loads(report.stdout)
    users = {row["subject"] for row in document["rows"]}
    assert {"zhang.wei", "chen.jie", "zhao.lei"} <= users
    total = sum(row["input_tokens"] + row["output_tokens"] for row in document["rows"])
    assert f"({total:,} tokens in all)" in result.stdout  # the same total the demo printed


def test_demo_show_serves_the_dashboard_of_the_last_run(demo_run: tuple[Path, subprocess.CompletedProcess[str]]
                                                         ) -> None:  # fmt: skip
    """`make dashboard`: the page and its data from the demo's store, with the link's token, until Ctrl-C."""
    import signal

    import httpx
    from ready_process import free_port

    directory, result = demo_run
    assert result.returncode == 0
    port = free_port()
    command = [sys.executable, "-m", "tokenmeter.cli", "demo", "--show", "--dir", str(directory), "--port", str(port)]
    show = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert show.stdout is not None
        line = ""
        while "Web dashboard" not in line:
            line = show.stdout.readline()
            assert line, show.stderr.read() if show.stderr else ""
        link = re.search(r"(http://127\.0\.0\.1:\d+/)#range=30d&token=(\S+)", line)  # the month of history
        assert link is not None, line
        url, token = link.groups()
        assert url == f"http://127.0.0.1:{port}/"
        assert httpx.get(url, timeout=30).status_code == 200
        users = httpx.get(f"{url}v1/dashboard/panels/overview/4", headers={"authorization": f"Bearer {token}"},
                          timeout=30).json()["rows"]  # fmt: skip
        assert {"zhang.wei", "chen.jie"} <= {row[0] for row in users}
    finally:
        show.send_signal(signal.SIGINT)
        assert show.wait(60) == 0


def test_demo_show_needs_a_demo(tmp_path: Path) -> None:
    result = _tokenmeter("demo", "--show", "--dir", str(tmp_path / "none"))
    assert result.returncode == 2 and "run `tokenmeter demo" in result.stderr


def test_the_demo_refuses_a_directory_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me", encoding="utf-8")
    result = _tokenmeter("demo", "--dir", str(tmp_path))
    assert result.returncode == 2
    assert "is not a tokenmeter demo directory" in result.stderr
    assert (tmp_path / "precious.txt").read_text(encoding="utf-8") == "keep me"


def test_demo_traffic_sends_to_a_collector_and_asks_the_enforcer(tmp_path: Path) -> None:
    """What docker-compose's traffic service runs, here against a real `tokenmeter serve`."""
    import os

    import httpx
    from serve_process import ServeProcess

    serve = ServeProcess(tmp_path / "serve", ["--refresh-interval", "0.5"],
                         env={"TOKENMETER_OTLP_TOKEN": "otlp-secret"}).start()  # fmt: skip
    try:
        env = {**os.environ, "TOKENMETER_ENFORCER_TOKEN": serve.api_token, "TOKENMETER_OTLP_TOKEN": "otlp-secret"}
        result = subprocess.run(
            [sys.executable, "-m", "tokenmeter.cli", "demo-traffic", "--otlp-endpoint", serve.otlp_http,
             "--enforcer-url", serve.api, "--rounds", "1", "--scale", "0.2"],
            capture_output=True, text=True, timeout=600, check=False, env=env,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        assert "round 1:" in result.stderr
        report = httpx.get(f"{serve.api}/v1/report", params={"by": "user", "period": "day"},
                           headers={"authorization": f"Bearer {serve.api_token}"}, timeout=30).json()  # fmt: skip
        assert {"zhang.wei", "batch-bot"} <= {row["subject"] for row in report["rows"]}
        checks = httpx.get(f"{serve.api}/metrics", headers={"authorization": f"Bearer {serve.api_token}"},
                           timeout=30).text  # fmt: skip
        assert 'tokenmeter_enforcer_checks_total{decision="allow"}' in checks
    finally:
        serve.stop()


def test_the_demo_refuses_to_delete_a_store_another_process_holds(tmp_path: Path) -> None:
    """`make demo` while the last demo's dashboard still serves its store: refused, the store untouched."""
    import httpx
    from serve_process import ServeProcess

    from tokenmeter.demo.run import MARKER

    directory = tmp_path / "demo"
    directory.mkdir()
    (directory / MARKER).write_text("a previous demo\n", encoding="utf-8")
    serve = ServeProcess(directory).start()  # holds <dir>/chdb, as `tokenmeter demo --show` does
    try:
        assert serve._proc is not None
        result = _tokenmeter("demo", "--dir", str(directory), "--no-dashboard", "--scale", "0.05")
        assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
        [line] = result.stderr.splitlines()
        store = directory / "chdb"
        assert f"the previous demo's store {store} is in use by another process (PID {serve._proc.pid})" in line
        assert "stop that process" in line and "--dir" in line
        assert (directory / "chdb" / "status").exists() and (directory / MARKER).exists()
        assert httpx.get(f"{serve.api}/healthz", timeout=30).status_code == 200  # its store still answers
    finally:
        serve.stop()


def test_the_demo_leaves_a_month_of_history(demo_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    """The history went through serve's receiver into the accounting tables, dated on the days before today;
    today's report is today's traffic alone (the checks of the first test compare it with today's process)."""
    from tokenmeter.store import open_store

    directory, result = demo_run
    assert result.returncode == 0
    assert "a month of history" in result.stdout
    client = open_store(f"chdb://{directory / 'chdb'}")
    try:
        days = client.query(
            "SELECT day, sum(value) FROM usage_daily WHERE metric = 'tokenmeter.usage.tokens' "
            "AND day >= today() - 31 AND day < today() GROUP BY day HAVING sum(value) > 0 ORDER BY day"
        ).result_rows
        histories = client.query(
            "SELECT uniqExact(toDate(Timestamp)) FROM otel_traces WHERE Timestamp < toStartOfDay(now(), 'UTC') "
            "AND ResourceAttributes['service.instance.id'] LIKE 'demo-history-%'"
        ).result_rows
    finally:
        client.close()
    assert len(days) >= 20, days
    assert histories[0][0] >= 20  # the spans too: latency and decisions panels over the month
    weekdays = [tokens for day, tokens in days if day.weekday() < 5]
    weekends = [tokens for day, tokens in days if day.weekday() >= 5]
    assert weekends and min(weekdays) > max(weekends)  # office days, and the nightly job alone at weekends


def test_history_days_end_before_today_in_utc_and_in_the_policy_zone() -> None:
    """Whatever the hour: no history point in today's UTC day (the report) nor today's local day (the budgets)."""
    from tokenmeter.demo.history import DAYS, history_days

    zone = ZoneInfo("Asia/Shanghai")
    for now in (datetime(2026, 12, 5, 0, 30, tzinfo=UTC), datetime(2026, 12, 5, 9, 0, tzinfo=UTC),
                datetime(2026, 12, 5, 17, 0, tzinfo=UTC), datetime(2026, 12, 5, 23, 59, tzinfo=UTC)):  # fmt: skip
        days = history_days(now, zone, scale=0.5)
        local_midnight = datetime.combine(now.astimezone(zone).date(), datetime.min.time(), zone)
        utc_midnight = datetime.combine(now.date(), datetime.min.time(), UTC)
        assert len(days) == DAYS and len({d.day for d in days}) == DAYS
        assert all(end < min(local_midnight, utc_midnight) for d in days for end in d.hour_ends), now
        assert [d.day for d in days] == sorted(d.day for d in days)
        assert all(d.calls for d in days)
        stamps = [end for d in days for end in d.hour_ends]
        assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)  # counters only move forward
    late = history_days(datetime(2026, 12, 5, 17, 0, tzinfo=UTC), zone, scale=0.5)  # 01:00 on the 6th in Shanghai
    assert late[-1].day == date(2026, 12, 4) and late[0].day == date(2026, 12, 4) - timedelta(days=DAYS - 1)


def test_the_budget_table_shows_what_its_ratio_is_of() -> None:
    """The enforcer's ratio counts reservations: the table shows them, so 2,903 + 457 of 3,000 reads as 112 %."""
    from rich.console import Console

    from tokenmeter.demo.summary import render_budgets

    row = {"budget": "per-user-paid", "subject": "batch-bot", "used_tokens": 2903, "reserved_tokens": 457,
           "limit_tokens": 3000, "used_cost": None, "reserved_cost": None, "limit_cost": None, "currency": None,
           "ratio": 1.12, "action": "deny"}  # fmt: skip
    cost = {**row, "budget": "company-paid", "subject": "", "used_tokens": 0, "reserved_tokens": 0,
            "limit_tokens": None, "used_cost": "0.41", "reserved_cost": "0.000000000", "limit_cost": "0.5",
            "currency": "CNY", "ratio": 0.82, "action": "downgrade"}  # fmt: skip
    out = io.StringIO()
    render_budgets(Console(file=out, width=160), [row, cost])
    lines = out.getvalue().splitlines()
    assert "(used + reserved) / limit" in out.getvalue()
    [bot] = [line for line in lines if "batch-bot" in line]
    assert re.search(r"2,903 │ +457 │ +3,000 │ +112% │ deny", bot), bot
    [company] = [line for line in lines if "company-paid" in line]
    assert re.search(r"0\.41 CNY │ +│ +0\.5 CNY │ +82% │ downgrade", company), company  # nothing reserved: blank
