"""Leases: room the enforcer holds for several calls like one the app asked about.

When every budget of a call is far from its first warning threshold, the enforcer may answer
``allow`` with a lease: the reservation holds room for ``calls`` such calls (``tokens`` in all).
The app then decides the next calls of the same check key (user, department, app, model)
itself, in microseconds, while their estimates fit in what is left and for ``seconds`` at most.
Nothing is spent that the enforcer has not reserved, so a lease adds no overspend; near a
threshold the enforcer grants none and every call is checked by itself.

A lease ends when it runs out or expires; once the last of its calls has finished, the
reservation is released with the tokens that went unused (freed at once in the enforcer; the
rest settles like any finished call's reservation).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from tokenmeter.instrumentation.quota.errors import QuotaVerdict

CheckKey = tuple[str, str, str, str]  # (user, department, app, model)
_LEASE_LIMIT: Final = 10_000  # leases held at once; beyond it new ones are not kept


@dataclass
class Lease:
    key: CheckKey
    reservation_id: str
    verdict: QuotaVerdict  # "allow", with lease_id set: what each of its calls is told
    tokens_left: int
    default_output_tokens: int  # a call's output estimate when it gives no max_tokens
    expires_at: float
    in_flight: int = 1  # the call that asked for it
    ended: bool = False


class LeaseBook:
    """The leases this process holds, one per check key. Thread-safe."""

    def __init__(self, clock: Callable[[], float], release: Callable[[str, int], None]) -> None:
        self._clock = clock
        self._release = release  # (reservation id, unused tokens): sent without waiting
        self._lock = threading.Lock()
        self._by_key: dict[CheckKey, Lease] = {}
        self._by_id: dict[str, Lease] = {}

    def take(self, key: CheckKey, input_tokens: int, max_output_tokens: int | None, *, spend: bool = True
             ) -> QuotaVerdict | None:  # fmt: skip
        """The lease's verdict for one more call when it fits (spent unless ``spend`` is False), else None."""
        ended: Lease | None = None
        with self._lock:
            lease = self._by_key.get(key)
            if lease is None:
                return None
            estimate = input_tokens + (max_output_tokens if max_output_tokens is not None
                                       else lease.default_output_tokens)  # fmt: skip
            if self._clock() < lease.expires_at and estimate <= lease.tokens_left:
                if spend:
                    lease.tokens_left -= estimate
                    lease.in_flight += 1
                return lease.verdict
            ended = self._end_locked(lease)  # ran out or expired: the next call asks the enforcer
        if ended is not None:
            self._release(ended.reservation_id, ended.tokens_left)
        return None

    def add(self, key: CheckKey, verdict: QuotaVerdict, *, tokens: int, first_estimate: int,
            default_output_tokens: int, seconds: float) -> QuotaVerdict:  # fmt: skip
        """Keep a lease granted with ``verdict`` (for its first call, in flight); the verdict that call gets."""
        assert verdict.reservation_id is not None
        leased = dataclasses.replace(verdict, reservation_id=None, lease_id=verdict.reservation_id)
        lease = Lease(key, verdict.reservation_id, leased, tokens - first_estimate, default_output_tokens,
                      self._clock() + seconds)  # fmt: skip
        replaced: Lease | None = None
        with self._lock:
            if len(self._by_id) >= _LEASE_LIMIT:  # too many at once: this call holds its room alone
                lease.ended = True
            old = self._by_key.get(key)
            if old is not None:
                replaced = self._end_locked(old)
            self._by_id[lease.reservation_id] = lease
            if not lease.ended:
                self._by_key[key] = lease
        if replaced is not None:
            self._release(replaced.reservation_id, replaced.tokens_left)
        return leased

    def finished(self, lease_id: str) -> None:
        """One of the lease's calls is done."""
        with self._lock:
            lease = self._by_id.get(lease_id)
            if lease is None:
                return
            lease.in_flight -= 1
            done = lease.ended and lease.in_flight == 0
            if done:
                del self._by_id[lease_id]
        if done:
            self._release(lease.reservation_id, lease.tokens_left)

    def expire(self, lease_id: str) -> None:
        """Its time is up (a timer on the connection's loop): no more calls from it."""
        ended: Lease | None = None
        with self._lock:
            lease = self._by_id.get(lease_id)
            if lease is not None and not lease.ended:
                ended = self._end_locked(lease)
        if ended is not None:
            self._release(ended.reservation_id, ended.tokens_left)

    def end_all(self) -> None:
        """At shutdown: give back what no call is using."""
        with self._lock:
            leases = list(self._by_id.values())
            for lease in leases:
                lease.ended = True
            self._by_key.clear()
            idle = [lease for lease in leases if lease.in_flight == 0]
            for lease in idle:
                del self._by_id[lease.reservation_id]
        for lease in idle:
            self._release(lease.reservation_id, lease.tokens_left)

    def _end_locked(self, lease: Lease) -> Lease | None:
        """Mark it ended; returns it when it should be released now (no call of it in flight)."""
        lease.ended = True
        if self._by_key.get(lease.key) is lease:
            del self._by_key[lease.key]
        if lease.in_flight == 0:
            self._by_id.pop(lease.reservation_id, None)
            return lease
        return None

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_id)
