"""Start a tokenmeter server process and wait for its JSON "ready" line (serve, enforcer)."""

from __future__ import annotations

import json
import queue
import socket
import subprocess
import threading
from typing import Any

READY_TIMEOUT = 90.0


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_until_ready(args: list[str], env: dict[str, str], stderr_lines: list[str]
                      ) -> tuple[subprocess.Popen[str], dict[str, Any]]:  # fmt: skip
    """The process and its ready line; stderr lines are appended to ``stderr_lines`` as they come."""
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines: queue.Queue[str] = queue.Queue()

    def pump_stdout() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put("")

    def pump_stderr() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            stderr_lines.append(line)

    threading.Thread(target=pump_stdout, daemon=True).start()
    threading.Thread(target=pump_stderr, daemon=True).start()
    name = " ".join(args[2:4])
    try:
        line = lines.get(timeout=READY_TIMEOUT)
    except queue.Empty:
        process.kill()
        process.wait(30)
        raise RuntimeError(f"{name} did not become ready: {''.join(stderr_lines)}") from None
    if not line:
        process.wait(10)
        raise RuntimeError(f"{name} exited ({process.returncode}): {''.join(stderr_lines)}")
    return process, json.loads(line)
