"""The app's client of the enforcer: one short ``POST /v1/check`` before each LLM call.

Never slows or breaks the chat path more than its timeout (default 50 ms per phase):

- ``deny`` and ``degrade`` answers are reused for ``cache_seconds`` (a script hammering
  a spent budget does not hammer the enforcer); ``allow`` / ``warn`` / ``downgrade`` are
  not, because each of those calls must hold its own reservation;
- an enforcer that cannot be reached or answers with an error is not asked again for
  ``cache_seconds``; one that is only slow (a check timed out) is skipped that way after
  ``SLOW_CHECKS_BEFORE_SKIP`` timeouts in a row (and after each further timeout until it
  answers), so one slow answer under load does not let a second of calls through
  unchecked; calls in between follow the fail mode at once
  (``open``: go ahead, counted; ``closed``: refuse);
- fail-open calls are reported to the enforcer with the next check that gets through,
  so its ``/metrics`` shows them too;
- releases go out from the background finisher, never from the caller's thread.

Requests to the enforcer are made with instrumentation suppressed: they are not LLM
calls and must not carry the app's trace context or baggage.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Final

import httpx
from opentelemetry.instrumentation.utils import suppress_instrumentation

from tokenmeter import semconv
from tokenmeter.attribution import Attribution
from tokenmeter.quota_errors import QuotaVerdict

logger = logging.getLogger(__name__)

CACHED_ACTIONS: Final = frozenset({"deny", "degrade"})
RELEASE_TIMEOUT_SECONDS: Final = 0.5  # on the background finisher: keep it short
# Timed-out checks in a row before the client stops asking for cache_seconds. Each one
# costs the caller at most the timeout; an unreachable enforcer is skipped at once.
SLOW_CHECKS_BEFORE_SKIP: Final = 3
# Timeouts that mean a busy enforcer rather than an absent one (read, write, waiting for a
# pooled connection, the async path's overall bound); connect failures skip at once.
_SLOW_ANSWER_ERRORS: Final = (httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout, TimeoutError)
_CACHE_LIMIT: Final = 10_000
CheckKey = tuple[str, str, str, str]  # (user, department, app, model)


def check_key(who: Attribution, model: str) -> CheckKey:
    """What a check is about (and what the deny/degrade cache is keyed by)."""
    return who.user or "", who.department or "", who.app or "", model


def verdict_from_document(document: Mapping[str, Any], fallback_model: str) -> QuotaVerdict:
    """The enforcer's decision document as a verdict; raises ValueError when it is not one."""
    action = document.get("decision")
    if action not in {"allow", "warn", "downgrade", "degrade", "deny"}:
        raise ValueError(f"not a decision: {action!r}")
    resets_at = document.get("resets_at")
    return QuotaVerdict(
        action=str(action),
        requested_model=str(document.get("requested_model") or fallback_model),
        effective_model=str(document.get("effective_model") or fallback_model),
        budget=document.get("budget"),
        scope=document.get("scope"),
        subject=document.get("subject"),
        period=document.get("period"),
        used_tokens=int(document.get("used_tokens") or 0),
        limit_tokens=document.get("limit_tokens"),
        used_cost=document.get("used_cost"),
        limit_cost=document.get("limit_cost"),
        currency=document.get("currency"),
        ratio=float(document.get("ratio") or 0.0),
        resets_at=datetime.fromisoformat(resets_at) if resets_at else None,
        timezone=document.get("timezone"),
        reason=str(document.get("reason") or ""),
        reservation_id=document.get("reservation_id"),
    )


class _OwnRequestsFilter(logging.Filter):
    """Drops httpx's INFO line for requests to the enforcer (hosts such as Chatchat log httpx at
    INFO: two lines per LLM call would be tokenmeter's); other httpx records pass."""

    def __init__(self, base: str) -> None:
        super().__init__()
        self._base = base

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (record.levelno <= logging.INFO and len(args) > 1 and str(args[1]).startswith(self._base))


class QuotaClient:
    def __init__(
        self,
        url: str,
        token: str | None,
        *,
        timeout: float = 0.05,
        fail_mode: str = "open",
        cache_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._base = url.rstrip("/")
        self._headers = {"authorization": f"Bearer {token}"} if token else {}
        self._timeout = httpx.Timeout(timeout)
        self._total_timeout = timeout * 3  # connect + write + read, for the async path's overall bound
        self.fail_mode = fail_mode
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[CheckKey, tuple[float, QuotaVerdict]] = {}
        self._unreachable_until = float("-inf")
        self._slow_checks_in_a_row = 0
        self._unreported_fail_open = 0
        self._logged: set[str] = set()
        self._sync = httpx.Client(headers=self._headers, timeout=self._timeout)
        self._log_filter = _OwnRequestsFilter(self._base)
        logging.getLogger("httpx").addFilter(self._log_filter)
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )

    # --- checks ------------------------------------------------------------------

    def check(self, key: CheckKey, input_tokens: int, max_output_tokens: int | None, *, dry_run: bool = False
              ) -> QuotaVerdict:  # fmt: skip
        """The decision for one call; ``dry_run`` decides without reserving (a route's pre-check)."""
        ready = self._before_request(key)
        if isinstance(ready, QuotaVerdict):
            return ready
        body = self._body(key, input_tokens, max_output_tokens, ready, dry_run)
        try:
            with suppress_instrumentation():
                response = self._sync.post(f"{self._base}/v1/check", json=body)
        except httpx.HTTPError as exc:
            return self._unanswered(key, exc)
        return self._answered(key, response, ready)

    async def check_async(self, key: CheckKey, input_tokens: int, max_output_tokens: int | None, *,
                          dry_run: bool = False) -> QuotaVerdict:  # fmt: skip
        ready = self._before_request(key)
        if isinstance(ready, QuotaVerdict):
            return ready
        client = self._async_client()
        body = self._body(key, input_tokens, max_output_tokens, ready, dry_run)
        try:
            with suppress_instrumentation():
                response = await asyncio.wait_for(
                    client.post(f"{self._base}/v1/check", json=body), self._total_timeout
                )
        except (httpx.HTTPError, TimeoutError) as exc:
            return self._unanswered(key, exc)
        return self._answered(key, response, ready)

    def _before_request(self, key: CheckKey) -> QuotaVerdict | int:
        """A verdict without asking (cached, or the enforcer was just unreachable), else the fail-opens to report."""
        now = self._clock()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and cached[0] > now:
                return cached[1]
            if now < self._unreachable_until:
                return self._without_enforcer(key, "the enforcer did not answer moments ago")
            return self._unreported_fail_open  # subtracted once the enforcer has counted them

    @staticmethod
    def _body(key: CheckKey, input_tokens: int, max_output_tokens: int | None, fail_open: int, dry_run: bool
              ) -> dict[str, Any]:  # fmt: skip
        user, department, app, model = key
        return {
            "user": user, "department": department, "app": app, "model": model, "input_tokens": input_tokens,
            "max_output_tokens": max_output_tokens, "client_fail_open": fail_open, "dry_run": dry_run,
        }  # fmt: skip

    def _answered(self, key: CheckKey, response: httpx.Response, reported: int) -> QuotaVerdict:
        if response.status_code != 200:
            problem = f"HTTP {response.status_code}: {response.text[:200]}"
            if response.status_code == 401:
                problem += " (set TOKENMETER_ENFORCER_TOKEN to the enforcer's token)"
            return self._unanswered(key, RuntimeError(problem))
        try:
            verdict = verdict_from_document(response.json(), key[3])
        except (ValueError, TypeError) as exc:
            return self._unanswered(key, exc)
        with self._lock:
            self._unreported_fail_open -= reported
            self._slow_checks_in_a_row = 0
        if verdict.action in CACHED_ACTIONS and self._cache_seconds > 0:
            with self._lock:
                if len(self._cache) >= _CACHE_LIMIT:
                    self._cache.clear()
                self._cache[key] = (self._clock() + self._cache_seconds, verdict)
        return verdict

    def _unanswered(self, key: CheckKey, error: BaseException) -> QuotaVerdict:
        with self._lock:
            # only an answer resets the count: after a skip, one more timeout skips again
            slow = isinstance(error, _SLOW_ANSWER_ERRORS)
            self._slow_checks_in_a_row += int(slow)
            if not slow or self._slow_checks_in_a_row >= SLOW_CHECKS_BEFORE_SKIP:
                self._unreachable_until = self._clock() + self._cache_seconds
            reason = f"the enforcer at {self._base} did not answer: {type(error).__name__}: {error}"
            self._log_once(type(error).__name__, reason)
            return self._without_enforcer(key, reason)

    def _without_enforcer(self, key: CheckKey, reason: str) -> QuotaVerdict:
        """Open: the call goes ahead (counted, reported later). Closed: refused. Caller holds the lock."""
        fail_open = self.fail_mode != "closed"
        if fail_open:
            self._unreported_fail_open += 1
        return QuotaVerdict(semconv.QUOTA_UNAVAILABLE, key[3], key[3], reason=reason, fail_open=fail_open)

    def _log_once(self, kind: str, message: str) -> None:
        if kind in self._logged:
            logger.debug("tokenmeter: %s", message)
            return
        self._logged.add(kind)
        consequence = "calls go ahead unchecked" if self.fail_mode != "closed" else "calls are refused"
        logger.warning("tokenmeter: %s; %s while it lasts (TOKENMETER_FAIL_MODE=%s; logged once)",
                       message, consequence, self.fail_mode)  # fmt: skip

    def _async_client(self) -> httpx.AsyncClient:
        # An AsyncClient's connections belong to the loop that made them: one per loop.
        loop = asyncio.get_running_loop()
        client = self._async.get(loop)
        if client is None:
            client = httpx.AsyncClient(headers=self._headers, timeout=self._timeout)
            self._async[loop] = client
        return client

    # --- releases ----------------------------------------------------------------

    def release(self, reservation_id: str) -> None:
        """The call finished; best effort (an unreleased reservation expires in the enforcer)."""
        if self._clock() < self._unreachable_until:
            return  # not now: the finisher thread must not wait on an enforcer that is down
        try:
            with suppress_instrumentation():
                self._sync.post(f"{self._base}/v1/release", json={"reservation_id": reservation_id},
                                timeout=RELEASE_TIMEOUT_SECONDS)  # fmt: skip
        except httpx.HTTPError as exc:
            logger.debug("tokenmeter: releasing reservation %s failed: %s", reservation_id, exc)

    def close(self) -> None:
        self._sync.close()
        logging.getLogger("httpx").removeFilter(self._log_filter)
