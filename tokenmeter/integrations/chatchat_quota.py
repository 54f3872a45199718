"""Quota decisions for Chatchat's chat routes, taken before the route runs.

Chatchat streams most answers: its routes start the response (200, server-sent events)
before the LLM call, so a denial at the call could only be an error event inside the
stream. This middleware asks the enforcer first, without reserving (``dry_run``; the call
itself is checked and reserved as usual), for the routes of
:mod:`tokenmeter.integrations.chatchat_routes`:

- ``deny``: 429 with the quota message and ``Retry-After``, streamed and plain requests alike;
- ``degrade`` on a knowledge-base route (``/chat/kb_chat``, ``/knowledge_base/{mode}/{id}/chat/completions``):
  the request goes on with ``return_direct: true``, so Chatchat answers with the retrieved
  passages and calls no model, and the answer says it is retrieval-only; on ``/chat/file_chat``
  the request goes on, and the model call's own check stops it after retrieval; on a route
  without retrieval: 429 with the message saying so;
- anything else: the request goes on unchanged.

The answers of the routes people read get the quota notices
(:mod:`tokenmeter.integrations.chatchat_notices`). Only ``POST`` requests with a JSON body
(at most 1 MiB) are read; the enforcer unreachable means no pre-check (the call's own check
applies its fail mode).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final

from tokenmeter.instrumentation.asgi import ASGIApp, Message, Receive, Scope, Send
from tokenmeter.instrumentation.attribution import current_attribution
from tokenmeter.instrumentation.quota.client import QuotaClient, check_key
from tokenmeter.instrumentation.quota.errors import QuotaDegraded, QuotaError, QuotaExceeded, QuotaVerdict
from tokenmeter.instrumentation.quota.gate import current_notices
from tokenmeter.instrumentation.quota.responses import STATUS as QUOTA_STATUS
from tokenmeter.instrumentation.quota.responses import quota_error_response
from tokenmeter.instrumentation.safety import contained
from tokenmeter.integrations.chatchat_notices import AnswerNotices
from tokenmeter.integrations.chatchat_routes import ChatRoute, chat_route
from tokenmeter.tokenizers.estimate import estimate_tokens

MAX_BODY_BYTES: Final = 1 << 20


class ChatchatQuotaPrecheck:
    """ASGI middleware; place it inside the identity middleware (it needs the request's user)."""

    def __init__(self, app: ASGIApp, client: Callable[[], QuotaClient | None], default_model: Callable[[], str],
                 notice_languages: str = "zh+en") -> None:  # fmt: skip
        self.app = app
        self._client = client
        self._default_model = default_model
        self._languages = notice_languages

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = chat_route(scope.get("path", "")) if scope.get("type") == "http" else None
        client = self._client() if route is not None and scope.get("method") == "POST" else None
        if route is None or client is None:
            await self.app(scope, receive, send)
            return
        body, more = await _read_body(receive)
        replay = _replaying(body, more, receive)
        try:
            verdict_body = await self._decide(client, route, body) if not more else None
        except QuotaError as error:
            headers, payload = quota_error_response(error)
            await send({"type": "http.response.start", "status": QUOTA_STATUS, "headers": headers})
            await send({"type": "http.response.body", "body": payload})
            return
        if verdict_body is not None:
            replay = _replaying(verdict_body, False, receive)
        await self.app(scope, replay, self._answer_send(route, send))

    def _answer_send(self, route: ChatRoute, send: Send) -> Send:
        """``send`` that adds the quota notices to the answer, on the routes people read."""
        notices = current_notices()
        if route.answer is None or notices is None:
            return send
        return AnswerNotices(send, route.answer, notices, self._languages)

    async def _decide(self, client: QuotaClient, route: ChatRoute, body: bytes) -> bytes | None:
        """None: go on unchanged; bytes: go on with this body; raises QuotaError to refuse."""
        verdict: QuotaVerdict | None = None  # stays None when tokenmeter fails: the call's own check still applies
        with contained("Chatchat quota pre-check"):
            request = json.loads(body or b"{}")
            if not isinstance(request, dict):
                return None
            model = str(request.get(route.model_field) or self._default_model())
            text = json.dumps([request.get(name) for name in route.text_fields], ensure_ascii=False, default=str)
            max_tokens = request.get("max_tokens")
            verdict = await client.check_async(check_key(current_attribution(), model), estimate_tokens(text),
                                               max_tokens if isinstance(max_tokens, int) else None,
                                               dry_run=True)  # fmt: skip
        if verdict is None:
            return None
        if verdict.action == "deny":
            raise QuotaExceeded(verdict)
        if verdict.action != "degrade" or route.on_degrade == "go_on":
            return None
        if route.on_degrade == "refuse":
            raise QuotaDegraded(verdict)
        notices = current_notices()
        if notices is not None:
            notices.append(verdict)  # the answer says it is retrieval-only
        return json.dumps({**request, "return_direct": True}, ensure_ascii=False).encode()


async def _read_body(receive: Receive) -> tuple[bytes, bool]:
    """The request body up to MAX_BODY_BYTES, and whether more is left unread."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message.get("type") != "http.request":
            return b"".join(chunks), False
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), False
        if size > MAX_BODY_BYTES:
            return b"".join(chunks), True


def _replaying(body: bytes, more: bool, receive: Receive) -> Receive:
    """A receive that hands the app ``body`` first, then whatever the client still sends."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            message: dict[str, Any] = {"type": "http.request", "body": body, "more_body": more}
            return message
        return await receive()

    return replay
