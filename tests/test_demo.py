"""`tokenmeter demo` (what `make demo` runs): it finishes, its report equals the store, and the data stays."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
    assert "(virtual)" in out  # local models at virtual prices
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
    import re
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
        link = re.search(r"(http://127\.0\.0\.1:\d+/)#token=(\S+)", line)
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
