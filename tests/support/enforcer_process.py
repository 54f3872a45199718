"""Run a real `tokenmeter enforcer` in a subprocess for tests, against a migrated chDB directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
from ready_process import start_until_ready

TOKEN = "enforcer-test-token"


def migrate(store_dir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tokenmeter.cli", "db", "migrate", "--clickhouse-url", f"chdb://{store_dir}"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


class EnforcerProcess:
    def __init__(self, store_dir: Path, policy: Path, *extra_args: str, env: dict[str, str] | None = None) -> None:
        self.store_dir = store_dir
        self.args = [
            sys.executable, "-m", "tokenmeter.cli", "enforcer", "--clickhouse-url", f"chdb://{store_dir}",
            "--policy", str(policy), "--port", "0", "--refresh-interval", "0.2", *extra_args,
        ]  # fmt: skip
        self.env = {**os.environ, "TOKENMETER_ENFORCER_TOKEN": TOKEN, **(env or {})}
        self.stderr_lines: list[str] = []
        self.info: dict[str, Any] = {}
        self._proc: subprocess.Popen[str] | None = None

    def start(self) -> EnforcerProcess:
        self._proc, self.info = start_until_ready(self.args, self.env, self.stderr_lines)
        return self

    @property
    def url(self) -> str:
        return str(self.info["api"])

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {TOKEN}"}

    def check(self, client: httpx.Client | None = None, **body: Any) -> dict[str, Any]:
        poster = client or httpx
        response = poster.post(f"{self.url}/v1/check", json=body, headers=self.headers, timeout=30)
        response.raise_for_status()
        return dict(response.json())

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", headers=self.headers, timeout=30)

    def signal(self, signum: int) -> None:
        assert self._proc is not None
        self._proc.send_signal(signum)

    def stop(self, timeout: float = 60.0) -> int:
        if self._proc is None:
            return 0
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
        try:
            return self._proc.wait(timeout)
        finally:
            self._proc = None

    def __enter__(self) -> EnforcerProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
