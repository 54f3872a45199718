"""`chatchat start`'s kill() becomes SIGTERM, a wait, then SIGKILL: its servers get to export their usage.

Real child processes standing in for Chatchat's API server (the real one is in
test_chatchat_integration.py): one that exports and exits on SIGTERM, one that ignores it.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from tokenmeter.integrations.chatchat_launcher import GracefulStopProcess


def server_that_exports_on_sigterm(ready: Any, exported: str) -> None:
    def on_sigterm(_signum: int, _frame: FrameType | None) -> None:
        Path(exported).write_text("usage exported", encoding="utf-8")
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_sigterm)
    ready.set()
    time.sleep(600)


def server_that_ignores_sigterm(ready: Any, got_sigterm: Any) -> None:
    signal.signal(signal.SIGTERM, lambda _signum, _frame: got_sigterm.set())
    ready.set()
    while True:
        time.sleep(600)


SPAWN = multiprocessing.get_context("spawn")


class SpawnedGracefulStopProcess(GracefulStopProcess):
    """Spawned, as Chatchat starts its servers (``mp.set_start_method("spawn")``), not forked from pytest's threads."""

    _start_method = "spawn"

    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        from multiprocessing.popen_spawn_posix import Popen

        return Popen(process_obj)


@pytest.fixture
def stop_seconds() -> Iterator[None]:
    yield
    GracefulStopProcess.stop_seconds = 30.0
    for cls in (GracefulStopProcess, SpawnedGracefulStopProcess):
        cls._hurry = False


def started(target: Any, *args: Any) -> GracefulStopProcess:
    ready = SPAWN.Event()
    process = SpawnedGracefulStopProcess(target=target, args=(ready, *args), daemon=True)
    process.start()
    assert ready.wait(60), "the stand-in server did not start"
    return process


def test_kill_asks_with_sigterm_first_and_the_server_exports(tmp_path: Path, stop_seconds: None) -> None:
    exported = tmp_path / "exported"
    process = started(server_that_exports_on_sigterm, str(exported))
    process.kill()  # what Chatchat's launcher calls when it is stopped
    assert exported.read_text(encoding="utf-8") == "usage exported"
    assert process.exitcode == 0


def test_a_server_that_does_not_stop_is_killed_after_the_grace_period(stop_seconds: None) -> None:
    GracefulStopProcess.stop_seconds = 0.5
    got_sigterm = SPAWN.Event()
    process = started(server_that_ignores_sigterm, got_sigterm)
    process.kill()
    process.join(60)
    assert got_sigterm.is_set()  # it was asked ...
    assert process.exitcode == -signal.SIGKILL  # ... and then killed


def test_a_second_stop_signal_while_waiting_kills_at_once(stop_seconds: None) -> None:
    """Chatchat turns SIGINT/SIGTERM into KeyboardInterrupt; a second one means: stop now."""
    GracefulStopProcess.stop_seconds = 600  # the test would hang if the second signal were ignored
    got_sigterm = SPAWN.Event()
    process = started(server_that_ignores_sigterm, got_sigterm)

    def like_chatchats_handler(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt("SIGUSR1 received")

    def press_ctrl_c_again() -> None:  # once the server was asked, i.e. while kill() waits
        if got_sigterm.wait(60):
            os.kill(os.getpid(), signal.SIGUSR1)

    previous = signal.signal(signal.SIGUSR1, like_chatchats_handler)
    try:
        threading.Thread(target=press_ctrl_c_again, daemon=True).start()
        process.kill()
    finally:
        signal.signal(signal.SIGUSR1, previous)
    process.join(60)
    assert process.exitcode == -signal.SIGKILL
    # and nobody waits any more: the next server is killed without asking
    next_got_sigterm = SPAWN.Event()
    next_process = started(server_that_ignores_sigterm, next_got_sigterm)
    next_process.kill()
    next_process.join(60)
    assert next_process.exitcode == -signal.SIGKILL and not next_got_sigterm.is_set()
