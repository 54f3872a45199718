"""A small fake of DashScope's native text-generation and text-embedding APIs on 127.0.0.1, for the `dashscope` SDK.

It answers ``POST {base}/services/aigc/text-generation/generation`` (the body: ``model``, ``input`` with
``messages`` or ``prompt``, ``parameters``) as DashScope does: JSON, or SSE when the request has
``X-DashScope-SSE: enable`` (``id:`` / ``event:result`` / ``:HTTP_STATUS/200`` / ``data:`` lines). With
``result_format: "message"`` the output is ``choices[].message``, else ``text``. A stream's chunks carry the whole
text so far unless ``incremental_output`` is true, and every chunk carries the running usage (``input_tokens``
fixed, ``output_tokens`` growing to the final count). The final output count is the request's ``max_tokens`` (else
`SERVER_OUTPUT_TOKENS`), so tests can vary usage per call. ``usage_mode="omit"`` sends no usage. Special models:
``fail-400`` (HTTP 400 with DashScope's ``code`` / ``message`` body) and ``fail-stream`` (an SSE error event after
two chunks). ``POST {base}/services/embeddings/text-embedding/text-embedding`` answers with a vector per text and
``usage.total_tokens`` from `embedding_tokens`. Every request is recorded.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

REPLY_CHUNKS = ["人工智能（AI）是", "计算机科学的一个分支。", "It studies agents 🤖 ", "and `code()`."]
REPLY_TEXT = "".join(REPLY_CHUNKS)
# Fixed numbers the server "bills", deliberately unlike any local count.
SERVER_INPUT_TOKENS = 37
SERVER_OUTPUT_TOKENS = 11
ERROR_CODE = "InvalidParameter"
EMBEDDING_BASE_TOKENS = 3


@dataclass
class ReceivedRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class ServerState:
    usage_mode: str = "report"  # "report" | "omit"
    requests: list[ReceivedRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Put into every usage block (e.g. prompt_tokens_details); a test may change it between calls.
    usage_fields: dict[str, Any] | None = None


def _output_tokens(parameters: dict[str, Any]) -> int:
    limit = parameters.get("max_tokens")
    return limit if isinstance(limit, int) and limit > 0 else SERVER_OUTPUT_TOKENS


def _output(parameters: dict[str, Any], text: str, finish_reason: str) -> dict[str, Any]:
    if parameters.get("result_format") == "message":
        message = {"role": "assistant", "content": text}
        return {"choices": [{"finish_reason": finish_reason, "message": message}]}
    return {"text": text, "finish_reason": finish_reason}


def embedding_tokens(texts: list[str]) -> int:
    """What the server bills a TextEmbedding request: fixed, unlike any local count."""
    return EMBEDDING_BASE_TOKENS + sum(len(text) for text in texts)


def _embedded(body: dict[str, Any]) -> dict[str, Any]:
    texts = (body.get("input") or {}).get("texts") or []
    vectors = [{"text_index": n, "embedding": [0.5, -0.25]} for n in range(len(texts))]
    return {
        "request_id": "req-embed",
        "output": {"embeddings": vectors},
        "usage": {"total_tokens": embedding_tokens(texts)},
    }


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))) or b"{}")
        state = self.server.state
        with state.lock:
            state.requests.append(ReceivedRequest(self.path, dict(self.headers), body))
        if "/services/embeddings/text-embedding/" in self.path and body.get("model") != "fail-400":
            self._json(200, _embedded(body))
        elif not self.path.endswith(("/services/aigc/text-generation/generation", "/text-embedding")):
            self._json(404, {"code": "NotFound", "message": self.path, "request_id": "req-404"})
        elif body.get("model") == "fail-400":
            self._json(400, {"code": ERROR_CODE, "message": "Range of max_tokens is wrong", "request_id": "req-400"})
        elif self.headers.get("X-DashScope-SSE") == "enable":
            self._stream(body)
        else:
            parameters = body.get("parameters") or {}
            payload = {"request_id": "req-test-1", "output": _output(parameters, REPLY_TEXT, "stop")}
            self._json(200, self._with_usage(payload, _output_tokens(parameters)))

    def _with_usage(self, payload: dict[str, Any], output_tokens: int) -> dict[str, Any]:
        if self.server.state.usage_mode == "report":
            usage = {"input_tokens": SERVER_INPUT_TOKENS, "output_tokens": output_tokens}
            usage.update(self.server.state.usage_fields or {})
            usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
            payload["usage"] = usage
        return payload

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, body: dict[str, Any]) -> None:
        parameters = body.get("parameters") or {}
        incremental = parameters.get("incremental_output") is True
        final = _output_tokens(parameters)
        self.send_response(200)
        self.send_header("content-type", "text/event-stream;charset=UTF-8")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        for n, piece in enumerate(REPLY_CHUNKS, start=1):
            if body.get("model") == "fail-stream" and n == 3:
                error = {"code": ERROR_CODE, "message": "stopped", "request_id": "req-stream"}
                self._event(n, "error", 400, error)
                break
            last = n == len(REPLY_CHUNKS)
            text = piece if incremental else "".join(REPLY_CHUNKS[:n])
            payload = {"request_id": "req-stream", "output": _output(parameters, text, "stop" if last else "null")}
            self._event(n, "result", 200, self._with_usage(payload, final if last else n))
        self._write_chunk(b"")

    def _event(self, n: int, event: str, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload, ensure_ascii=False)
        self._write_chunk(f"id:{n}\nevent:{event}\n:HTTP_STATUS/{status}\ndata:{data}\n\n".encode())

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: ServerState


class DashScopeServer:
    """The fake on a free loopback port; `base_url` is what `dashscope.base_http_api_url` should be."""

    def __init__(self, usage_mode: str = "report") -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.state = ServerState(usage_mode=usage_mode)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def state(self) -> ServerState:
        return self._server.state

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/api/v1"

    @property
    def requests(self) -> list[ReceivedRequest]:
        return list(self._server.state.requests)

    def __enter__(self) -> DashScopeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
