"""Acting on quota decisions before an LLM call (active when TOKENMETER_ENFORCER_URL is set).

After the call's span has started and before the SDK sends the request:

- ``allow``: the call goes ahead; ``warn``: it goes ahead, the span says so and the
  identity middleware adds an ``X-Tokenmeter-Quota`` response header (when the response
  has not started yet);
- ``downgrade``: the request's model is replaced by the cheaper one; the span records
  requested and effective model (``gen_ai.request.model`` is what was sent);
- a call in an experiment (docs/experiments.md) goes ahead as its decision says, and its span
  names the experiment and the arm; in the candidate arm the request's model is replaced by the
  candidate, as a downgrade replaces it;
- a chat call's check carries its question's features and intent (docs/routing.md); when a routing
  rule chose another model tier, the request's model is replaced as on a downgrade, and the span
  names the rule and the tier (``tokenmeter.route.rule`` / ``.tier``; the intent: ``.intent``);
- ``degrade`` / ``deny``: :class:`~tokenmeter.instrumentation.quota.errors.QuotaDegraded` /
  :class:`~tokenmeter.instrumentation.quota.errors.QuotaExceeded` are raised instead of calling (an
  embeddings call goes ahead on ``degrade``: retrieval-only answers need it);
- the enforcer did not answer: ``open`` goes ahead (span: ``fail_open``), ``closed``
  raises :class:`~tokenmeter.instrumentation.quota.errors.QuotaUnavailable`.

Every decision is on the span and counted in ``tokenmeter.quota.decisions``. The
reservation (or the call's share of a lease) is released when the call has finished
(from the background finisher).
A failure of tokenmeter's own here lets the call go ahead unchanged.

The decisions a request's user should hear of (warn, downgrade, and the stops an app may
swallow) are collected per request (:func:`collecting_notices`). A call forwarded by a hop
(Chatchat's agent calling Chatchat's own ``/v1``) is served by another request of the same
process: its notices go to the request that made the hop, found by the trace the hop
propagated, so they reach the person who asked rather than the agent reading the hop's answer.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import weakref
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from tokenmeter import semconv
from tokenmeter.instrumentation.llm_call import LLMCall
from tokenmeter.instrumentation.local_counts import request_token_estimate
from tokenmeter.instrumentation.quota.client import CheckKey, QuotaClient, check_key
from tokenmeter.instrumentation.quota.errors import (
    QuotaDegraded,
    QuotaError,
    QuotaExceeded,
    QuotaUnavailable,
    QuotaVerdict,
)
from tokenmeter.instrumentation.safety import contained
from tokenmeter.instrumentation.usage_metrics import Instruments
from tokenmeter.quota_wire import RouteFeatures

NOTICE_ACTIONS = frozenset({"warn", "downgrade"})
STOP_ACTIONS = frozenset({"deny", "degrade", semconv.QUOTA_UNAVAILABLE})


class QuotaNotices(list[QuotaVerdict]):
    """One request's verdicts worth telling its user: warn and downgrade, and the calls stopped
    (deny, degrade, unavailable and fail-closed) in case the app swallowed the error."""


# The decisions worth telling the end user about, for the request being served (ASGI).
_notices: ContextVar[QuotaNotices | None] = ContextVar("tokenmeter_quota_notices", default=None)


@contextlib.contextmanager
def collecting_notices() -> Iterator[QuotaNotices]:
    """Collect the notices of the calls made inside (one request)."""
    notices = QuotaNotices()
    token = _notices.set(notices)
    try:
        yield notices
    finally:
        _notices.reset(token)


def current_notices() -> QuotaNotices | None:
    """The notices of the request being served, if one is collecting them."""
    return _notices.get()


class HopNoticeSinks:
    """Trace id of a hop call -> the notices of the request that made it, while that request lives."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sinks: weakref.WeakValueDictionary[int, QuotaNotices] = weakref.WeakValueDictionary()

    def register(self, call: LLMCall) -> None:
        notices, trace_id = _notices.get(), call.span.get_span_context().trace_id
        if notices is not None and trace_id:
            with self._lock:
                self._sinks[trace_id] = notices

    def sink_for(self, call: LLMCall) -> QuotaNotices | None:
        """Where the notices of ``call`` go: the hop's request if a hop forwarded it, else this request's."""
        trace_id = call.span.get_span_context().trace_id
        with self._lock:
            sink = self._sinks.get(trace_id) if trace_id else None
        return sink if sink is not None else _notices.get()


HOP_NOTICE_SINKS = HopNoticeSinks()


def notice_header(notices: list[QuotaVerdict]) -> bytes | None:
    """``X-Tokenmeter-Quota`` value for the most severe notice, e.g. ``warn; budget="b"; ratio=0.85``."""
    notices = [verdict for verdict in notices if verdict.action in NOTICE_ACTIONS]
    if not notices:
        return None
    verdict = max(notices, key=lambda v: (v.action == "downgrade", v.ratio))
    parts = [verdict.action, f'budget="{_quoted(verdict.budget or "")}"', f"ratio={verdict.ratio:.3f}"]
    if verdict.action == "downgrade":
        parts.append(f'model="{_quoted(verdict.effective_model)}"')
    return "; ".join(parts).encode("latin-1", errors="replace")


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\r", " ").replace("\n", " ")


class QuotaGate:
    def __init__(self, client: QuotaClient, instruments: Instruments) -> None:
        self.client = client
        self._instruments = instruments

    def check(self, call: LLMCall, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The kwargs to send (model rewritten on downgrade); raises QuotaError to stop the call."""
        if call.hop:
            with contained("quota notices of a hop"):
                HOP_NOTICE_SINKS.register(call)
            return kwargs  # the forwarded call is checked
        verdict: QuotaVerdict | None = None  # stays None when tokenmeter fails: the call goes ahead unchanged
        with contained("quota check"):
            key, input_tokens, max_output = self._request(call, kwargs)
            deadline = self.client.deadline()  # the routing document's fetch, if one is due, shares it
            route = self._route(call, deadline)
            verdict = self.client.check(key, input_tokens, max_output, route=route, deadline=deadline)
        return kwargs if verdict is None else self._apply(call, kwargs, verdict)

    async def check_async(self, call: LLMCall, kwargs: dict[str, Any]) -> dict[str, Any]:
        if call.hop:
            with contained("quota notices of a hop"):
                HOP_NOTICE_SINKS.register(call)
            return kwargs
        verdict: QuotaVerdict | None = None
        with contained("quota check"):
            key, input_tokens, max_output = self._request(call, kwargs)
            deadline = self.client.deadline()
            route = await self._route_async(call, deadline)
            verdict = await self.client.check_async(key, input_tokens, max_output, route=route, deadline=deadline)
        return kwargs if verdict is None else self._apply(call, kwargs, verdict)

    def _route(self, call: LLMCall, deadline: float) -> RouteFeatures | None:
        """A chat call's question features for routing rules (None for other calls, or when they fail)."""
        if call.asked is None:
            return None
        with contained("question route features"):  # a failure here must not skip the quota check
            return _with_intent(call, self.client.intents.route_features(call.asked, deadline))
        return None

    async def _route_async(self, call: LLMCall, deadline: float) -> RouteFeatures | None:
        if call.asked is None:
            return None
        with contained("question route features"):
            return _with_intent(call, await self.client.intents.route_features_async(call.asked, deadline))
        return None

    @staticmethod
    def _request(call: LLMCall, kwargs: dict[str, Any]) -> tuple[CheckKey, int, int | None]:
        key = check_key(call.attribution, call.request_model)
        if call.operation == semconv.OPERATION_EMBEDDINGS:
            max_output: int | None = 0
        else:
            # chat completions' names, then the Responses API's
            limit = kwargs.get("max_completion_tokens", kwargs.get("max_tokens", kwargs.get("max_output_tokens")))
            max_output = limit if isinstance(limit, int) and not isinstance(limit, bool) and limit >= 0 else None
        return key, request_token_estimate(call.request_input), max_output

    def _apply(self, call: LLMCall, kwargs: dict[str, Any], verdict: QuotaVerdict) -> dict[str, Any]:
        call.quota_verdict = verdict
        span = call.span
        span.set_attributes(_verdict_attributes(verdict))
        self._instruments.quota_decisions.add(
            1, {semconv.TM_QUOTA_DECISION: verdict.action, semconv.TM_QUOTA_FAIL_OPEN: verdict.fail_open}
        )
        if verdict.reservation_id or verdict.lease_id:
            call.on_finished = functools.partial(self.client.finished, verdict)
        error = _error_for(verdict, call.operation)
        if error is not None or verdict.action in NOTICE_ACTIONS:
            _tell(call, verdict)
        if error is not None:
            raise error
        swapped = (
            verdict.action == "downgrade"
            or verdict.experiment_arm == semconv.ARM_CANDIDATE
            or verdict.route_rule is not None  # a routing rule chose the tier: swapped as a downgrade is
        )
        if swapped and verdict.effective_model != call.request_model:
            call.request_model = verdict.effective_model
            span.set_attribute(semconv.GEN_AI_REQUEST_MODEL, verdict.effective_model)
            span.update_name(f"{call.operation} {verdict.effective_model}")
            return {**kwargs, "model": verdict.effective_model}
        return kwargs


def _verdict_attributes(verdict: QuotaVerdict) -> dict[str, Any]:
    """The span attributes of a verdict: the decision, the models, the budget, and the experiment arm."""
    attributes: dict[str, Any] = {
        semconv.TM_QUOTA_DECISION: verdict.action,
        semconv.TM_REQUESTED_MODEL: verdict.requested_model,
        semconv.TM_EFFECTIVE_MODEL: verdict.effective_model,
    }
    if verdict.budget:
        attributes[semconv.TM_QUOTA_BUDGET] = verdict.budget
        attributes[semconv.TM_QUOTA_RATIO] = verdict.ratio
    if verdict.action == semconv.QUOTA_UNAVAILABLE:
        attributes[semconv.TM_QUOTA_FAIL_OPEN] = verdict.fail_open
    if verdict.experiment and verdict.experiment_arm:
        attributes[semconv.TM_EXPERIMENT] = verdict.experiment
        attributes[semconv.TM_EXPERIMENT_ARM] = verdict.experiment_arm
    if verdict.route_rule is not None:
        attributes[semconv.TM_ROUTE_RULE] = verdict.route_rule
        if verdict.route_tier is not None:
            attributes[semconv.TM_ROUTE_TIER] = verdict.route_tier
    return attributes


def _with_intent(call: LLMCall, route: RouteFeatures) -> RouteFeatures:
    """``route``, its intent (when the question has one) put on the call's span."""
    if route.intent is not None:
        call.span.set_attribute(semconv.TM_ROUTE_INTENT, route.intent)
    return route


def _tell(call: LLMCall, verdict: QuotaVerdict) -> None:
    with contained("quota notices"):
        notices = HOP_NOTICE_SINKS.sink_for(call)
        if notices is not None:
            notices.append(verdict)


def stop_error(verdict: QuotaVerdict) -> QuotaError:
    """The error of a verdict in STOP_ACTIONS (what a chat call stopped by it raised)."""
    error = _error_for(verdict, semconv.OPERATION_CHAT)
    return error if error is not None else QuotaExceeded(verdict)


def _error_for(verdict: QuotaVerdict, operation: str) -> QuotaError | None:
    if verdict.action == "deny":
        return QuotaExceeded(verdict)
    if verdict.action == "degrade" and operation != semconv.OPERATION_EMBEDDINGS:
        # Degraded means answers from retrieval only: retrieval's own embeddings still run.
        return QuotaDegraded(verdict)
    if verdict.action == semconv.QUOTA_UNAVAILABLE and not verdict.fail_open:
        return QuotaUnavailable(verdict)
    return None
