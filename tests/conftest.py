from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

TESTS_DIR = Path(__file__).parent
# The helpers (servers, processes, fixtures) live in tests/support/ and are imported by their names.
sys.path.insert(0, str(TESTS_DIR / "support"))

from openai_server import OpenAICompatibleServer  # noqa: E402
from zookeeper_server import ZooKeeperServer, ZooKeeperUnavailableError  # noqa: E402

from tokenmeter.instrumentation.attribution import default_app  # noqa: E402


@pytest.fixture
def no_service_name(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No service.name in the environment, and no cached default app from earlier tests."""
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    default_app.cache_clear()
    yield
    default_app.cache_clear()


@pytest.fixture
def openai_server() -> Iterator[OpenAICompatibleServer]:
    with OpenAICompatibleServer() as server:
        yield server


@pytest.fixture
def silent_openai_server() -> Iterator[OpenAICompatibleServer]:
    """A server that never reports usage, like many local model servers."""
    with OpenAICompatibleServer(usage_mode="omit") as server:
        yield server


@pytest.fixture
def migrated_store(tmp_path: Path) -> Iterator[Any]:
    """A fresh embedded store with every migration applied (chDB is imported here: the
    openai 1.x venv runs some of these tests without the store extra)."""
    from tokenmeter.store import open_store
    from tokenmeter.store.migrations import RenderOptions, migrate

    client = open_store(f"chdb://{tmp_path / 'chdb'}")
    try:
        migrate(client, RenderOptions())
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def zookeeper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZooKeeperServer]:
    """A real standalone ZooKeeper server on a loopback port, shared by the test session (tests use
    paths of their own). Debian's `zookeeper`: `.ci/run` installs it and sets
    TOKENMETER_REQUIRE_ZOOKEEPER=1, so there a missing server fails instead of skipping."""
    server = ZooKeeperServer(tmp_path_factory.mktemp("zookeeper"))
    try:
        server.start()
    except ZooKeeperUnavailableError as exc:
        if os.environ.get("TOKENMETER_REQUIRE_ZOOKEEPER"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        server.stop()
