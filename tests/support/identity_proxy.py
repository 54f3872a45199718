"""A stand-in for the SSO proxy in front of `tokenmeter serve`: one signed-in person per proxy.

A small threaded reverse proxy on 127.0.0.1 that forwards every request (the page, its scripts, its API calls)
to serve and adds the identity headers an authenticating proxy sets after sign-in: ``X-Forwarded-User`` and the
groups as a comma list in ``X-Forwarded-Groups`` (UTF-8 bytes for 研发部). Whatever identity headers the browser
sent are dropped first, as a real proxy does. serve believes the headers because the proxy's connections come from
loopback (TOKENMETER_TRUSTED_PROXIES' default).
"""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Final
from urllib.parse import urlsplit

IDENTITY_HEADERS: Final = ("x-forwarded-user", "x-forwarded-groups")
HOP_BY_HOP: Final = ("connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade")


class IdentityProxy:
    """Forwards to ``upstream`` (``http://127.0.0.1:9400``) as ``user`` in ``groups``; ``url`` is its own address."""

    def __init__(self, upstream: str, user: str, groups: list[str]) -> None:
        target = urlsplit(upstream)
        self.user, self.groups = user, groups
        identity = {"x-forwarded-user": user.encode(), "x-forwarded-groups": ",".join(groups).encode()}
        self.forwarded: list[str] = []  # the paths this proxy forwarded, for the test to look at
        handler = _handler_for(target.hostname or "127.0.0.1", target.port or 80, identity, self.forwarded)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"proxy-{user}", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> IdentityProxy:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


def _handler_for(
    host: str, port: int, identity: dict[str, bytes], forwarded: list[str]
) -> type[BaseHTTPRequestHandler]:
    class Forward(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive with the browser; every answer has a Content-Length

        def _forward(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else None
            headers: dict[str, str | bytes] = {
                name: value for name, value in self.headers.items()
                if name.lower() not in (*IDENTITY_HEADERS, *HOP_BY_HOP, "host")
            }  # fmt: skip
            headers.update(identity)
            upstream = http.client.HTTPConnection(host, port, timeout=60)
            try:
                upstream.request(self.command, self.path, body=body, headers=headers)  # type: ignore[arg-type]
                answer = upstream.getresponse()
                content = answer.read()
            finally:
                upstream.close()
            forwarded.append(self.path)
            self.send_response(answer.status, answer.reason)
            for name, value in answer.getheaders():
                if name.lower() not in (*HOP_BY_HOP, "content-length", "date", "server"):
                    self.send_header(name, value)
            self.send_header("content-length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        do_GET = do_POST = do_PUT = do_DELETE = _forward  # noqa: N815 - http.server's names

        def log_message(self, format: str, *args: object) -> None:
            pass  # quiet: the test asserts on what it sees, not on a log

    return Forward
