"""Chatchat's ratings, joined to the calls of the answers they rate, with no edits to Chatchat.

- Chatchat names each answer in ``add_message_to_db`` (``chat_routes`` imports it by name) before
  it calls the model, when the request has a ``conversation_id``. :func:`bind_message_id` wraps
  it: the id it returns becomes the attribution's message for the rest of that request, so the
  answer's calls carry ``tokenmeter.message.id``, also those the agent makes through Chatchat's
  own ``/v1`` (a hop: the id travels in its baggage).
- ``POST /chat/feedback`` (``message_id``, ``score`` 0 to 100, ``reason``) is watched by
  :class:`ChatchatFeedbackObserver`, inside the identity middleware: what Chatchat receives and
  answers passes through untouched, and once Chatchat has answered ``code`` 200 (it answers
  HTTP 200 either way) the rating is recorded with ``tokenmeter.feedback``, the rater being the
  request's user. Bodies over 64 KiB are not looked at.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from tokenmeter.instrumentation.asgi import ASGIApp, Message, Receive, Scope, Send
from tokenmeter.instrumentation.attribution import bind_message
from tokenmeter.instrumentation.feedback import feedback
from tokenmeter.instrumentation.safety import contained, warn_once

FEEDBACK_PATH: Final = "/chat/feedback"
MAX_OBSERVED_BYTES: Final = 64 * 1024
_SITE: Final = "Chatchat rating"


def bind_message_id(wrapped: Callable[..., Any], _instance: Any, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:  # fmt: skip
    """``add_message_to_db`` that also makes the new message the answer of the rest of the request."""
    message_id = wrapped(*args, **kwargs)
    with contained(_SITE):
        bind_message(message_id)
    return message_id


@dataclass(frozen=True)
class ChatchatRating:
    message_id: str
    score: float
    reason: str | None


def accepted_rating(request_body: bytes, status: int | None, response_body: bytes) -> ChatchatRating | None:
    """The rating Chatchat took (HTTP 200 with ``"code": 200``), from the request's JSON; else None."""
    if status != 200:
        return None
    answer, request = _json_object(response_body), _json_object(request_body)
    if answer is None or request is None or answer.get("code") != 200:
        return None
    message_id, score, reason = request.get("message_id"), _number(request.get("score", 0)), request.get("reason")
    if not isinstance(message_id, str) or not message_id.strip() or score is None:
        return None
    return ChatchatRating(message_id, score, reason if isinstance(reason, str) and reason.strip() else None)


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body or b"null")
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _number(value: object) -> float | None:
    """The score as Chatchat's int field accepted it (a JSON number, or a numeric string)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


class _Copy:
    """The bytes of one side of the exchange, up to MAX_OBSERVED_BYTES; past that (or compressed), given up."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.given_up = False

    def add(self, chunk: bytes) -> None:
        if self.given_up:
            return
        self.size += len(chunk)
        if self.size > MAX_OBSERVED_BYTES:
            self.given_up, self.chunks = True, []
        else:
            self.chunks.append(chunk)

    def body(self) -> bytes:
        return b"".join(self.chunks)


class ChatchatFeedbackObserver:
    """ASGI middleware that records the ratings Chatchat accepts; place it inside the identity middleware."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http" or scope.get("method") != "POST" or scope.get("path") != FEEDBACK_PATH:
            await self.app(scope, receive, send)
            return
        request, response = _Copy(), _Copy()
        status: int | None = None

        async def observed_receive() -> Message:
            message = await receive()
            with contained(_SITE):
                if message.get("type") == "http.request":
                    request.add(bytes(message.get("body", b"")))
            return message

        async def observed_send(message: Message) -> None:
            nonlocal status
            with contained(_SITE):
                if message.get("type") == "http.response.start":
                    status = int(message.get("status", 0))
                    if any(bytes(name).lower() == b"content-encoding" for name, _ in message.get("headers", ())):
                        response.given_up = True  # compressed: not read
                elif message.get("type") == "http.response.body":
                    response.add(bytes(message.get("body", b"")))
            await send(message)

        await self.app(scope, observed_receive, observed_send)
        if not request.given_up and not response.given_up:
            _record(request.body(), status, response.body())


def _record(request_body: bytes, status: int | None, response_body: bytes) -> None:
    with contained(_SITE):
        rating = accepted_rating(request_body, status, response_body)
        if rating is None:
            return
        try:
            feedback(rating.score, message_id=rating.message_id, reason=rating.reason)
        except ValueError as error:  # Chatchat does not check the range: a score of 150 is taken there
            warn_once(f"chatchat-rating-{type(error).__name__}", "tokenmeter: a rating Chatchat accepted was not "
                      "recorded (%s); later ones like it are not said again", error)  # fmt: skip
