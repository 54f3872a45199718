"""What the quota client remembers between checks, under one lock.

- ``deny`` and ``degrade`` answers, reused for ``cache_seconds``;
- whether the enforcer is being skipped: it could not be reached or answered with an error
  (skipped at once), or gave no answer in time ``SLOW_CHECKS_BEFORE_SKIP`` checks in a row;
- the fail-open calls not yet reported to the enforcer. A check takes them to report them;
  a check the enforcer never saw hands them back. Taking, handing back and counting a new
  one happen under the same lock as the skip decision, so none is lost or reported twice.

While the enforcer is skipped or did not answer, a call goes ahead (``fail_mode`` "open",
counted as a fail-open) or is refused ("closed").
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Final

import httpx

from tokenmeter import semconv
from tokenmeter.instrumentation.quota.errors import QuotaVerdict
from tokenmeter.instrumentation.quota.leases import CheckKey
from tokenmeter.log_once import LogOnce

CACHED_ACTIONS: Final = frozenset({"deny", "degrade"})
# Checks in a row without an answer within the timeout before the client stops asking for
# cache_seconds. Each one costs its caller the timeout; an unreachable enforcer is skipped at once.
SLOW_CHECKS_BEFORE_SKIP: Final = 3
# The check's deadline passed (the enforcer is there but did not answer); connect failures skip at once.
_SLOW_ANSWER_ERRORS: Final = (httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout, TimeoutError)
_CACHE_LIMIT: Final = 10_000


class CheckMemory:
    def __init__(self, base: str, fail_mode: str, cache_seconds: float, clock: Callable[[], float],
                 problems: LogOnce) -> None:  # fmt: skip
        self._base = base  # the enforcer's URL, for the log line
        self.fail_mode = fail_mode
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._problems = problems
        self._lock = threading.Lock()
        self._cache: dict[CheckKey, tuple[float, QuotaVerdict]] = {}
        self._unreachable_until = float("-inf")
        self._slow_checks_in_a_row = 0
        self._unreported_fail_open = 0

    def before_check(self, key: CheckKey) -> QuotaVerdict | int:
        """A verdict without asking (the cache, or the enforcer was just unreachable), else the fail-opens
        to report with this check (taken: handed back with ``unanswered`` if the check gets no answer)."""
        now = self._clock()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and cached[0] > now:
                return cached[1]
            if now < self._unreachable_until:
                return self._without_enforcer_locked(key, "the enforcer did not answer moments ago")
            reported, self._unreported_fail_open = self._unreported_fail_open, 0
            return reported

    def answered(self, key: CheckKey, verdict: QuotaVerdict) -> None:
        """The enforcer decided: it is answering again, and a deny or degrade is reused for a while."""
        with self._lock:
            self._slow_checks_in_a_row = 0
        # A verdict a routing rule chose is about its question's tier: it is not reused for another question.
        if verdict.action in CACHED_ACTIONS and verdict.route_rule is None and self._cache_seconds > 0:
            with self._lock:
                if len(self._cache) >= _CACHE_LIMIT:
                    self._cache.clear()
                self._cache[key] = (self._clock() + self._cache_seconds, verdict)

    def unanswered(self, key: CheckKey, error: BaseException, handed_back: int) -> QuotaVerdict:
        """The check got no decision (``error``); ``handed_back``: its fail-opens the enforcer never counted."""
        with self._lock:
            self._unreported_fail_open += handed_back
            # only an answer resets the count: after a skip, one more timeout skips again
            slow = isinstance(error, _SLOW_ANSWER_ERRORS)
            self._slow_checks_in_a_row += int(slow)
            if not slow or self._slow_checks_in_a_row >= SLOW_CHECKS_BEFORE_SKIP:
                self._unreachable_until = self._clock() + self._cache_seconds
            reason = f"the enforcer at {self._base} did not answer: {type(error).__name__}: {error}"
            self._log_once(type(error).__name__, reason)
            return self._without_enforcer_locked(key, reason)

    def _without_enforcer_locked(self, key: CheckKey, reason: str) -> QuotaVerdict:
        """Open: the call goes ahead (counted, reported later). Closed: refused."""
        fail_open = self.fail_mode != "closed"
        if fail_open:
            self._unreported_fail_open += 1
        return QuotaVerdict(semconv.QUOTA_UNAVAILABLE, key[3], key[3], reason=reason, fail_open=fail_open)

    def _log_once(self, kind: str, message: str) -> None:
        consequence = "calls go ahead unchecked" if self.fail_mode != "closed" else "calls are refused"
        self._problems.warning(kind, "tokenmeter: %s; %s while it lasts (TOKENMETER_FAIL_MODE=%s; logged once)",
                               message, consequence, self.fail_mode)  # fmt: skip
