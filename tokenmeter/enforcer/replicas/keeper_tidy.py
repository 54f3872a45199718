"""Removing the coordination nodes no budget needs any more: lease nodes of past periods and old
departure records, at most once per ``TIDY_EVERY_SECONDS`` (any replica may do it, from its refresh).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import Final

from tokenmeter.enforcer.replicas.keeper_session import KeeperSession
from tokenmeter.enforcer.replicas.replica_departures import ReplicaDepartures

# Past this age a period's lease nodes are no budget's current period (a month is the longest),
# and a departure record is dropped (a lease node naming that replica still, untouched since, makes
# the next reader record the departure again: its lease counts settle_seconds more, once).
KEEP_SECONDS: Final = 32 * 86400.0
TIDY_EVERY_SECONDS: Final = 3600.0


class KeeperTidy:
    """The tidy-up of the coordination root, from this replica's refresh."""

    def __init__(self, session: KeeperSession, departures: ReplicaDepartures, clock: Callable[[], float]) -> None:
        self._session = session
        self._departures = departures
        self._clock = clock  # wall clock: period starts and departure times are wall-clock times
        self._next_tidy = float("-inf")

    def tidy(self) -> int:
        """Remove the lease nodes of periods and the departure records older than ``KEEP_SECONDS`` (at most
        once per ``TIDY_EVERY_SECONDS``; any replica may do it). Returns how many nodes went."""
        from kazoo.exceptions import NoNodeError

        now = self._clock()
        client = self._session.client
        if now < self._next_tidy or client is None:
            return 0
        self._next_tidy = now + TIDY_EVERY_SECONDS
        root, removed = self._session.url.root, 0
        try:
            for child in client.get_children(f"{root}/leases"):
                if child.isdigit() and int(child) < now - KEEP_SECONDS:
                    with contextlib.suppress(NoNodeError):
                        client.delete(f"{root}/leases/{child}", recursive=True)
                        removed += 1
            for replica in client.get_children(f"{root}/departed"):
                path = f"{root}/departed/{replica}"
                with contextlib.suppress(NoNodeError, ValueError, KeyError, TypeError):
                    if float(json.loads(client.get(path)[0])["at"]) < now - KEEP_SECONDS:
                        client.delete(path)
                        removed += 1
                        self._departures.forget(replica)
        except Exception as exc:  # (kazoo's timeouts are no KazooException) a tidy-up must not fail the refresh
            self._session.failed(exc)
        return removed
