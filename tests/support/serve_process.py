"""Run a real `tokenmeter serve` in a subprocess for tests, on ports the OS picks."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ready_process import start_until_ready

from tokenmeter.store import open_store


@dataclass
class ServeProcess:
    data_dir: Path
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)  # reuse ports across a restart
    info: dict[str, Any] = field(default_factory=dict)
    stderr_lines: list[str] = field(default_factory=list)
    _proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"chdb://{self.data_dir / 'chdb'}"

    @property
    def api_token(self) -> str:
        return (self.data_dir / "xdg" / "tokenmeter" / "api-token").read_text(encoding="utf-8").strip()

    def start(self) -> ServeProcess:
        # serve writes its API token under $XDG_DATA_HOME/tokenmeter; keep it in the test's directory
        env = {**os.environ, "XDG_DATA_HOME": str(self.data_dir / "xdg"), **self.env}
        args = [
            sys.executable, "-m", "tokenmeter.cli", "serve",
            "--clickhouse-url", self.url,
            "--otlp-grpc-port", str(self.ports.get("grpc", 0)),
            "--otlp-http-port", str(self.ports.get("http", 0)),
            "--api-port", str(self.ports.get("api", 0)),
            *self.extra_args,
        ]  # fmt: skip
        self._proc, self.info = start_until_ready(args, env, self.stderr_lines)
        self.ports = {
            "grpc": int(self.info["otlp_grpc"].rsplit(":", 1)[1]),
            "http": int(self.info["otlp_http"].rsplit(":", 1)[1]),
            "api": int(self.info["api"].rsplit(":", 1)[1]),
        }
        return self

    @property
    def otlp_grpc(self) -> str:
        return str(self.info["otlp_grpc"])

    @property
    def otlp_http(self) -> str:
        return str(self.info["otlp_http"])

    @property
    def api(self) -> str:
        return str(self.info["api"])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self._proc is None:
            return 0
        if self._proc.poll() is None:
            self._proc.send_signal(sig)
        try:
            return self._proc.wait(timeout)
        finally:
            self._proc = None

    def kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(30)
            self._proc = None

    @contextlib.contextmanager
    def store(self) -> Iterator[Any]:
        """The store, opened in this process while serve is stopped (chDB: one process at a time)."""
        assert self._proc is None, "stop serve before opening its chDB store"
        client = open_store(self.url)
        try:
            yield client
        finally:
            client.close()


@contextlib.contextmanager
def running_serve(data_dir: Path, *extra_args: str, env: dict[str, str] | None = None) -> Iterator[ServeProcess]:
    serve = ServeProcess(data_dir, list(extra_args), env or {}).start()
    try:
        yield serve
    finally:
        serve.stop()
