"""`report` and `check` find the serve holding a chDB directory, on whatever port, and say who answered.

serve records its API's address beside the directory's lock; a record whose process is gone or
does not hold the lock is not trusted. One real serve (on OS-picked ports, never 9400) for the module.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from serve_process import ServeProcess

from tokenmeter.serve.api_address import RECORD_NAME, ServeRecord, client_url, live_serve

POLICY = """\
budgets:
  - name: ops-monthly
    scope: department
    subject: ops
    period: month
    limit: {tokens: 1000}
    action: deny
"""


def _cli(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The command line in its own process, with only the TOKENMETER_* settings in ``env``."""
    clean = {name: value for name, value in os.environ.items() if not name.startswith("TOKENMETER_")}
    return subprocess.run([sys.executable, "-m", "tokenmeter.cli", *argv], capture_output=True, text=True,
                          timeout=120, check=False, env={**clean, **env})  # fmt: skip


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    directory = tmp_path_factory.mktemp("serve-address")
    policy = directory / "policy.yaml"
    policy.write_text(POLICY, encoding="utf-8")
    process = ServeProcess(directory / "serve", ["--policy", str(policy)]).start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def elsewhere(tmp_path: Path) -> dict[str, str]:
    """A user whose data dir holds no token file and who set no API URL: only the record leads to serve."""
    return {"XDG_DATA_HOME": str(tmp_path / "xdg")}


def _chdb(serve: ServeProcess) -> Path:
    return serve.data_dir / "chdb"


def test_serve_records_its_api_beside_the_lock(serve: ServeProcess) -> None:
    record = ServeRecord.from_json((_chdb(serve) / RECORD_NAME).read_text(encoding="utf-8"))
    assert record.api == serve.api and record.store == serve.url
    assert record.api_token_file == serve.data_dir / "xdg" / "tokenmeter" / "api-token"
    assert live_serve(_chdb(serve)) == record  # its process is alive and holds the lock
    assert stat.S_IMODE((_chdb(serve) / RECORD_NAME).stat().st_mode) == 0o644


def test_report_finds_the_serve_holding_the_store_on_its_port(serve: ServeProcess, elsewhere: dict[str, str]) -> None:
    assert not serve.api.endswith(":9400")
    result = _cli("report", "--clickhouse-url", serve.url, "--format", "json", env=elsewhere)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["by"] == "department"  # stdout: the report alone
    assert result.stderr.splitlines() == [
        f"tokenmeter report: {serve.url} is held by `tokenmeter serve` (PID {_pid(serve)}); "
        f"asking its API at {serve.api}",
        f"tokenmeter report: answered by the serve API at {serve.api} (store {serve.url})",
    ]


def test_serve_names_the_store_in_its_report_answer(serve: ServeProcess) -> None:
    answer = httpx.get(f"{serve.api}/v1/report", headers={"authorization": f"Bearer {serve.api_token}"}, timeout=30)
    assert answer.status_code == 200 and answer.json()["store"] == serve.url


def test_check_finds_the_serve_of_the_configured_store_and_names_its_policy(
    serve: ServeProcess, elsewhere: dict[str, str]
) -> None:
    env = {**elsewhere, "TOKENMETER_CLICKHOUSE_URL": serve.url}
    result = _cli("check", "--model", "gpt-4o", "--department", "ops", "--input-tokens", "10", env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["decision"] == "allow"  # stdout: the decision alone
    policy = serve.data_dir.parent / "policy.yaml"
    [line] = result.stderr.splitlines()
    assert line.startswith(
        f"tokenmeter check: answered by the enforcer of `tokenmeter serve` (PID {_pid(serve)}, store {serve.url}) "
        f"at {serve.api} (policy {policy}, sha256 "
    )


def test_check_names_the_enforcer_it_was_pointed_at(serve: ServeProcess) -> None:
    result = _cli("check", "--model", "gpt-4o", "--url", serve.api, env={"TOKENMETER_API_TOKEN": serve.api_token})
    assert result.returncode == 0, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"tokenmeter check: answered by the enforcer at {serve.api} (policy ")


def test_no_token_sent_and_a_refused_token_are_told_apart(serve: ServeProcess, elsewhere: dict[str, str]) -> None:
    xdg_token_file = Path(elsewhere["XDG_DATA_HOME"]) / "tokenmeter" / "api-token"
    check = ("check", "--model", "gpt-4o", "--url", serve.api)
    unsent = _cli(*check, env=elsewhere)
    assert unsent.returncode == 1 and unsent.stdout == ""
    assert unsent.stderr == (
        f"tokenmeter check: the enforcer at {serve.api} needs a bearer token and none was sent (none in "
        f"TOKENMETER_ENFORCER_TOKEN, TOKENMETER_API_TOKEN, {xdg_token_file}): set TOKENMETER_ENFORCER_TOKEN to the "
        "enforcer's token (the apps' token, or serve's API token)\n"
    )
    refused = _cli(*check, env={**elsewhere, "TOKENMETER_ENFORCER_TOKEN": "wrong"})
    assert refused.returncode == 1
    assert f"tokenmeter check: the enforcer at {serve.api} refused the token: set TOKENMETER_ENFORCER_TOKEN" in (
        refused.stderr
    )
    assert refused.stderr.endswith("; the token sent came from TOKENMETER_ENFORCER_TOKEN\n")

    report = ("report", "--api", serve.api)
    unsent = _cli(*report, env=elsewhere)
    assert unsent.returncode == 1 and unsent.stdout == ""
    assert unsent.stderr.startswith(
        f"tokenmeter report: the serve API at {serve.api} needs a bearer token and none was sent (none in "
        f"TOKENMETER_API_TOKEN, {xdg_token_file}): set TOKENMETER_API_TOKEN to serve's token"
    )
    xdg_token_file.parent.mkdir(parents=True)
    xdg_token_file.write_text("stale-token\n", encoding="utf-8")
    refused = _cli(*report, env=elsewhere)
    assert refused.returncode == 1
    assert f"the serve API at {serve.api} refused the token: set TOKENMETER_API_TOKEN" in refused.stderr
    assert refused.stderr.endswith(f"; the token sent came from {xdg_token_file}\n")


def test_a_serve_api_answering_for_another_store_is_an_error(serve: ServeProcess, tmp_path: Path) -> None:
    """A held directory whose holder recorded no address: the API at TOKENMETER_API_URL must be its serve."""
    other = tmp_path / "other"
    with _held_by_this_process(other):
        result = _cli("report", "--clickhouse-url", f"chdb://{other}",
                      env={"TOKENMETER_API_URL": serve.api, "TOKENMETER_API_TOKEN": serve.api_token})  # fmt: skip
    assert result.returncode == 1 and result.stdout == ""
    assert "no live serve recorded its API address beside it; asking the API at TOKENMETER_API_URL" in result.stderr
    assert (
        f"tokenmeter report: the serve API at {serve.api} answers for the store {serve.url}, not for chdb://{other}"
        in result.stderr
    )


def test_db_migrate_and_a_second_serve_name_the_serve_holding_the_store(serve: ServeProcess, tmp_path: Path) -> None:
    expected = (
        f"`tokenmeter serve` (PID {_pid(serve)}, API {serve.api}: `tokenmeter report` and `check` use it) "
        f"holds the chDB directory {_chdb(serve)}"
    )
    migrate = _cli("db", "migrate", "--clickhouse-url", serve.url, env={})
    assert migrate.returncode == 1
    assert migrate.stderr.splitlines()[-1].startswith(f"tokenmeter db migrate: {expected}")
    second = _cli("serve", "--clickhouse-url", serve.url, "--otlp-grpc-port", "0", "--otlp-http-port", "0",
                  "--api-port", "0", env={"XDG_DATA_HOME": str(tmp_path / "xdg")})  # fmt: skip
    assert second.returncode == 1
    assert second.stderr.splitlines() == [f"tokenmeter serve: {expected}, and chDB allows one process per directory; "
                                          "stop it and retry"]  # fmt: skip


def test_a_record_is_trusted_only_from_the_live_process_holding_the_lock(tmp_path: Path) -> None:
    directory = tmp_path / "chdb"
    directory.mkdir()
    mine = ServeRecord(os.getpid(), "http://127.0.0.1:1", f"chdb://{directory}")
    (directory / RECORD_NAME).write_text(mine.to_json(), encoding="utf-8")
    assert live_serve(directory) is None  # nobody holds the directory: a stale record
    gone = _a_pid_that_ended()
    with _held_by_this_process(directory):
        assert live_serve(directory) == mine
        (directory / RECORD_NAME).write_text(ServeRecord(gone, mine.api, mine.store).to_json(), encoding="utf-8")
        assert live_serve(directory) is None  # its process is gone
        (directory / RECORD_NAME).write_text(mine.to_json(), encoding="utf-8")
        (directory / RECORD_NAME).chmod(0o666)
        assert live_serve(directory) is None  # anyone could have written it: not trusted
        (directory / RECORD_NAME).chmod(0o644)
        assert live_serve(directory) == mine
        (directory / RECORD_NAME).write_text("{not json", encoding="utf-8")
        assert live_serve(directory) is None
    with _held_by_this_process(directory, pid_in_status=gone):  # a record by a process other than the holder
        (directory / RECORD_NAME).write_text(mine.to_json(), encoding="utf-8")
        assert live_serve(directory) is None


def test_a_serve_listening_on_every_address_is_asked_on_loopback() -> None:
    assert client_url("http://0.0.0.0:9400") == "http://127.0.0.1:9400"
    assert client_url("http://[::]:9400") == "http://[::1]:9400"
    assert client_url("http://192.0.2.7:9400") == "http://192.0.2.7:9400"


def test_serve_removes_its_record_when_it_stops(serve: ServeProcess, elsewhere: dict[str, str]) -> None:
    """Last in this module: it stops the module's serve."""
    assert serve.stop() == 0
    assert not (_chdb(serve) / RECORD_NAME).exists()
    result = _cli("report", "--clickhouse-url", serve.url, "--format", "csv", env=elsewhere)
    assert result.returncode == 0, result.stderr
    assert result.stderr == f"tokenmeter report: answered by the store {serve.url}\n"


# --- helpers ---------------------------------------------------------------------------


def _pid(serve: ServeProcess) -> int:
    return ServeRecord.from_json((_chdb(serve) / RECORD_NAME).read_text(encoding="utf-8")).pid


def _a_pid_that_ended() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


@contextlib.contextmanager
def _held_by_this_process(directory: Path, pid_in_status: int | None = None) -> Iterator[None]:
    """Hold ``directory``/status as chDB does (an exclusive flock, "PID: n" in it), leaving no serve record."""
    directory.mkdir(exist_ok=True)
    status = directory / "status"
    status.write_text(f"PID: {os.getpid() if pid_in_status is None else pid_in_status}\n", encoding="utf-8")
    fd = os.open(status, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
