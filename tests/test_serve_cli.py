"""`tokenmeter serve` start-up: clear errors for a held store and a port in use; the API's token."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import httpx
from serve_process import running_serve


def _serve(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "xdg")}
    command = [sys.executable, "-m", "tokenmeter.cli", "serve", "--otlp-grpc-port", "0", "--otlp-http-port", "0",
               "--api-port", "0", *args]  # fmt: skip
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)


def test_a_second_serve_on_the_same_store_names_the_holder(tmp_path: Path) -> None:
    with running_serve(tmp_path / "first") as first:
        result = _serve(tmp_path, "--clickhouse-url", first.url)
    assert result.returncode == 1
    assert "tokenmeter serve:" in result.stderr
    assert str(tmp_path / "first" / "chdb") in result.stderr
    assert "PID" in result.stderr or "pid" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_port_in_use_is_one_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = _serve(tmp_path, "--clickhouse-url", f"chdb://{tmp_path / 'chdb'}", "--otlp-http-port", str(port))
    assert result.returncode == 2
    assert f"cannot listen for OTLP/HTTP on 127.0.0.1:{port}" in result.stderr
    assert "--otlp-http-port" in result.stderr
    assert "Traceback" not in result.stderr


def test_usage_api_needs_the_token_serve_wrote(tmp_path: Path) -> None:
    with running_serve(tmp_path / "serve") as serve:
        token_file = tmp_path / "serve" / "xdg" / "tokenmeter" / "api-token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert serve.info["api_token"] == str(token_file)  # the ready line names the file, not the token
        assert serve.api_token not in "".join(serve.stderr_lines)
        assert httpx.get(f"{serve.api}/v1/report", timeout=10).status_code == 401
        wrong = httpx.get(f"{serve.api}/v1/report", headers={"authorization": "Bearer nope"}, timeout=10)
        assert wrong.status_code == 401
        assert httpx.get(f"{serve.api}/healthz", timeout=10).json()["status"] == "ok"
        assert httpx.get(f"{serve.api}/metrics", timeout=10).status_code == 401  # quota use per user is in it
        bearer = {"authorization": f"Bearer {serve.api_token}"}
        assert "tokenmeter_receiver_queue_bytes" in httpx.get(f"{serve.api}/metrics", headers=bearer, timeout=10).text
    token = serve.api_token
    with running_serve(tmp_path / "serve"):  # a restart keeps the token
        assert serve.api_token == token


def test_a_broken_policy_stops_serve_with_its_line_and_field(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("budgets:\n  - name: b\n    scope: user\n    limit: {tokens: 10}\n    action: explode\n",
                      encoding="utf-8")  # fmt: skip
    result = _serve(tmp_path, "--clickhouse-url", f"chdb://{tmp_path / 'chdb'}", "--policy", str(policy))
    assert result.returncode == 2
    assert f"{policy} line 5, budgets[0].action:" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_broken_policy_stops_serve_before_it_creates_the_store(tmp_path: Path) -> None:
    """Config first: every problem of the policy is shown, and a store that did not exist is not made."""
    policy = tmp_path / "policy.yaml"
    policy.write_text("budgets:\n  - name: b\n    scope: everyone\n    limit: {tokens: -1}\n", encoding="utf-8")
    store = tmp_path / "new" / "chdb"
    result = _serve(tmp_path, "--clickhouse-url", f"chdb://{store}", "--policy", str(policy))
    assert result.returncode == 2
    assert f"tokenmeter serve: {policy}: 2 problems:" in result.stderr
    assert "  line 3, budgets[0].scope: Input should be 'organisation', 'department', 'user' or 'app'" in result.stderr
    assert "  line 4, budgets[0].limit.tokens: Input should be greater than 0" in result.stderr
    assert "applying migrations" not in result.stderr
    assert not (tmp_path / "new").exists()
    assert "Traceback" not in result.stderr


def test_an_empty_policy_stops_serve_naming_the_file_and_the_fix(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("# the budgets, once finance agrees\n", encoding="utf-8")
    result = _serve(tmp_path, "--clickhouse-url", f"chdb://{tmp_path / 'chdb'}", "--policy", str(policy))
    assert result.returncode == 2
    assert f"tokenmeter serve: {policy} is empty (or only comments), and an empty policy would allow every call" in (
        result.stderr
    )
    assert "leave out --policy / TOKENMETER_POLICY" in result.stderr
    assert not (tmp_path / "chdb").exists()
