"""ASGI middleware that runs each request inside the attribution of whoever sent it.

Pure ASGI: works with Starlette, FastAPI (Chatchat) or any ASGI app, with no
framework imported. Identity comes from :func:`~tokenmeter.instrumentation.identity.resolve_identity`;
everything the request runs, including tasks it starts, then sees it through
:func:`tokenmeter.instrumentation.attribution.current_attribution`.

The middleware never changes what the host app does, with one exception on purpose:
a quota error (:class:`~tokenmeter.instrumentation.quota.errors.QuotaExceeded`, ``QuotaDegraded``,
``QuotaUnavailable``) that escapes the app before its response started becomes a 429
with the message for the user (:mod:`tokenmeter.instrumentation.quota.responses`); warn
and downgrade decisions add an ``X-Tokenmeter-Quota`` header. With ``TOKENMETER_COST_HEADER=true``
an ``X-Tokenmeter-Cost`` header says what the request's LLM calls that returned before its
response started cost (:mod:`tokenmeter.instrumentation.request_costs`). A failure inside the
middleware is logged once and the app called as if the middleware were not there.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any, Final, TypeAlias

from opentelemetry import context as otel_context
from opentelemetry import trace

from tokenmeter.instrumentation.app_route import serving
from tokenmeter.instrumentation.attribution import attribution
from tokenmeter.instrumentation.identity import (
    HeaderSource,
    header_map,
    incoming_context,
    is_trusted_peer,
    resolve_identity,
)
from tokenmeter.instrumentation.quota.errors import QuotaError, QuotaVerdict
from tokenmeter.instrumentation.quota.gate import collecting_notices, notice_header
from tokenmeter.instrumentation.quota.responses import STATUS as QUOTA_STATUS
from tokenmeter.instrumentation.quota.responses import quota_error_response
from tokenmeter.instrumentation.request_costs import COST_HEADER, RequestCosts, collecting_costs
from tokenmeter.instrumentation.retrieval import no_retrieval
from tokenmeter.log_once import LogOnce
from tokenmeter.settings import Settings, get_settings

__all__ = ["ASGIApp", "IdentityMiddleware"]

logger = logging.getLogger(__name__)

Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
ASGIApp: TypeAlias = Callable[[Scope, Receive, Send], Awaitable[None]]

_IDENTIFIED_SCOPES: Final = frozenset({"http", "websocket"})
QUOTA_HEADER: Final = b"x-tokenmeter-quota"


class IdentityMiddleware:
    """Wrap an ASGI app so that every HTTP and WebSocket request runs in its sender's attribution.

    ``settings`` defaults to the process's :func:`~tokenmeter.settings.get_settings`.
    Place it inside (after) OpenTelemetry's own ASGI middleware, if that is used,
    so the server span is already current when the request's identity is set. Add it
    with the framework (``app.add_middleware(IdentityMiddleware)``): inside the
    framework's error middleware it sees a quota error before that becomes a 500.
    """

    def __init__(self, app: ASGIApp, settings: Settings | None = None) -> None:
        self.app = app
        self._settings = settings if settings is not None else _process_settings()
        self._failures = LogOnce(logger)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") not in _IDENTIFIED_SCOPES or self._settings is None:
            await self.app(scope, receive, send)
            return
        request_context = contextlib.ExitStack()
        notices: list[QuotaVerdict] | None = None
        costs: RequestCosts | None = None
        try:
            notices = request_context.enter_context(self._request_context(scope, self._settings))
            if self._settings.cost_header and scope.get("type") == "http":
                costs = request_context.enter_context(collecting_costs())
        except Exception as error:
            request_context = contextlib.ExitStack()
            self._log_once(error, "requests are served without attribution while it lasts")
        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message.get("type") == "http.response.start"
            await send(message)

        app_send = tracked_send if notices is None else _with_quota_header(tracked_send, notices)
        if costs is not None:
            app_send = self._with_cost_header(app_send, costs)
        try:
            await self.app(scope, receive, app_send)
        except QuotaError as error:
            if started or scope.get("type") != "http":
                raise  # too late for a status code: the app's own error handling applies
            headers, body = quota_error_response(error)
            await send({"type": "http.response.start", "status": QUOTA_STATUS, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        finally:
            try:
                request_context.close()
            except Exception as error:
                self._log_once(error, "leaving the request's attribution failed")

    @contextlib.contextmanager
    def _request_context(self, scope: Scope, settings: Settings) -> Iterator[list[QuotaVerdict]]:
        headers = scope.get("headers") or ()
        client = scope.get("client")
        client_host = str(client[0]) if client else None
        identity = resolve_identity(headers, client_host, settings)
        with contextlib.ExitStack() as stack:
            remote = self._remote_context(headers, client_host, settings)
            if remote is not None:
                stack.enter_context(_attached(remote))
            stack.enter_context(
                attribution(
                    user=identity.user,
                    department=identity.department,
                    app=identity.app,
                    session=identity.session,
                    # From a trusted peer's baggage only (a hop's answer id); any other peer's is dropped.
                    message=identity.message,
                    authoritative=True,
                )
            )
            stack.enter_context(serving(scope))  # the calls know the route they serve (tokenmeter.app.route)
            stack.enter_context(no_retrieval())  # a request starts without a retrieval hint; its own end with it
            yield stack.enter_context(collecting_notices())

    def _remote_context(
        self, headers: HeaderSource, client_host: str | None, settings: Settings
    ) -> otel_context.Context | None:
        """The caller's trace context and baggage to continue, if it may be believed and nobody did yet.

        When a server span is already current (OTel's own ASGI middleware runs
        outside this one), that span continues the trace and LLM spans nest under it.
        """
        if trace.get_current_span().get_span_context().is_valid:
            return None
        if not is_trusted_peer(client_host, settings.trusted_proxies):
            return None
        try:
            return incoming_context(header_map(headers))
        except Exception as error:  # a third-party propagator: skip the trace, keep the identity
            self._log_once(error, "requests do not continue the caller's trace while it lasts")
            return None

    def _with_cost_header(self, send: Send, costs: RequestCosts) -> Send:
        """``send`` that adds ``X-Tokenmeter-Cost`` when calls of this request returned before the response started."""

        async def send_with_cost(message: Message) -> None:
            if message.get("type") == "http.response.start":
                try:
                    header = await costs.header_value()
                except Exception as error:
                    header = None
                    self._log_once(error, "responses go without the X-Tokenmeter-Cost header while it lasts")
                if header is not None:
                    message = {**message, "headers": [*message.get("headers", ()), (COST_HEADER, header)]}
            await send(message)

        return send_with_cost

    def _log_once(self, error: Exception, consequence: str) -> None:
        """A warning the first time a kind of failure happens here, debug after that."""
        self._failures.warning((type(error), consequence), "tokenmeter: identity middleware failed; %s (logged once, "
                               "the request goes on)", consequence, exc_info=error)  # fmt: skip


def _with_quota_header(send: Send, notices: list[QuotaVerdict]) -> Send:
    """``send`` that adds ``X-Tokenmeter-Quota`` when a call of this request was warned or downgraded.

    Only calls made before the response starts can be told about (a streamed answer's
    headers are gone before its LLM call returns).
    """

    async def send_with_notice(message: Message) -> None:
        if message.get("type") == "http.response.start" and notices:
            header = notice_header(notices)
            if header is not None:
                message = {**message, "headers": [*message.get("headers", ()), (QUOTA_HEADER, header)]}
        await send(message)

    return send_with_notice


@contextlib.contextmanager
def _attached(ctx: otel_context.Context) -> Iterator[None]:
    token = otel_context.attach(ctx)
    try:
        yield
    finally:
        otel_context.detach(token)


def _process_settings() -> Settings | None:
    try:
        return get_settings()
    except Exception:
        logger.warning("tokenmeter: TOKENMETER_* settings are invalid; the identity middleware is off", exc_info=True)
        return None
