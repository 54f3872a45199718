"""Flushing at process exit and on SIGTERM, the two ways an instrumented process usually ends.

Servers such as Chatchat's are stopped by signal, and atexit handlers do not run then;
the SIGTERM handler flushes first and then does what the previous handler would have done.
"""

from __future__ import annotations

import atexit
import signal
import threading
from collections.abc import Callable
from types import FrameType

from tokenmeter.instrumentation.safety import report_internal_error


def install_exit_hooks(at_exit: Callable[[], None], at_sigterm: Callable[[], None], sigterm_wait_s: float) -> None:
    """Run ``at_exit`` at interpreter exit, and ``at_sigterm`` (at most ``sigterm_wait_s``) on SIGTERM.

    The SIGTERM handler is only installed from the main thread (Python allows no other).
    """
    atexit.register(at_exit)
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        # The flush runs on a thread of its own, waited for a bounded time: the signal may have
        # interrupted this (main) thread inside a lock the flush needs (stdout's, an exporter's),
        # and the process must stop all the same.
        stopping = threading.Thread(target=at_sigterm, name="tokenmeter-sigterm-flush", daemon=True)
        stopping.start()
        stopping.join(sigterm_wait_s)
        if previous == signal.SIG_IGN:
            return
        if callable(previous):
            previous(signum, frame)
        else:  # default action: restore it and re-deliver, so the process still ends
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.raise_signal(signal.SIGTERM)

    try:
        signal.signal(signal.SIGTERM, on_sigterm)
    except (ValueError, OSError) as exc:
        report_internal_error("SIGTERM handler", exc)
