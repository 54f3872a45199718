"""SIGTERM ends an instrumented process even when the flush it triggers cannot finish."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

APP = Path(__file__).parent / "support" / "sigterm_inside_a_lock_app.py"


def test_sigterm_inside_a_lock_the_flush_needs_still_ends_the_process() -> None:
    process = subprocess.Popen([sys.executable, str(APP)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = process.communicate(timeout=60)  # the handler waits ~8 s for the flush, then gives up
    finally:
        process.kill()
    assert "holding the lock" in out, err
    assert "flushed" not in out  # the flush could not run: it waited for the lock ...
    assert process.returncode == -signal.SIGTERM, err  # ... and the default action still ended the process
