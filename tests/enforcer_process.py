"""Run a real `tokenmeter enforcer` in a subprocess for tests, against a migrated chDB directory."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx

READY_TIMEOUT = 90.0
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
        self._proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env=self.env)  # fmt: skip
        lines: queue.Queue[str] = queue.Queue()

        def pump_stdout() -> None:
            assert self._proc is not None and self._proc.stdout is not None
            for line in self._proc.stdout:
                lines.put(line)
            lines.put("")

        def pump_stderr() -> None:
            assert self._proc is not None and self._proc.stderr is not None
            for line in self._proc.stderr:
                self.stderr_lines.append(line)

        threading.Thread(target=pump_stdout, daemon=True).start()
        threading.Thread(target=pump_stderr, daemon=True).start()
        try:
            line = lines.get(timeout=READY_TIMEOUT)
        except queue.Empty:
            self.stop()
            raise RuntimeError(f"enforcer did not become ready: {''.join(self.stderr_lines)}") from None
        if not line:
            self._proc.wait(10)
            raise RuntimeError(f"enforcer exited ({self._proc.returncode}): {''.join(self.stderr_lines)}")
        self.info = json.loads(line)
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
