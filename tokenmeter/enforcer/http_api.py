"""The enforcer's HTTP API: in `tokenmeter serve` (port 9400) and `tokenmeter enforcer`.

- ``POST /v1/check``: body :class:`~tokenmeter.quota_wire.CheckBody`; answers the
  decision document (``decision``, ``effective_model``, ``budget``, ``used_*``,
  ``limit_*``, ``ratio``, ``reason``, ``resets_at``, ``reservation_id``).
- ``POST /v1/release``: ``{"reservation_id": …}`` when the call (or a lease) is done, with
  ``unused_tokens`` for a lease's calls never made; ``{"check_id": …}`` when the client gave
  up waiting for its check's answer.
- ``GET /v1/usage[?budget=&subject=]``: used, reserved, limit and ratio per budget and subject.
- ``GET /v1/policy``: the policy in force, its file, checksum and the last reload error.
- ``GET /v1/routing``: the routing document apps classify their questions with (the policy's intents and
  trained classifier, by version; docs/routing.md).

All need the bearer token. Checks and releases are answered in front of Starlette
(:class:`~tokenmeter.enforcer.check_path.CheckPath`, the hot path, wraps the app of these routes).
``/healthz`` (no token) and ``/metrics`` (token) are added by the process that serves these
routes, together with its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tokenmeter.enforcer.quota_service import EnforcerService
from tokenmeter.server.bearer import BearerToken

Handler = Callable[[Request], Awaitable[Response]]


def unauthorized_document(token_name: str) -> dict[str, str]:
    return {"error": f"missing or wrong bearer token ({token_name})"}


def unauthorized(token_name: str) -> JSONResponse:
    return JSONResponse(
        unauthorized_document(token_name),
        status_code=401,
        headers={"WWW-Authenticate": "Bearer"},
    )


def guarded(bearer: BearerToken, token_name: str, handler: Handler) -> Handler:
    async def guarded_handler(request: Request) -> Response:
        if not bearer.allows(request.headers.get("authorization")):
            return unauthorized(token_name)
        return await handler(request)

    return guarded_handler


def enforcer_routes(service: EnforcerService, bearer: BearerToken, token_name: str) -> list[Route]:
    """The routes besides checks and releases (those are :class:`~tokenmeter.enforcer.check_path.CheckPath`)."""

    async def usage(request: Request) -> Response:
        params = request.query_params
        return JSONResponse(service.usage_document(params.get("budget"), params.get("subject")))

    async def policy(_request: Request) -> Response:
        return JSONResponse(service.policy_document())

    async def routing(_request: Request) -> Response:
        return JSONResponse(service.enforcer.policy.routing_document)

    return [
        Route("/v1/usage", guarded(bearer, token_name, usage), methods=["GET"]),
        Route("/v1/policy", guarded(bearer, token_name, policy), methods=["GET"]),
        Route("/v1/routing", guarded(bearer, token_name, routing), methods=["GET"]),
    ]
