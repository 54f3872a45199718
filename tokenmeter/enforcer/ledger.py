"""In-flight reservations: what allowed calls may still spend before the store shows it.

A check that lets a call go ahead reserves its estimate against every budget that applies.
The reservation counts until the store can show the call's real usage: after the call is
released (it finished) plus ``settle_seconds`` (one metric export interval and the ingest
behind it), judged by the start time of the snapshot that is used; or, for a call never
released (a crashed client), after ``timeout_seconds``. So usage is counted once, from
the ledger or from the store, never from neither.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from tokenmeter.enforcer.decision import Usage, UsageKey

DEFAULT_SETTLE_SECONDS: Final = 90.0  # the SDK's 60 s metric export interval, plus ingest and refresh
DEFAULT_TIMEOUT_SECONDS: Final = 600.0


@dataclass
class _Reservation:
    amounts: Mapping[UsageKey, Usage]
    created_at: float
    released_at: float | None = None


class ReservationLedger:
    def __init__(
        self,
        settle_seconds: float = DEFAULT_SETTLE_SECONDS,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settle = settle_seconds
        self._timeout = timeout_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._reservations: dict[str, _Reservation] = {}

    def reserve(self, amounts: Mapping[UsageKey, Usage]) -> str | None:
        """Hold ``amounts``; returns the reservation id (None when there is nothing to hold)."""
        if not amounts:
            return None
        reservation_id = uuid.uuid4().hex
        with self._lock:
            self._reservations[reservation_id] = _Reservation(dict(amounts), self._clock())
        return reservation_id

    def release(self, reservation_id: str) -> bool:
        """The call finished; its usage is on its way to the store. False for an unknown id."""
        with self._lock:
            reservation = self._reservations.get(reservation_id)
            if reservation is None or reservation.released_at is not None:
                return False
            reservation.released_at = self._clock()
            return True

    def totals(self, snapshot_started_at: float) -> dict[UsageKey, Usage]:
        """What is still held, for a decision made with a snapshot whose query started then."""
        now = self._clock()
        held: dict[UsageKey, Usage] = {}
        with self._lock:
            for reservation_id, reservation in list(self._reservations.items()):
                settled = (
                    reservation.released_at is not None
                    and reservation.released_at + self._settle <= snapshot_started_at
                )
                if settled or reservation.created_at + self._timeout <= now:
                    del self._reservations[reservation_id]
                    continue
                for key, usage in reservation.amounts.items():
                    held[key] = held.get(key, Usage()).plus(usage)
        return held

    def __len__(self) -> int:
        with self._lock:
            return len(self._reservations)
