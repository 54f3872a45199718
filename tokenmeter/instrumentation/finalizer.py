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

# Work between two hand-backs of the GIL, at most. A waiting caller thread gets the GIL within
# about this long instead of the interpreter's switch interval (5 ms); handing it back costs a
# sleep(0) system call (~20 µs of CPU on this project's CI machines), so not after every step.
HAND_BACK_EVERY_NS = 200_000


class BackgroundFinalizer:
    def __init__(self, max_pending: int = 10_000, linger_s: float = 0.02) -> None:
        """``linger_s``: how long an idle finisher, once woken by a call, waits for more before it starts."""
        self._max_pending = max_pending
        self._linger_s = linger_s
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
            job = self._next_job()
            try:
                _run(job)
            finally:
                self._queue.task_done()
            hand_back_gil()

    def _next_job(self) -> Job:
        try:
            return self._queue.get_nowait()
        except queue.Empty:
            job = self._queue.get()
            # Let the next calls' jobs gather, then finish them in one run: a thread woken for
            # every call pays the wake-up and cold caches each time (a no-op job cost 24 µs of
            # CPU at one call per ms, 119 µs at one per 10 ms on this project's VMs), and while
            # it sleeps here the callers' submits wake no one.
            time.sleep(self._linger_s)
            hand_back_gil.waited()  # it just waited without the GIL: callers had their turn
            return job

    def _reset_after_fork(self) -> None:
        self._lock = threading.Lock()
        self._queue = queue.Queue(maxsize=self._max_pending)
        self._thread = None


class GilHandBack:
    """Lets a caller thread that waits for the GIL run, once this thread has worked long enough.

    With a backlog of calls to finish, the finisher would otherwise keep the GIL for the
    interpreter's whole switch interval, and a caller waiting for it would see that as
    added latency. Paced by this thread's own CPU time, not the wall clock: time spent
    waiting to get the GIL back is not work, and pacing by it would hand the GIL back at
    every step after each wait (each hand-back then costs a switch interval's wait and
    the system calls of a contended GIL).
    """

    def __init__(self, every_ns: int) -> None:
        self._every_ns = every_ns
        self._last = threading.local()  # thread CPU clocks are per thread

    def __call__(self) -> None:
        if time.thread_time_ns() - getattr(self._last, "ns", 0) >= self._every_ns:
            time.sleep(0)
            self.waited()

    def waited(self) -> None:
        """The thread has just let others run (handed back, or waited for work): pace from now."""
        self._last.ns = time.thread_time_ns()


hand_back_gil = GilHandBack(HAND_BACK_EVERY_NS)


def _run(job: Job) -> None:
    with contained("call finalization"):
        job()
