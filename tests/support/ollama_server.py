"""A small Ollama-API HTTP server on 127.0.0.1 for tests: /api/chat and /api/generate (JSON and NDJSON streams),
/api/embed and the deprecated /api/embeddings.

Like Ollama, a response (or a stream's last chunk, ``done`` true) reports ``prompt_eval_count`` and ``eval_count``;
`ServerState.omit` leaves some out (older servers; a prompt served from the cache has no ``prompt_eval_count``).
The counts are fixed per request and unlike any local count: the input is ``PROMPT_BASE`` plus the characters of the
request's messages or prompt, the output ``options.num_predict`` when positive, else ``EVAL_COUNT``. Every request and
the counts reported for it are recorded. Special model names: ``missing`` (404, as for a model not pulled),
``fail-500``, and ``break-stream`` (an error line after two chunks, as Ollama sends one mid-stream).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

REPLY_CHUNKS = ["人工智能（AI）是", "计算机科学的一个分支。", "It studies agents 🤖 ", "and `code()`."]
REPLY_TEXT = "".join(REPLY_CHUNKS)
THINKING = "The user asks what AI is."
PROMPT_BASE = 17
EVAL_COUNT = 13


@dataclass
class Reported:
    path: str
    body: dict[str, Any]
    prompt_eval_count: int
    eval_count: int


@dataclass
class ServerState:
    omit: frozenset[str] = frozenset()  # count fields to leave out
    think: bool = False  # answer with thinking before the text
    requests: list[Reported] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _counts(body: dict[str, Any]) -> tuple[int, int]:
    texts = [str(m.get("content") or "") for m in body.get("messages") or []]
    texts += [str(body.get(name) or "") for name in ("system", "prompt", "suffix")]
    limit = (body.get("options") or {}).get("num_predict")
    return PROMPT_BASE + sum(len(text) for text in texts), limit if isinstance(limit, int) and limit > 0 else EVAL_COUNT


_PATHS = ("/api/chat", "/api/generate", "/api/embed", "/api/embeddings")


class _Handler(BaseHTTPRequestHandler):
    server: OllamaServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))) or b"{}")
        model = body.get("model")
        if self.path not in _PATHS or model in ("missing", "fail-500"):
            status = 500 if model == "fail-500" else 404
            return self._send(status, {"error": f"model '{model}' not found" if status == 404 else "boom"})
        if self.path in ("/api/embed", "/api/embeddings"):
            return self._embed(model, body)
        prompt, output = _counts(body)
        state = self.server.state
        with state.lock:
            state.requests.append(Reported(self.path, body, prompt, output))
        final = {"done": True, "done_reason": "stop", "total_duration": 1000, "prompt_eval_count": prompt,
                 "eval_count": output}  # fmt: skip
        final = {name: value for name, value in final.items() if name not in state.omit}
        think = THINKING if state.think else ""
        if body.get("stream") is False:
            return self._send(200, {**self._chunk(model, think, REPLY_TEXT), **final})
        pieces = [(think, "")] if think else []
        lines = [{**self._chunk(model, *piece), "done": False} for piece in [*pieces, *(("", t) for t in REPLY_CHUNKS)]]
        if model == "break-stream":
            lines = [*lines[:2], {"error": "an error was encountered while running the model"}]
        else:
            lines.append({**self._chunk(model, "", ""), **final})
        self._send_lines(lines)

    def _embed(self, model: str, body: dict[str, Any]) -> None:
        """/api/embed reports ``prompt_eval_count`` (PROMPT_BASE plus the inputs' characters); the deprecated
        /api/embeddings reports no count (recorded as 0)."""
        texts = body.get("input", body.get("prompt")) or ""
        texts = [texts] if isinstance(texts, str) else texts
        counted = PROMPT_BASE + sum(len(text) for text in texts) if self.path == "/api/embed" else 0
        with self.server.state.lock:
            self.server.state.requests.append(Reported(self.path, body, counted, 0))
        if self.path == "/api/embeddings":
            return self._send(200, {"embedding": [0.5, -0.25]})
        self._send(200, {"model": model, "embeddings": [[0.5, -0.25] for _ in texts], "total_duration": 1000,
                         "prompt_eval_count": counted})  # fmt: skip

    def _chunk(self, model: str, thinking: str, text: str) -> dict[str, Any]:
        chunk: dict[str, Any] = {"model": model, "created_at": "2025-01-01T00:00:00Z"}
        extra = {"thinking": thinking} if thinking else {}
        if self.path == "/api/chat":
            chunk["message"] = {"role": "assistant", "content": text, **extra}
        else:
            chunk.update(response=text, **extra)
        return chunk

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json; charset=utf-8")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_lines(self, lines: list[dict[str, Any]]) -> None:
        data = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode()
        self.send_response(200)
        self.send_header("content-type", "application/x-ndjson")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class OllamaServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # tests open dozens of connections at once (the default 5 resets some of them)

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = ServerState()
        self.host = f"http://127.0.0.1:{self.server_address[1]}"
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def __enter__(self) -> OllamaServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()
        self.server_close()

    @property
    def requests(self) -> list[Reported]:
        return self.state.requests
