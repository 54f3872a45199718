from __future__ import annotations

import logging
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tokenmeter.settings import Settings
from tokenmeter.store.client import (
    StoreConfigError,
    StoreError,
    StoreLockedError,
    StoreMissingError,
    open_store,
    parse_store_url,
)

HOLDER = """
import sys
from tokenmeter.store.client import open_store
client = open_store(sys.argv[1])
client.query("SELECT 1")
print("ready", flush=True)
sys.stdin.read()
"""


def test_parse_http_url_hides_password() -> None:
    location = parse_store_url("https://meter:s3cr%40t@ch.example:9443/usage")
    assert (location.host, location.port, location.username, location.database, location.secure) == (
        "ch.example",
        9443,
        "meter",
        "usage",
        True,
    )
    assert location.password == "s3cr@t"
    assert "s3cr" not in repr(location) and "s3cr" not in location.display
    assert parse_store_url("http://ch").port == 8123
    assert parse_store_url("http://ch").database == "default"


@pytest.mark.parametrize("url", ["chdb://host/path", "chdb://relative", "ftp://x", "http:///db"])
def test_bad_urls(url: str) -> None:
    with pytest.raises(StoreConfigError):
        parse_store_url(url)


def test_default_url_is_chdb_under_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TOKENMETER_CLICKHOUSE_URL", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    location = parse_store_url(Settings().clickhouse_url)
    assert location.kind == "chdb" and location.path == tmp_path / "tokenmeter" / "chdb"


def test_open_creates_directory(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b"
    client = open_store(f"chdb://{path}")
    try:
        assert client.query("SELECT 1").result_rows == [(1,)]
    finally:
        client.close()
    assert path.is_dir()


def test_readers_do_not_create_a_missing_chdb_directory(tmp_path: Path) -> None:
    path = tmp_path / "nonexistent" / "dir" / "x"
    with pytest.raises(StoreMissingError) as error:
        open_store(f"chdb://{path}", create=False)
    assert isinstance(error.value, StoreConfigError)  # a wrong URL: the CLI's exit 2
    assert f"no store at chdb://{path}: {path} does not exist" in str(error.value)
    assert f"run `tokenmeter db migrate --clickhouse-url chdb://{path}`" in str(error.value)
    assert not (tmp_path / "nonexistent").exists()
    path.mkdir(parents=True)
    client = open_store(f"chdb://{path}", create=False)  # there: opened as usual
    client.close()


def test_password_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(Exception):  # noqa: B017 (no server listens there)
        open_store("http://meter:hunter2pw@127.0.0.1:9/db")
    assert "hunter2pw" not in caplog.text


@pytest.mark.parametrize("password", ["p", "hunter2pw"])
def test_an_unreachable_server_is_named_with_the_cause_alone(password: str) -> None:
    """The driver's retry text ("Max retries exceeded with url: /?query_id=...") is left out, and a short
    password is not masked inside running text (masking "p" turned "port" into "***ort")."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed once the block ends: nothing listens there
    with pytest.raises(StoreError) as info:
        open_store(f"http://meter:{password}@127.0.0.1:{port}/db")
    assert str(info.value) == f"cannot open ClickHouse at http://meter@127.0.0.1:{port}/db: Connection refused"


def test_second_process_gets_locked_error(tmp_path: Path) -> None:
    url = f"chdb://{tmp_path / 'held'}"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(StoreLockedError, match=r"tokenmeter serve.*HTTP API") as info:
            open_store(url)
        assert f"PID {holder.pid}" in str(info.value)
    finally:
        holder.communicate(timeout=30)
