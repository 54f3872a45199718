"""The enforcer's HTTP API: in `tokenmeter serve` (port 9400) and `tokenmeter enforcer`.

- ``POST /v1/check``: body :class:`~tokenmeter.enforcer.wire.CheckBody`; answers the
  decision document (``decision``, ``effective_model``, ``budget``, ``used_*``,
  ``limit_*``, ``ratio``, ``reason``, ``resets_at``, ``reservation_id``).
- ``POST /v1/release``: ``{"reservation_id": …}`` when the call (or a lease) is done, with
  ``unused_tokens`` for a lease's calls never made; ``{"check_id": …}`` when the client gave
  up waiting for its check's answer.
- ``GET /v1/usage[?budget=&subject=]``: used, reserved, limit and ratio per budget and subject.
- ``GET /v1/policy``: the policy in force, its file, checksum and the last reload error.

All need the bearer token. ``/healthz`` (no token) and ``/metrics`` (token) are added by
the process that serves these routes, together with its own.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tokenmeter.collector.bearer import BearerToken
from tokenmeter.enforcer.service import EnforcerService
from tokenmeter.enforcer.wire import CheckBody, ReleaseBody, decision_document

Handler = Callable[[Request], Awaitable[Response]]
_MAX_BODY_BYTES = 64 * 1024


def unauthorized(token_name: str) -> JSONResponse:
    return JSONResponse(
        {"error": f"missing or wrong bearer token ({token_name})"},
        status_code=401,
        headers={"WWW-Authenticate": "Bearer"},
    )


def guarded(bearer: BearerToken, token_name: str, handler: Handler) -> Handler:
    async def guarded_handler(request: Request) -> Response:
        if not bearer.allows(request.headers.get("authorization")):
            return unauthorized(token_name)
        return await handler(request)

    return guarded_handler


async def _body(request: Request, model: type[BaseModel]) -> Any:
    """The parsed body, or a 400/413 response naming the field and the problem."""
    raw = await request.body()
    if len(raw) > _MAX_BODY_BYTES:
        return JSONResponse({"error": f"request body over {_MAX_BODY_BYTES} bytes"}, status_code=413)
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        problems = [f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()[:5]]
        return JSONResponse({"error": "; ".join(problems)}, status_code=400)


def enforcer_routes(service: EnforcerService, bearer: BearerToken, token_name: str) -> list[Route]:
    async def check(request: Request) -> Response:
        started = time.perf_counter()
        body = await _body(request, CheckBody)
        if isinstance(body, Response):
            return body
        prepared = service.prepare(body, started)
        answer = service.decide(prepared, blocking=False)
        if answer is None:  # a lease to grow on the coordination server: wait on a worker thread, not the loop
            answer = await run_in_threadpool(service.decide, prepared)
        assert answer is not None
        lease = answer.lease_document(service.options.lease_seconds)
        timezone = service.enforcer.policy.timezone
        document = decision_document(answer.decision, answer.reservation_id, timezone=timezone, stale=answer.stale,
                                     lease=lease)  # fmt: skip
        return Response(json.dumps(document, ensure_ascii=False), media_type="application/json")

    async def release(request: Request) -> Response:
        body = await _body(request, ReleaseBody)
        if isinstance(body, Response):
            return body
        released = service.release(body.reservation_id, check_id=body.check_id, unused_tokens=body.unused_tokens,
                                   client_fail_open=body.client_fail_open)  # fmt: skip
        return JSONResponse({"released": released})

    async def usage(request: Request) -> Response:
        params = request.query_params
        return JSONResponse(service.usage_document(params.get("budget"), params.get("subject")))

    async def policy(_request: Request) -> Response:
        return JSONResponse(service.policy_document())

    return [
        Route("/v1/check", guarded(bearer, token_name, check), methods=["POST"]),
        Route("/v1/release", guarded(bearer, token_name, release), methods=["POST"]),
        Route("/v1/usage", guarded(bearer, token_name, usage), methods=["GET"]),
        Route("/v1/policy", guarded(bearer, token_name, policy), methods=["GET"]),
    ]
