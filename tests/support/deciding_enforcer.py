"""A quota enforcer stand-in on loopback for the gate's tests of every client (the openai 1.x venv has no store
for a real enforcer): answers each check with the decision given for its user, and keeps the checks it received."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class DecidingEnforcer:
    """An enforcer stand-in on loopback (the openai 1.x venv has no store for a real one): answers each check
    with the decision ``decisions`` gives its user, and keeps the checks it received."""

    def __init__(self, decisions: dict[str, dict[str, Any]]) -> None:
        self.checks: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))) or b"{}")
                answer = b""
                if self.path == "/v1/check":
                    outer.checks.append(body)
                    answer = json.dumps(decisions.get(body.get("user"), {"decision": "allow"})).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
