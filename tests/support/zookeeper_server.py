"""A real standalone ZooKeeper server for tests, on a loopback port the OS picks.

The server is Debian's `zookeeper` package (`.ci/run` installs it; it pulls a JRE). It speaks the
protocol ClickHouse Keeper speaks in production. Nothing here needs kazoo: readiness is the
four-letter `srvr` command over a plain socket, so conftest.py can import this in every venv.

`tickTime=500` lets a session expire within a few seconds (the server grants a timeout between
`minSessionTimeout` and `maxSessionTimeout`), so a dead client's ephemeral nodes go away quickly.
The server's log is kept in the work directory and quoted when it fails to start.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from ready_process import free_port

ZOOKEEPER_JAR = Path("/usr/share/java/zookeeper.jar")
# The jar's manifest names every library the server needs except an SLF4J binding. Debian's
# zkServer.sh runs it without one (SLF4J then drops every message), and "/usr/share/java/*" holds
# six bindings of which SLF4J picked the silent NOP one here: so the class path names slf4j-simple
# (libslf4j-java, a dependency of libzookeeper-java), which writes the server's log to stderr.
SLF4J_SIMPLE_JAR = Path("/usr/share/java/slf4j-simple.jar")
MAIN_CLASS = "org.apache.zookeeper.server.quorum.QuorumPeerMain"
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
BIND_ATTEMPTS = 3  # a free port can be taken by someone else before the server binds it


class ZooKeeperUnavailableError(RuntimeError):
    """Java or the ZooKeeper jars are not installed here (Debian: apt-get install zookeeper)."""


def java_command(config: Path) -> list[str]:
    """The command that runs a standalone server from ``config``; ZooKeeperUnavailableError names what is missing."""
    java = shutil.which("java")
    missing = [name for name, present in (
        ("java", java is not None),
        (str(ZOOKEEPER_JAR), ZOOKEEPER_JAR.is_file()),
        (str(SLF4J_SIMPLE_JAR), SLF4J_SIMPLE_JAR.is_file()),
    ) if not present]  # fmt: skip
    if missing or java is None:
        raise ZooKeeperUnavailableError(f"no ZooKeeper server here: missing {', '.join(missing)} "
                                   "(Debian: apt-get install --no-install-recommends zookeeper)")  # fmt: skip
    return [
        java, "-Xmx256m",
        "-Dorg.slf4j.simpleLogger.showDateTime=true",
        "-Dorg.slf4j.simpleLogger.dateTimeFormat=HH:mm:ss.SSS",
        "-cp", f"{ZOOKEEPER_JAR}:{SLF4J_SIMPLE_JAR}",
        MAIN_CLASS, str(config),
    ]  # fmt: skip


@dataclass
class ZooKeeperServer:
    """One standalone server whose data, configuration and log live in ``work_dir``."""

    work_dir: Path
    tick_time_ms: int = 500
    min_session_timeout_ms: int = 1000
    max_session_timeout_ms: int = 20000
    extra_config: dict[str, str] = field(default_factory=dict)  # more zoo.cfg lines, e.g. forceSync=no
    port: int = 0
    startup_seconds: float = 0.0  # from launching java to the first `srvr` answer in standalone mode
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def hosts(self) -> str:
        """The connection string a client takes: ``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        """``zk://127.0.0.1:PORT/path``, the form TOKENMETER_COORDINATION_URL takes."""
        return f"zk://{self.hosts}/{path.lstrip('/')}"

    @property
    def config_path(self) -> Path:
        return self.work_dir / "zoo.cfg"

    @property
    def log_path(self) -> Path:
        return self.work_dir / "zookeeper.log"

    def log_tail(self, lines: int = 60) -> str:
        """The last lines of the server's log, for failure messages."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return f"(no log at {self.log_path})"
        return "\n".join(text.splitlines()[-lines:])

    def start(self) -> ZooKeeperServer:
        """Launch the server and return once it serves; ZooKeeperUnavailableError when it cannot run here."""
        command = java_command(self.config_path)
        (self.work_dir / "data").mkdir(parents=True, exist_ok=True)
        for attempt in range(1, BIND_ATTEMPTS + 1):
            self.port = free_port()
            self._write_config()
            launched = time.monotonic()
            with self.log_path.open("ab") as log:
                self._proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                              cwd=self.work_dir)  # fmt: skip
            if self._wait_until_serving():
                self.startup_seconds = time.monotonic() - launched
                return self
            exited = self._proc.poll() is not None
            self.stop()
            if exited and "Address already in use" in self.log_tail() and attempt < BIND_ATTEMPTS:
                continue
            break
        raise RuntimeError(f"ZooKeeper did not start serving on {self.hosts} "
                           f"(log {self.log_path}):\n{self.log_tail()}")  # fmt: skip

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if the server is still running after STOP_TIMEOUT seconds. The log stays."""
        process, self._proc = self._proc, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """The server stopped with SIGSTOP (its connections stay open, requests wait), then SIGCONT."""
        assert self._proc is not None, "the server is not running"
        self._proc.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self._proc.send_signal(signal.SIGCONT)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def four_letter_word(self, word: str, timeout: float = 5.0) -> str:
        """The server's answer to a four-letter command (``srvr`` and ``ruok`` are enabled)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as connection:
            connection.sendall(word.encode("ascii"))
            chunks = []
            while chunk := connection.recv(4096):
                chunks.append(chunk)
        return b"".join(chunks).decode("utf-8", errors="replace")

    def __enter__(self) -> ZooKeeperServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:  # fmt: skip
        self.stop()

    def _write_config(self) -> None:
        settings = {
            "tickTime": str(self.tick_time_ms),
            "dataDir": str(self.work_dir / "data"),
            "clientPort": str(self.port),
            "clientPortAddress": "127.0.0.1",
            "admin.enableServer": "false",
            "minSessionTimeout": str(self.min_session_timeout_ms),
            "maxSessionTimeout": str(self.max_session_timeout_ms),
            "4lw.commands.whitelist": "srvr, ruok",
            **self.extra_config,
        }
        self.config_path.write_text("".join(f"{key}={value}\n" for key, value in settings.items()), encoding="utf-8")

    def _wait_until_serving(self) -> bool:
        """True once `srvr` reports standalone mode (the database is loaded and sessions are accepted)."""
        deadline = time.monotonic() + READY_TIMEOUT
        while self.running and time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if "Mode: standalone" in self.four_letter_word("srvr", timeout=2.0):
                    return True
            time.sleep(0.05)
        return False
