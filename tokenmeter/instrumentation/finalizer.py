"""Finish metered calls off the caller's critical path.

Counting a long prompt or completion with a real tokenizer takes from tens of
microseconds to milliseconds. The caller has its answer by then, so the count,
the cost, the span's last attributes and the metrics are done on one background
thread. Nothing is dropped: when the queue is full the caller's thread does the
work itself (back-pressure instead of loss), and `flush()` drains the queue at
exit, on SIGTERM, and in tests.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable

from tokenmeter.instrumentation.safety import contained

Job = Callable[[], None]


class BackgroundFinalizer:
    def __init__(self, max_pending: int = 10_000) -> None:
        self._max_pending = max_pending
        self._lock = threading.Lock()
        self._queue: queue.Queue[Job] = queue.Queue(maxsize=max_pending)
        self._thread: threading.Thread | None = None
        if hasattr(os, "register_at_fork"):
            # A forked worker (gunicorn, multiprocessing) inherits the queue but not the thread.
            os.register_at_fork(after_in_child=self._reset_after_fork)

    def submit(self, job: Job) -> None:
        self._ensure_thread()
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            _run(job)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every submitted job has run; False if the timeout came first."""
        if self._thread is None:
            return True
        done = threading.Event()

        def waiter() -> None:
            self._queue.join()
            done.set()

        threading.Thread(target=waiter, name="tokenmeter-flush", daemon=True).start()
        return done.wait(timeout)

    def _ensure_thread(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="tokenmeter-finalizer", daemon=True)
                self._thread.start()

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            try:
                _run(job)
            finally:
                self._queue.task_done()
            # Hand the GIL back between jobs. With a backlog this thread would otherwise
            # keep it for the interpreter's whole switch interval (5 ms), and a caller
            # thread waiting for it would see that as added latency.
            time.sleep(0)

    def _reset_after_fork(self) -> None:
        self._lock = threading.Lock()
        self._queue = queue.Queue(maxsize=self._max_pending)
        self._thread = None


def _run(job: Job) -> None:
    with contained("call finalization"):
        job()
