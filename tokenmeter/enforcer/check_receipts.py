"""Which checks (by the client's own id) arrived, and which the client gave up on before they did.

A client that stops waiting for an answer releases the check by its id, with the fail-opens
that check was reporting. If the check had arrived, its reservation is dropped (the call
never ran) and its fail-opens were counted with it; if it had not, they are counted now and
the check, should it still arrive, reserves and counts nothing. Either way every fail-open is
counted once and a call that never ran holds no room.

The receipts say whether a check arrived, not whether it has reserved yet: a check that must
grow a lease on the coordination server reserves later, on a worker thread. The ledger closes
that gap itself (:meth:`~tokenmeter.enforcer.ledger.ReservationLedger.release_check` remembers an
id it found nothing for, and a later reservation under that id holds nothing).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

DEFAULT_REMEMBERED: Final = 200_000  # ids kept of each kind (~30 MB at most)
DEFAULT_REMEMBER_SECONDS: Final = 600.0  # a check later than this is not waited for by anyone


class RecentIds:
    """Ids seen in the last ``seconds``, at most ``remembered`` of them (the oldest go first).

    Not locked: its owner holds its own lock around every call.
    """

    def __init__(self, remembered: int = DEFAULT_REMEMBERED, seconds: float = DEFAULT_REMEMBER_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self._remembered = remembered
        self._seconds = seconds
        self._clock = clock
        self._ids: OrderedDict[str, float] = OrderedDict()

    def add(self, check_id: str) -> None:
        now = self._clock()
        ids = self._ids
        ids[check_id] = now
        while ids and (len(ids) > self._remembered or next(iter(ids.values())) <= now - self._seconds):
            ids.popitem(last=False)

    def take(self, check_id: str) -> bool:
        """True (and forgotten) when the id was remembered."""
        return self._ids.pop(check_id, None) is not None

    def __len__(self) -> int:
        return len(self._ids)


class CheckReceipts:
    def __init__(self, remembered: int = DEFAULT_REMEMBERED, seconds: float = DEFAULT_REMEMBER_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self._lock = threading.Lock()
        self._arrived = RecentIds(remembered, seconds, clock)
        self._given_up = RecentIds(remembered, seconds, clock)

    def arrive(self, check_id: str) -> bool:
        """The check is here; False when its client gave it up before (then it must hold and count nothing)."""
        with self._lock:
            if self._given_up.take(check_id):
                return False
            self._arrived.add(check_id)
            return True

    def give_up(self, check_id: str) -> bool:
        """The client stopped waiting; True when the check had arrived already."""
        with self._lock:
            if self._arrived.take(check_id):
                return True
            self._given_up.add(check_id)
            return False
