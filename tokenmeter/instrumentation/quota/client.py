"""The app's client of the enforcer: one ``POST /v1/check`` before each LLM call, or none.

A slow enforcer is not a down enforcer, and slowness must not turn into unchecked calls:

- each check waits up to ``timeout`` (default 2 s, ``TOKENMETER_ENFORCER_TIMEOUT``) in all,
  not per phase (:mod:`~tokenmeter.instrumentation.quota.connection`): an enforcer
  paused for a few hundred milliseconds, or queueing a burst of checks, still answers in time;
- a call goes ahead unchecked (``open``, counted) or is refused (``closed``) only when the
  enforcer cannot be reached or answers with an error (then it is not asked again for
  ``cache_seconds``), or gave no answer within the timeout (after
  ``SLOW_CHECKS_BEFORE_SKIP`` such checks in a row it is not asked for ``cache_seconds``;
  :mod:`~tokenmeter.instrumentation.quota.check_memory`);
- a check the client gave up on is released by the id the client gave it, so a call that
  never ran does not hold its room in the enforcer;
- ``deny`` and ``degrade`` answers are reused for ``cache_seconds`` (a script hammering a
  spent budget does not hammer the enforcer);
- an ``allow`` may come with a lease (:mod:`~tokenmeter.instrumentation.quota.leases`): room
  for several calls like it, decided here in microseconds;
- fail-open calls are reported to the enforcer with the next check that gets an answer;
- releases go out without anyone waiting for them;
- a chat call's check carries its question's features (:class:`~tokenmeter.quota_wire.RouteFeatures`)
  for the policy's routing rules, its intent classified here with the enforcer's routing document
  (:mod:`~tokenmeter.instrumentation.quota.question_intents`, fetched within the check's deadline). A
  verdict a routing rule chose is neither kept as a lease nor reused from the deny/degrade cache: it
  answers one question only.

Requests to the enforcer are made with instrumentation suppressed: they are not LLM
calls and must not carry the app's trace context or baggage.
"""

from __future__ import annotations

import http.client
import itertools
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any, Final

import httpx

from tokenmeter.instrumentation.attribution import Attribution
from tokenmeter.instrumentation.quota.check_memory import CheckMemory
from tokenmeter.instrumentation.quota.connection import EnforcerConnection, NotSentError
from tokenmeter.instrumentation.quota.errors import QuotaVerdict
from tokenmeter.instrumentation.quota.leases import CheckKey, LeaseBook
from tokenmeter.instrumentation.quota.question_intents import QuestionIntents
from tokenmeter.log_once import LogOnce
from tokenmeter.quota_wire import CheckBody, DecisionDocument, LeaseTerms, ReleaseBody, RouteFeatures

__all__ = ["CheckKey", "QuotaClient", "check_key"]  # CheckKey: the gate imports it here

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_SECONDS: Final = 2.0  # a whole check; an LLM call takes seconds, a stalled enforcer a fraction
# The check never reached the enforcer: nothing to release, its fail-opens still to report.
_NOT_SENT: Final = (NotSentError,)


class _Refused(Exception):  # noqa: N818 - an answer that is not a decision (HTTP error, not JSON)
    """The enforcer answered, but not with a decision: it counted and reserved nothing.

    (The class name shows in the reason a fail-open verdict and the log line give.)
    """


def check_key(who: Attribution, model: str) -> CheckKey:
    """What a check is about (and what the deny/degrade cache is keyed by)."""
    return who.user or "", who.department or "", who.app or "", model


def check_body(key: CheckKey, input_tokens: int, max_output_tokens: int | None, *, fail_open: int, dry_run: bool,
               check_id: str, route: RouteFeatures | None = None) -> CheckBody:  # fmt: skip
    """The check as sent; it asks for a lease unless it is a dry run."""
    user, department, app, model = key
    # Not validated here: the enforcer judges every check, and a check it rejects (a user id over
    # its limit) fails open or closed like no answer, and is counted; a local error would be neither.
    return CheckBody.model_construct(
        user=user, department=department, app=app, model=model, input_tokens=input_tokens,
        max_output_tokens=max_output_tokens, client_fail_open=fail_open, dry_run=dry_run,
        check_id=check_id, lease=not dry_run, route=route,
    )  # fmt: skip


def read_decision(status: int, content: bytes) -> DecisionDocument:
    """The decision in the enforcer's answer; raises _Refused for an answer that is not one."""
    if status != 200:
        problem = f"HTTP {status}: {content[:200].decode('utf-8', 'replace')}"
        if status == 401:
            problem += " (set TOKENMETER_ENFORCER_TOKEN to the enforcer's token)"
        raise _Refused(problem)
    try:
        return DecisionDocument.model_validate_json(content)
    except ValueError as exc:  # (pydantic's ValidationError is one)
        raise _Refused(f"not a decision: {exc}") from None


def keep_lease(leases: LeaseBook, connection: EnforcerConnection, verdict: QuotaVerdict, lease: LeaseTerms,
               body: CheckBody) -> QuotaVerdict:  # fmt: skip
    """Keep the lease an answer granted (expired by a timer on the connection's sender); the first call's verdict."""
    seconds, default_output = lease.seconds, lease.default_output_tokens
    output = body.max_output_tokens if body.max_output_tokens is not None else default_output
    key = (body.user, body.department, body.app, body.model)
    leased = leases.add(key, verdict, tokens=lease.tokens, first_estimate=body.input_tokens + output,
                        default_output_tokens=default_output, seconds=seconds)  # fmt: skip
    if leased.lease_id is not None:
        lease_id = leased.lease_id
        connection.call_later(seconds, lambda: leases.expire(lease_id))
    return leased


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
        base = url.rstrip("/")
        headers = {"authorization": f"Bearer {token}"} if token else {}
        problems = LogOnce(logger)
        self._memory = CheckMemory(base, fail_mode, cache_seconds, clock, problems)
        # Check ids: a random prefix per client and a counter (unique across processes and restarts).
        self._id_prefix = secrets.token_hex(6)
        self._ids = itertools.count(1)
        self._connection = EnforcerConnection(base, headers, timeout)
        self.intents = QuestionIntents(self._connection, cache_seconds, clock, problems)  # for route features
        self.leases = LeaseBook(clock, self._release_lease)

    @property
    def fail_mode(self) -> str:
        """``"open"``: a call the enforcer could not decide goes ahead (counted); ``"closed"``: it is refused."""
        return self._memory.fail_mode

    # --- checks ------------------------------------------------------------------

    def check(self, key: CheckKey, input_tokens: int, max_output_tokens: int | None, *, dry_run: bool = False,
              route: RouteFeatures | None = None, deadline: float | None = None) -> QuotaVerdict:  # fmt: skip
        """The decision for one call; ``dry_run`` decides without reserving (a route's pre-check); ``route``: a
        chat call's question features (``intents.route_features``); ``deadline``: default now + timeout."""
        ready = self._before_request(key, input_tokens, max_output_tokens, dry_run)
        if isinstance(ready, QuotaVerdict):
            return ready
        body = self._body(key, input_tokens, max_output_tokens, ready, dry_run, route=route)
        try:
            status, content = self._connection.post("/v1/check", body, deadline)
        except (OSError, http.client.HTTPException) as exc:
            return self._unanswered(key, exc, body)
        return self._answered(key, status, content, body)

    async def check_async(self, key: CheckKey, input_tokens: int, max_output_tokens: int | None, *,
                          dry_run: bool = False, route: RouteFeatures | None = None, deadline: float | None = None
                          ) -> QuotaVerdict:  # fmt: skip
        ready = self._before_request(key, input_tokens, max_output_tokens, dry_run)
        if isinstance(ready, QuotaVerdict):
            return ready
        body = self._body(key, input_tokens, max_output_tokens, ready, dry_run, route=route)
        try:
            status, content = await self._connection.post_async("/v1/check", body, deadline)
        except (NotSentError, httpx.HTTPError, TimeoutError) as exc:
            return self._unanswered(key, exc, body)
        return self._answered(key, status, content, body)

    def deadline(self) -> float:
        """When a check starting now must be done (monotonic): the routing document's fetch shares it."""
        return self._connection.deadline()

    def _before_request(self, key: CheckKey, input_tokens: int, max_output_tokens: int | None, dry_run: bool
                        ) -> QuotaVerdict | int:  # fmt: skip
        """A verdict without asking (a lease, the cache, or the enforcer was just unreachable), else the
        fail-opens to report with this check (taken: given back if the check gets no answer). Neither a lease
        nor the cache holds a verdict a routing rule chose (the enforcer grants no lease for routed checks)."""
        leased = self.leases.take(key, input_tokens, max_output_tokens, spend=not dry_run)
        if leased is not None:
            return leased
        return self._memory.before_check(key)

    def _body(self, key: CheckKey, input_tokens: int, max_output_tokens: int | None, fail_open: int, dry_run: bool,
              *, route: RouteFeatures | None) -> CheckBody:  # fmt: skip
        check_id = f"{self._id_prefix}{next(self._ids):x}"
        return check_body(key, input_tokens, max_output_tokens, fail_open=fail_open, dry_run=dry_run,
                          check_id=check_id, route=route)  # fmt: skip

    def _answered(self, key: CheckKey, status: int, content: bytes, body: CheckBody) -> QuotaVerdict:
        try:
            document = read_decision(status, content)
        except _Refused as refused:
            return self._unanswered(key, refused, body)
        verdict = QuotaVerdict.from_document(document, key[3])
        self._memory.answered(key, verdict)
        if self.intents.answered(document.routing_version):
            self.leases.end_all()  # the policy's routing changed: what it leased before is asked about again
        if document.lease is not None and verdict.reservation_id is not None and verdict.route_rule is None:
            return keep_lease(self.leases, self._connection, verdict, document.lease, body)
        return verdict

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
        return self._memory.unanswered(key, error, handed_back)

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
