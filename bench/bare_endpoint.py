"""A bare ``POST`` endpoint on serve's HTTP stack, the floor ``/v1/check`` is compared with.

The same socket (``bind_socket``), uvicorn with httptools and serve's body deadline
(``quiet_uvicorn_server``), serve's interpreter tuning, and the check path's own shell (the
bearer check, reading the body, one ``send`` of a JSON answer) — but no parsing, no decision and
a canned decision document of the usual size. What ``/v1/check`` costs beyond this is the
enforcer's work. Started by ``bench/quota_check_http.py``; prints ``{"api": "http://host:port"}``.

    .venv/bin/python bench/bare_endpoint.py TOKEN
"""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime

from pydantic_core import to_json

from tokenmeter.enforcer.check_path import Receive, Scope, Send, _answer, _body, _header
from tokenmeter.quota_wire import DecisionDocument
from tokenmeter.server.bearer import BearerToken
from tokenmeter.server.interpreter_tuning import tune_when_ready
from tokenmeter.server.listening import bind_socket, quiet_uvicorn_server, socket_address

_TYPICAL_ALLOW = DecisionDocument(
    decision="allow", requested_model="gpt-4o-mini", effective_model="gpt-4o-mini", budget="user-daily",
    scope="user", subject="user-1234", period="day", used_tokens=1234, limit_tokens=200_000, ratio=0.00617,
    resets_at=datetime(2026, 12, 5, tzinfo=UTC), timezone="Asia/Shanghai", reason="within budget",
    reservation_id="r-1234567",
)  # fmt: skip
ANSWER = to_json(_TYPICAL_ALLOW)


class BareEndpoint:
    def __init__(self, bearer: BearerToken) -> None:
        self._bearer = bearer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._bearer.allows(_header(scope, b"authorization")):
            await _answer(send, 401, b'{"error":"unauthorized"}', [(b"www-authenticate", b"Bearer")])
            return
        await _body(receive)
        await _answer(send, 200, ANSWER)


async def main(token: str) -> None:
    sock = bind_socket("127.0.0.1", 0, "the bare endpoint", "--port")
    server = quiet_uvicorn_server(BareEndpoint(BearerToken(token)))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    tune_when_ready()
    print(json.dumps({"api": f"http://{socket_address(sock)}"}), flush=True)
    await serving


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
