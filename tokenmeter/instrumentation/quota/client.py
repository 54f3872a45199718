"""The app's client of the enforcer: one ``POST /v1/check`` before each LLM call, or none.

A slow enforcer is not a down enforcer, and slowness must not turn into unchecked calls:

- each check waits up to ``timeout`` (default 2 s, ``TOKENMETER_ENFORCER_TIMEOUT``) in all,
  not per phase (:mod:`~tokenmeter.instrumentation.quota.connection`): an enforcer
  paused for a few hundred milliseconds, or queueing a burst of checks, still answers in time;
- a call goes ahead unchecked (``open``, counted) or is refused (``closed``) only when the
  enforcer cannot be reached or answers with an error (then it is not asked again for
  ``cache_seconds``), or gave no answer within the timeout (after
  ``SLOW_CHECKS_BEFORE_SKIP`` such checks in a row it is not asked for ``cache_seconds``);
- a check the client gave up on is released by the id the client gave it, so a call that
  never ran does not hold its room in the enforcer;
- ``deny`` and ``degrade`` answers are reused for ``cache_seconds`` (a script hammering a
  spent budget does not hammer the enforcer);
- an ``allow`` may come with a lease (:mod:`~tokenmeter.instrumentation.quota.leases`): room
  for several calls like it, decided here in microseconds;
- fail-open calls are reported to the enforcer with the next check that gets an answer;
- releases go out without anyone waiting for them.

Requests to the enforcer are made with instrumentation suppressed: they are not LLM
calls and must not carry the app's trace context or baggage.
"""

from __future__ import annotations

import asyncio
import http.client
import itertools
import logging
import secrets
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Final

import httpx
from opentelemetry.instrumentation.utils import suppress_instrumentation

from tokenmeter import semconv
from tokenmeter.instrumentation.attribution import Attribution
from tokenmeter.instrumentation.quota.connection import EnforcerConnection, NotSentError, enforcer_client
from tokenmeter.instrumentation.quota.errors import QuotaVerdict
from tokenmeter.instrumentation.quota.leases import CheckKey, LeaseBook
from tokenmeter.log_once import LogOnce
from tokenmeter.quota_wire import CheckBody, DecisionDocument, LeaseTerms, ReleaseBody, wire_json

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_SECONDS: Final = 2.0  # a whole check; an LLM call takes seconds, a stalled enforcer a fraction
CACHED_ACTIONS: Final = frozenset({"deny", "degrade"})
# Checks in a row without an answer within the timeout before the client stops asking for
# cache_seconds. Each one costs its caller the timeout; an unreachable enforcer is skipped at once.
SLOW_CHECKS_BEFORE_SKIP: Final = 3
# The check's deadline passed (the enforcer is there but did not answer); connect failures skip at once.
_SLOW_ANSWER_ERRORS: Final = (httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout, TimeoutError)
# The check never reached the enforcer: nothing to release, its fail-opens still to report.
_NOT_SENT: Final = (NotSentError,)
_CACHE_LIMIT: Final = 10_000


class _Refused(Exception):  # noqa: N818 - an answer that is not a decision (HTTP error, not JSON)
    """The enforcer answered, but not with a decision: it counted and reserved nothing."""


def check_key(who: Attribution, model: str) -> CheckKey:
    """What a check is about (and what the deny/degrade cache is keyed by)."""
    return who.user or "", who.department or "", who.app or "", model


def verdict_from_document(document: DecisionDocument, fallback_model: str) -> QuotaVerdict:
    """The enforcer's decision document as a verdict."""
    return QuotaVerdict(
        action=document.decision,
        requested_model=document.requested_model or fallback_model,
        effective_model=document.effective_model or fallback_model,
        budget=document.budget,
        scope=document.scope,
        subject=document.subject,
        period=document.period,
        used_tokens=document.used_tokens,
        limit_tokens=document.limit_tokens,
        used_cost=document.used_cost,
        limit_cost=document.limit_cost,
        currency=document.currency,
        ratio=document.ratio,
        resets_at=document.resets_at,
        timezone=document.timezone,
        reason=document.reason,
        reservation_id=document.reservation_id,
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
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        fail_mode: str = "open",
        cache_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._base = url.rstrip("/")
        self._headers = {"authorization": f"Bearer {token}"} if token else {}
        self._timeout = timeout
        self.fail_mode = fail_mode
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[CheckKey, tuple[float, QuotaVerdict]] = {}
        self._unreachable_until = float("-inf")
        self._slow_checks_in_a_row = 0
        self._unreported_fail_open = 0
        self._problems = LogOnce(logger)
        # Check ids: a random prefix per client and a counter (unique across processes and restarts).
        self._id_prefix = secrets.token_hex(6)
        self._ids = itertools.count(1)
        self._connection = EnforcerConnection(self._base, self._headers)
        self.leases = LeaseBook(clock, self._release_lease)
        self._log_filter = _OwnRequestsFilter(self._base)
        logging.getLogger("httpx").addFilter(self._log_filter)
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )

    # --- checks ------------------------------------------------------------------

    def check(self, key: CheckKey, input_tokens: int, max_output_tokens: int | None, *, dry_run: bool = False
              ) -> QuotaVerdict:  # fmt: skip
        """The decision for one call; ``dry_run`` decides without reserving (a route's pre-check)."""
        ready = self._before_request(key, input_tokens, max_output_tokens, dry_run)
        if isinstance(ready, QuotaVerdict):
            return ready
        body = self._body(key, input_tokens, max_output_tokens, ready, dry_run)
        try:
            status, content = self._connection.post("/v1/check", body, self._timeout)
        except (OSError, http.client.HTTPException) as exc:
            return self._unanswered(key, exc, body)
        return self._answered(key, status, content, body)

    async def check_async(self, key: CheckKey, input_tokens: int, max_output_tokens: int | None, *,
                          dry_run: bool = False) -> QuotaVerdict:  # fmt: skip
        ready = self._before_request(key, input_tokens, max_output_tokens, dry_run)
        if isinstance(ready, QuotaVerdict):
            return ready
        client = self._async_client()
        body = self._body(key, input_tokens, max_output_tokens, ready, dry_run)
        try:
            with suppress_instrumentation():
                response = await asyncio.wait_for(client.post(f"{self._base}/v1/check", json=wire_json(body)),
                                                  self._timeout)  # fmt: skip
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            return self._unanswered(key, NotSentError(str(exc)), body)
        except (httpx.HTTPError, TimeoutError) as exc:
            return self._unanswered(key, exc, body)
        return self._answered(key, response.status_code, response.content, body)

    def _before_request(self, key: CheckKey, input_tokens: int, max_output_tokens: int | None, dry_run: bool
                        ) -> QuotaVerdict | int:  # fmt: skip
        """A verdict without asking (a lease, the cache, or the enforcer was just unreachable), else the
        fail-opens to report with this check (taken: given back if the check gets no answer)."""
        leased = self.leases.take(key, input_tokens, max_output_tokens, spend=not dry_run)
        if leased is not None:
            return leased
        now = self._clock()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and cached[0] > now:
                return cached[1]
            if now < self._unreachable_until:
                return self._without_enforcer(key, "the enforcer did not answer moments ago")
            reported, self._unreported_fail_open = self._unreported_fail_open, 0
            return reported

    def _body(self, key: CheckKey, input_tokens: int, max_output_tokens: int | None, fail_open: int, dry_run: bool
              ) -> CheckBody:  # fmt: skip
        user, department, app, model = key
        # Not validated here: the enforcer judges every check, and a check it rejects (a user id over
        # its limit) fails open or closed like no answer, and is counted; a local error would be neither.
        return CheckBody.model_construct(
            user=user, department=department, app=app, model=model, input_tokens=input_tokens,
            max_output_tokens=max_output_tokens, client_fail_open=fail_open, dry_run=dry_run,
            check_id=f"{self._id_prefix}{next(self._ids):x}", lease=not dry_run,
        )  # fmt: skip

    def _answered(self, key: CheckKey, status: int, content: bytes, body: CheckBody) -> QuotaVerdict:
        if status != 200:
            problem = f"HTTP {status}: {content[:200].decode('utf-8', 'replace')}"
            if status == 401:
                problem += " (set TOKENMETER_ENFORCER_TOKEN to the enforcer's token)"
            return self._unanswered(key, _Refused(problem), body)
        try:
            document = DecisionDocument.model_validate_json(content)
        except ValueError as exc:  # (pydantic's ValidationError is one)
            return self._unanswered(key, _Refused(f"not a decision: {exc}"), body)
        verdict = verdict_from_document(document, key[3])
        with self._lock:
            self._slow_checks_in_a_row = 0
        if verdict.action in CACHED_ACTIONS and self._cache_seconds > 0:
            with self._lock:
                if len(self._cache) >= _CACHE_LIMIT:
                    self._cache.clear()
                self._cache[key] = (self._clock() + self._cache_seconds, verdict)
        if document.lease is not None and verdict.reservation_id is not None:
            return self._leased(key, verdict, document.lease, body)
        return verdict

    def _leased(self, key: CheckKey, verdict: QuotaVerdict, lease: LeaseTerms, body: CheckBody) -> QuotaVerdict:
        seconds, default_output = lease.seconds, lease.default_output_tokens
        output = body.max_output_tokens if body.max_output_tokens is not None else default_output
        leased = self.leases.add(key, verdict, tokens=lease.tokens, first_estimate=body.input_tokens + output,
                                 default_output_tokens=default_output, seconds=seconds)  # fmt: skip
        if leased.lease_id is not None:
            lease_id = leased.lease_id
            self._connection.call_later(seconds, lambda: self.leases.expire(lease_id))
        return leased

    def _unanswered(self, key: CheckKey, error: BaseException, body: CheckBody) -> QuotaVerdict:
        reported = body.client_fail_open
        if isinstance(error, (*_NOT_SENT, _Refused)):
            handed_back = reported  # the enforcer never counted them: report them with a later check
        else:
            # Sent, no answer in time: the enforcer may have taken the check. Release it by its id (a call
            # that never ran must not hold room); the release carries the fail-opens it was reporting, and the
            # enforcer counts them unless the check arrived and counted them itself.
            handed_back = 0
            self._send_release(check_id=body.check_id, client_fail_open=reported)
        with self._lock:
            self._unreported_fail_open += handed_back
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
        consequence = "calls go ahead unchecked" if self.fail_mode != "closed" else "calls are refused"
        self._problems.warning(kind, "tokenmeter: %s; %s while it lasts (TOKENMETER_FAIL_MODE=%s; logged once)",
                               message, consequence, self.fail_mode)  # fmt: skip

    def _async_client(self) -> httpx.AsyncClient:
        # An AsyncClient's connections belong to the loop that made them: one per loop.
        loop = asyncio.get_running_loop()
        client = self._async.get(loop)
        if client is None:
            client = enforcer_client(self._headers, self._timeout)
            self._async[loop] = client
        return client

    # --- releases ----------------------------------------------------------------

    def finished(self, verdict: QuotaVerdict) -> None:
        """The call this verdict let through is done: release its reservation or its share of a lease."""
        if verdict.lease_id is not None:
            self.leases.finished(verdict.lease_id)
        elif verdict.reservation_id is not None:
            self.release(verdict.reservation_id)

    def release(self, reservation_id: str) -> None:
        """The call finished; sent without waiting (an unreleased reservation expires in the enforcer)."""
        self._send_release(reservation_id=reservation_id)

    def _release_lease(self, reservation_id: str, unused_tokens: int) -> None:
        self._send_release(reservation_id=reservation_id, unused_tokens=unused_tokens)

    def _send_release(self, **fields: Any) -> None:
        """Sent without waiting; unvalidated like the checks (the enforcer judges it)."""
        self._connection.send("/v1/release", ReleaseBody.model_construct(**fields))

    def flush_sends(self, timeout_s: float = 2.0) -> None:
        """Wait (``timeout_s`` at most) until queued releases have gone out."""
        self._connection.flush(timeout_s)

    def close(self) -> None:
        self.leases.end_all()  # what no call is using goes back now, not when the enforcer times it out
        self._connection.close()
        logging.getLogger("httpx").removeFilter(self._log_filter)
