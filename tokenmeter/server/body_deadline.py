"""A deadline for request bodies: a client that stops sending gets 408, not a connection held open.

uvicorn times out idle keep-alive connections but not a request whose body never arrives: a
``Content-Length`` larger than what the client sends held a connection (and its handler) for as
long as the client liked. This ASGI middleware gives the whole body ``seconds`` from the start of
the request. Only the body is timed: once it is complete, later ``receive`` calls (a streaming
response waiting for the client to disconnect) wait as long as they need.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

logger = logging.getLogger(__name__)

DEFAULT_BODY_TIMEOUT_SECONDS: Final = 30.0

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyTimeoutError(BaseException):
    """The request body did not arrive in time.

    A BaseException, not an Exception: Starlette's error middleware turns an Exception into a 500
    (and a logged traceback); this one passes through the app to :class:`BodyDeadline`, which
    answers 408.
    """


class BodyDeadline:
    def __init__(self, app: AsgiApp, seconds: float = DEFAULT_BODY_TIMEOUT_SECONDS) -> None:
        if seconds <= 0:
            raise ValueError(f"the body timeout must be positive, got {seconds}")
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.seconds
        body_complete = False
        response_started = False

        async def receive_in_time() -> Message:
            nonlocal body_complete
            if body_complete:
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeoutError from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_complete = True
            return message

        async def send_tracked(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, receive_in_time, send_tracked)
        except BodyTimeoutError:
            client = scope.get("client") or ("?", 0)
            logger.warning("request body from %s did not arrive within %g s; answered 408", client[0], self.seconds)
            if response_started:  # cannot answer any more; the server drops the connection
                raise
            await send({
                "type": "http.response.start", "status": 408,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close")],
            })  # fmt: skip
            await send({"type": "http.response.body",
                        "body": f"the request body did not arrive within {self.seconds:g} s\n".encode()})  # fmt: skip
