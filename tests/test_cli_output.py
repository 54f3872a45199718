"""What the command line prints around its work: --version, one line for an unreachable ClickHouse,
and rich output in a pipe, where commands and paths must stay on one line."""

from __future__ import annotations

import io
import os
import re
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from tokenmeter.cli.output_console import output_console


def _cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {name: value for name, value in os.environ.items() if not name.startswith("TOKENMETER_")}
    return subprocess.run([sys.executable, "-m", "tokenmeter.cli", *argv], capture_output=True, text=True,
                          timeout=120, check=False, env={**clean, **(env or {})})  # fmt: skip


def _closed_loopback_port() -> int:
    """A loopback port nothing listens on: connecting to it is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_version_is_the_installed_distributions() -> None:
    [distribution] = {
        dist.metadata["Name"]: dist
        for dist in metadata.distributions()
        if "tokenmeter" in (dist.read_text("top_level.txt") or "").split()
    }.values()  # found by the package it installs, whatever the distribution is called
    result = _cli("--version")
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout == f"tokenmeter {distribution.version} (installed as {distribution.metadata['Name']})\n"
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", distribution.version)


def test_an_unreachable_clickhouse_is_one_line_without_the_drivers_retries() -> None:
    port = _closed_loopback_port()
    report = _cli("report", "--clickhouse-url", f"http://127.0.0.1:{port}/")
    assert report.returncode == 1 and report.stdout == ""
    [line] = report.stderr.splitlines()  # no "Retrying (Retry(...", no "Unexpected Http Driver Exception"
    assert line.startswith(f"tokenmeter report: cannot open ClickHouse at http://default@127.0.0.1:{port}/default: ")
    assert "Connection refused" in line

    migrate = _cli("db", "migrate", "--clickhouse-url", f"http://127.0.0.1:{port}/")
    assert migrate.returncode == 1
    progress, error = migrate.stderr.splitlines()
    assert progress == f"tokenmeter db migrate: store http://default@127.0.0.1:{port}/default"
    assert error.startswith("tokenmeter db migrate: cannot open ClickHouse at ")


def test_a_command_printed_into_a_pipe_stays_on_one_line() -> None:
    store = "chdb:///srv/" + "long-directory-name/" * 8 + "chdb"
    command = (
        f"tokenmeter serve --clickhouse-url {store} --policy /etc/tokenmeter/policy.yaml   # then: tokenmeter check"
    )
    assert len(command) > 200
    out = io.StringIO()  # not a terminal, as a pipe or a CI log
    output_console(out, highlight=False).print(f"  {command}")
    assert out.getvalue() == f"  {command}\n"


def test_report_in_a_pipe_does_not_break_a_long_store_path(tmp_path: Path) -> None:
    store = tmp_path / ("usage-" + "x" * 150) / "chdb"
    created = _cli("db", "migrate", "--clickhouse-url", f"chdb://{store}")
    assert created.returncode == 0, created.stderr
    result = _cli("report", "--clickhouse-url", f"chdb://{store}", "--at", "2026-10-15")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"Usage by department, 2026-10 (month, UTC): no usage recorded. (chdb://{store})\n"
