"""The enforcer's refresh loop, on its own thread with its own store client.

Every ``refresh_seconds`` (sooner when a changed policy file settles, or when woken) one tick
reloads a changed policy file, reads the usage snapshot checks decide on, gives back spare lease
room (replicas), writes ``quota_utilisation`` (every 30 s), and writes threshold crossings and
decision changes to ``quota_events``. When the store cannot be read the outage is logged once and
counted, shown by ``/healthz``, and checks go on deciding on the last snapshot and the reservations.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from tokenmeter.enforcer.admission import Enforcer
from tokenmeter.enforcer.enforcer_stats import EnforcerStats
from tokenmeter.enforcer.policy_reloader import PolicyReloader
from tokenmeter.enforcer.quota_events import QuotaEventLog
from tokenmeter.enforcer.quota_utilisation import UtilisationWriter

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

logger = logging.getLogger(__name__)

_FIRST_REFRESH_WAIT_SECONDS: Final = 30.0


class UsageRefresher:
    def __init__(
        self,
        open_client: Callable[[], Client],
        enforcer: Enforcer,
        refresh_seconds: float,
        *,
        policy_file: PolicyReloader,
        utilisation: UtilisationWriter,
        events: QuotaEventLog,
        stats: EnforcerStats,
        charge_wallets: bool = True,
    ) -> None:
        self.last_error: str | None = None  # why usage cannot be read from the store; None while it can
        self._open_client = open_client
        self._enforcer = enforcer
        self._refresh_seconds = refresh_seconds
        self._policy_file = policy_file
        self._utilisation = utilisation
        self._events = events
        self._stats = stats
        self._charge_wallets = charge_wallets  # one writer of charges per store: off on all replicas but one
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._first_refresh = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the loop; returns after the first refresh (or its failure, or 30 s)."""
        self._thread = threading.Thread(target=self._run, name="tokenmeter-enforcer-refresh", daemon=True)
        self._thread.start()
        self._first_refresh.wait(_FIRST_REFRESH_WAIT_SECONDS)

    def wake(self) -> None:
        """Refresh soon, without waiting out the interval."""
        self._wake.set()

    def stop(self) -> None:
        """End the loop after writing what is pending (waits up to 30 s)."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        client: Client | None = None
        first = True
        while not self._stopping.is_set():
            try:
                if client is None:
                    client = self._open_client()
                    self._events.load_levels(client, self._enforcer.now())
                self._tick(client)
            except Exception as exc:
                self._failed(exc)
            if first:
                first = False
                self._first_refresh.set()
            self._wake.wait(self._next_wait())
            self._wake.clear()
        if client is not None:
            self._write_at_stop(client)

    def _write_at_stop(self, client: Client) -> None:
        try:
            self._events.flush(client)
            self._utilisation.write(client)
        except Exception as exc:
            logger.warning("quota events or utilisation not written at stop (%d events dropped): %s",
                           self._events.pending(), exc)  # fmt: skip
        finally:
            client.close()  # chDB: a process opens one store path at a time; let the next one open

    def _next_wait(self) -> float:
        """The refresh interval, shorter when a changed policy file settles before it."""
        due = self._policy_file.seconds_until_due()
        return self._refresh_seconds if due is None else min(self._refresh_seconds, due + 0.01)

    def _tick(self, client: Client) -> None:
        self._policy_file.reload_if_changed(client, self._enforcer, self._failed)
        if self._charge_wallets:
            self._enforcer.charge_wallets(client)
        snapshot = self._enforcer.refresh(client)
        self._enforcer.give_back_headroom()
        if self._utilisation.due():
            self._utilisation.write(client)
        if self.last_error is not None:
            logger.warning("enforcer: reading usage from the store works again")
            self.last_error = None
        self._events.on_snapshot(self._enforcer.policy, snapshot, self._enforcer.now())
        self._events.flush(client)

    def _failed(self, exc: Exception) -> None:
        self._stats.count_refresh_error()
        message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if self.last_error is None:  # once per outage, not every few seconds
            logger.warning("enforcer: cannot read usage from the store (%s); deciding on the last "
                           "snapshot and the reservations until it works again", message)  # fmt: skip
        self.last_error = message
