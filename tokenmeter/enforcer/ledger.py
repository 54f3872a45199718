"""In-flight reservations: what allowed calls may still spend before the store shows it.

A check that lets a call go ahead reserves its estimate against every budget that applies.
The reservation counts until the store can show the call's real usage: after the call is
released (it finished) plus ``settle_seconds`` (one metric export interval and the ingest
behind it), judged by the start time of the snapshot that is used; or, for a call never
released (a crashed client), after ``timeout_seconds``. So a call's usage always counts:
from the ledger, from the store, or, between its usage reaching the store and its
reservation settling, from both (which errs towards refusing early).

Totals are kept as running sums and expired from two time-ordered queues, so a check
costs the same with 10 or 500,000 reservations in flight (5,000 checks/s x 90 s settle).

A reservation may name the client's own id for its check (``check_id``): a client that gave
up waiting for the answer releases by that id, and since that call never ran its reservation
is dropped at once, instead of holding room until ``timeout_seconds`` (a release that overtakes
its check: :mod:`~tokenmeter.enforcer.check_receipts`; a release that finds nothing yet is
remembered, so a check still deciding on a worker thread reserves nothing). A release may also say how much of a
reservation went unused (a lease's calls that were never made): that part is dropped at once,
the rest settles like any finished call.
"""

from __future__ import annotations

import itertools
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Final

from tokenmeter.enforcer.check_receipts import RecentIds
from tokenmeter.enforcer.decision import Usage, UsageKey

DEFAULT_SETTLE_SECONDS: Final = 90.0  # the SDK's 60 s metric export interval, plus ingest and refresh
DEFAULT_TIMEOUT_SECONDS: Final = 600.0


# (budget keys, tokens, (currency, amount) pairs, created at): only strings and numbers, so
# the garbage collector stops tracking it; with 500,000 in flight a full collection would
# otherwise walk millions of objects in the middle of a check.
_Reservation = tuple[tuple[UsageKey, ...], int, tuple[tuple[str, Decimal], ...], float]


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
        self._released: set[str] = set()
        # Ids: a random prefix per ledger and a counter; uuid4 per check cost a syscall.
        self._id_prefix = secrets.token_hex(8)
        self._ids = itertools.count(1)
        self._held: dict[UsageKey, Usage] = {}
        # Both queues are in clock order because entries are appended as the clock advances.
        self._by_creation: deque[tuple[float, str]] = deque()
        self._by_release: deque[tuple[float, str]] = deque()
        self._check_ids: dict[str, str] = {}  # the client's check id -> reservation id
        self._checks_of: dict[str, str] = {}  # reservation id -> check id
        # Check ids released before their check reserved (it was still deciding): they must hold nothing.
        self._given_up = RecentIds(seconds=timeout_seconds, clock=clock)

    def reserve(self, amounts: Mapping[UsageKey, Usage], check_id: str | None = None) -> str | None:
        """Hold ``amounts``; returns the reservation id (None when there is nothing to hold, or when the
        client already gave up on this check)."""
        if not amounts:
            return None
        with self._lock:
            if check_id is not None and self._given_up.take(check_id):
                return None
            reservation_id = f"{self._id_prefix}{next(self._ids):x}"
            now = self._clock()
            for key, usage in amounts.items():
                self._held[key] = self._held[key].plus(usage) if key in self._held else usage
            # One call's estimate is the same for every budget it is held against.
            usage = next(iter(amounts.values()))
            if any(other is not usage and other != usage for other in amounts.values()):
                raise ValueError("a reservation holds one estimate against each of its budgets")
            self._reservations[reservation_id] = (tuple(amounts), usage.tokens, tuple(usage.cost.items()), now)
            self._by_creation.append((now, reservation_id))
            if check_id is not None:
                self._check_ids[check_id] = reservation_id
                self._checks_of[reservation_id] = check_id
        return reservation_id

    def release(self, reservation_id: str, unused_tokens: int = 0) -> bool:
        """The call finished; its usage is on its way to the store. False for an unknown id.

        ``unused_tokens`` of the reservation were never spent (a lease's calls not made): they are
        dropped now, with the same share of its cost; the rest settles.
        """
        with self._lock:
            if reservation_id not in self._reservations or reservation_id in self._released:
                return False
            if unused_tokens > 0:
                self._give_back(reservation_id, unused_tokens)
            self._released.add(reservation_id)
            self._by_release.append((self._clock(), reservation_id))
            return True

    def release_check(self, check_id: str) -> bool:
        """The client gave up waiting for this check's answer: its call never ran, so whatever the
        check reserved is dropped at once (nothing to settle). False when it held nothing; then a
        reservation it makes later (it was still deciding) holds nothing either."""
        with self._lock:
            reservation_id = self._check_ids.get(check_id)
            if reservation_id is None:
                self._given_up.add(check_id)
                return False
            self._drop(reservation_id)
            return True

    def _give_back(self, reservation_id: str, unused_tokens: int) -> None:
        keys, tokens, costs, created_at = self._reservations[reservation_id]
        unused_tokens = min(unused_tokens, tokens)
        share = Decimal(unused_tokens) / tokens if tokens else Decimal(0)
        unused = Usage(unused_tokens, {currency: amount * share for currency, amount in costs})
        for key in keys:
            self._held[key] = self._held[key].minus(unused)
        left = Usage(tokens, dict(costs)).minus(unused)
        self._reservations[reservation_id] = (keys, left.tokens, tuple(left.cost.items()), created_at)

    def totals(self, snapshot_started_at: float) -> Mapping[UsageKey, Usage]:
        """What is still held, for a decision made with a snapshot whose query started then.

        The mapping is the ledger's own; read it before the next reserve or totals call.
        """
        with self._lock:
            settled_before = snapshot_started_at - self._settle
            while self._by_release and self._by_release[0][0] <= settled_before:
                self._drop(self._by_release.popleft()[1])
            expired_before = self._clock() - self._timeout
            while self._by_creation and self._by_creation[0][0] <= expired_before:
                self._drop(self._by_creation.popleft()[1])
            return self._held

    def _drop(self, reservation_id: str) -> None:
        reservation = self._reservations.pop(reservation_id, None)
        if reservation is None:  # already dropped through the other queue
            return
        self._released.discard(reservation_id)
        check_id = self._checks_of.pop(reservation_id, None)
        if check_id is not None:
            self._check_ids.pop(check_id, None)
        keys, tokens, costs, _created_at = reservation
        usage = Usage(tokens, dict(costs))
        for key in keys:
            remaining = self._held[key].minus(usage)
            if remaining.is_zero():
                del self._held[key]
            else:
                self._held[key] = remaining

    def __len__(self) -> int:
        with self._lock:
            return len(self._reservations)
