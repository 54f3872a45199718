"""`chatchat start` stops its servers with SIGTERM and waits, instead of SIGKILL at once.

Chatchat 0.3's launcher (``chatchat/startup.py``) runs the API server (and the WebUI) in
spawned ``multiprocessing.Process`` children, turns SIGINT and SIGTERM into
``KeyboardInterrupt``, and in a ``finally`` calls ``kill()`` on every child: SIGKILL. The
API server, where the LLM calls are metered, never got to export the usage counted since
its last export, so Ctrl-C, ``kill <launcher pid>`` and systemd's stop lost up to a whole
``OTEL_METRIC_EXPORT_INTERVAL`` of calls.

Under ``opentelemetry-instrument`` the launcher process loads tokenmeter too. When it
imports ``chatchat.startup``, that module's ``Process`` becomes :class:`GracefulStopProcess`,
whose ``kill()`` first sends SIGTERM and waits up to ``TOKENMETER_CHATCHAT_STOP_SECONDS``:
uvicorn finishes the requests in flight, and tokenmeter exports the usage as the server
exits. Chatchat's SIGKILL follows, a no-op on a server that has ended. A second Ctrl-C
(or SIGTERM) while it waits kills at once, as asked.

This module is imported by the spawned children too (they unpickle their process
object), so it stays light.
"""

from __future__ import annotations

import logging
import multiprocessing
from typing import Any, ClassVar, Final

from tokenmeter.instrumentation.safety import contained

logger = logging.getLogger(__name__)

STARTUP_MODULE: Final = "chatchat.startup"
_SITE: Final = "Chatchat graceful stop"


class GracefulStopProcess(multiprocessing.Process):
    """A ``multiprocessing.Process`` whose ``kill()`` asks with SIGTERM first."""

    # Class attributes: Chatchat constructs the processes itself; set from the settings.
    stop_seconds: ClassVar[float] = 30.0
    # After a second stop signal nobody waits any more, for this process or the next.
    _hurry: ClassVar[bool] = False

    def kill(self) -> None:
        try:
            with contained(_SITE):
                self._stop_gracefully()
        except KeyboardInterrupt:  # Chatchat's handler turns a second SIGINT/SIGTERM into this
            type(self)._hurry = True
            logger.warning("tokenmeter: second stop signal, killing %s now", self.name)
        super().kill()  # what Chatchat did; nothing left to kill after a graceful stop

    def _stop_gracefully(self) -> None:
        if self._hurry or self.pid is None or self.exitcode is not None:
            return  # hurried, never started, or ended already
        logger.info("tokenmeter: stopping %s with SIGTERM (up to %g s) so it can export its usage",
                    self.name, self.stop_seconds)  # fmt: skip
        self.terminate()
        self.join(self.stop_seconds)
        if self.exitcode is None:
            logger.warning(
                "tokenmeter: %s did not stop within TOKENMETER_CHATCHAT_STOP_SECONDS=%g; killing it. "
                "Usage counted since its last export may be lost; raise the setting (and systemd's "
                "TimeoutStopSec) if its requests take longer",
                self.name, self.stop_seconds,
            )  # fmt: skip


def make_stops_graceful(module: Any) -> None:
    """Post-import hook of ``chatchat.startup``: its servers are stopped gracefully."""
    with contained(_SITE):  # on failure Chatchat stops as before
        from tokenmeter.settings import get_settings

        stop_seconds = get_settings().chatchat_stop_seconds
        if stop_seconds <= 0:
            return
        if getattr(module, "Process", None) is not multiprocessing.Process:
            logger.warning(
                "tokenmeter: %s no longer starts its servers with multiprocessing.Process; they are "
                "stopped as Chatchat stops them (usage since the last export may be lost)",
                STARTUP_MODULE,
            )
            return
        GracefulStopProcess.stop_seconds = stop_seconds
        module.Process = GracefulStopProcess
