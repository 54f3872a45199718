"""``POST /v1/check`` and ``POST /v1/release`` as plain ASGI, in front of the rest of the API.

Every call an app makes asks the enforcer first, so these two routes are the enforcer's hot
path. Starlette's middleware stack, router, ``Request`` and ``Response`` cost about as much CPU
per check as the decision itself (docs/benchmarks.md, "/v1/check"); here a check reads its body
from ``receive``, is decided, and answers with one ``send`` of JSON made by pydantic-core.
Every other path goes on to ``app``, the Starlette app.

The answers are the ones the Starlette routes gave: 401 with ``WWW-Authenticate`` for a missing
or wrong token, 413 for a body over 64 KiB, 400 naming the field and the problem.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

from pydantic import BaseModel, ValidationError
from pydantic_core import to_json
from starlette.concurrency import run_in_threadpool

from tokenmeter.enforcer.http_api import unauthorized_document
from tokenmeter.enforcer.quota_service import EnforcerService
from tokenmeter.enforcer.wire import decision_document
from tokenmeter.errors import TokenmeterError
from tokenmeter.quota_wire import CheckBody, ReleaseBody
from tokenmeter.server.bearer import BearerToken

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_BODY_BYTES: Final = 64 * 1024
_JSON_HEADERS: Final = [(b"content-type", b"application/json")]


class BodyTooLargeError(TokenmeterError):
    pass


class CheckPath:
    """The ASGI app: checks and releases here, every other request to ``app``."""

    def __init__(self, app: ASGIApp, service: EnforcerService, bearer: BearerToken, token_name: str) -> None:
        self._app = app
        self._service = service
        self._bearer = bearer
        self._unauthorized = to_json(unauthorized_document(token_name))
        self._handlers: dict[str, Callable[[bytes, float], Awaitable[tuple[int, bytes]]]] = {
            "/v1/check": self._check,
            "/v1/release": self._release,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = self._handlers.get(scope.get("path", "")) if scope["type"] == "http" else None
        if handler is None:
            await self._app(scope, receive, send)
            return
        if scope["method"] != "POST":
            await _answer(send, 405, to_json({"error": "use POST"}), [(b"allow", b"POST")])
            return
        started = time.perf_counter()
        if not self._bearer.allows(_header(scope, b"authorization")):
            await _answer(send, 401, self._unauthorized, [(b"www-authenticate", b"Bearer")])
            return
        try:
            raw = await _body(receive)
        except BodyTooLargeError:
            await _answer(send, 413, to_json({"error": f"request body over {MAX_BODY_BYTES} bytes"}))
            return
        status, document = await handler(raw, started)
        await _answer(send, status, document)

    async def _check(self, raw: bytes, started: float) -> tuple[int, bytes]:
        body = _parse(raw, CheckBody)
        if isinstance(body, bytes):
            return 400, body
        service = self._service
        prepared = service.prepare(body, started)
        answer = service.decide(prepared, blocking=False)
        if answer is None:  # a lease to grow on the coordination server: wait on a worker thread, not the loop
            answer = await run_in_threadpool(service.decide, prepared)
        assert answer is not None
        lease = answer.lease_terms(service.options.lease_seconds)
        policy = service.enforcer.policy
        routing_version = None if policy.routing is None else policy.routing_document["version"]
        document = decision_document(answer.decision, answer.reservation_id, timezone=policy.timezone,
                                     stale=answer.stale, lease=lease, routing_version=routing_version)  # fmt: skip
        return 200, to_json(document)

    async def _release(self, raw: bytes, _started: float) -> tuple[int, bytes]:
        body = _parse(raw, ReleaseBody)
        if isinstance(body, bytes):
            return 400, body
        released = self._service.release(body.reservation_id, check_id=body.check_id, unused_tokens=body.unused_tokens,
                                         client_fail_open=body.client_fail_open)  # fmt: skip
        return 200, to_json({"released": released})


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return bytes(value)
    return None


async def _body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BodyTooLargeError
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _parse(raw: bytes, model: type[BaseModel]) -> Any:
    """The parsed body, or the JSON of a 400 answer naming the field and the problem."""
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        problems = [f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()[:5]]
        return to_json({"error": "; ".join(problems)})


async def _answer(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    head = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode()), *(headers or ())]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})
