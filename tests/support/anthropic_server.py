"""A small fake of Anthropic's Messages API on 127.0.0.1 for tests: ``POST /v1/messages``, JSON and SSE streams.

Like Anthropic, a response's ``usage`` reports ``input_tokens`` WITHOUT the prompt-cache parts, and
``cache_read_input_tokens`` / ``cache_creation_input_tokens`` beside it. The counts are fixed per request and unlike
any local count: the text of the request's ``system`` blocks marked with ``cache_control`` is its cacheable prefix
(``CACHE_BASE`` plus its characters), written to the cache the first time the server sees it and read from it after;
the rest of the input is ``INPUT_BASE`` plus the characters of the other text. The output is the request's
``max_tokens``; with ``thinking`` enabled, ``THINKING_TOKENS`` of it are reported as thinking. A stream's
``message_start`` carries the input's counts and ``output_tokens: 1``, its ``message_delta`` the final output count
only (as the API sends it). ``ServerState.cache_fields = False`` leaves the cache fields out (an older API).

Special models: ``missing`` (404 ``not_found_error``), ``overloaded`` (529 ``overloaded_error``), ``break-stream``
(an ``error`` event after two text deltas) and ``refuse-stream`` (an ``error`` event before anything else). Every
request and the counts reported for it are recorded.
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
TOOL_NAME = "lookup"
TOOL_INPUT_CHUNKS = ['{"query": ', '"AI"}']
INPUT_BASE = 19
CACHE_BASE = 1024
THINKING_TOKENS = 5
_ERRORS = {"missing": (404, "not_found_error", "model: missing"), "overloaded": (529, "overloaded_error", "Overloaded")}


@dataclass
class Reported:
    body: dict[str, Any]
    input_tokens: int  # without the cache parts, as Anthropic reports it
    cache_read: int
    cache_creation: int
    output_tokens: int

    @property
    def input_total(self) -> int:
        return self.input_tokens + self.cache_read + self.cache_creation


@dataclass
class ServerState:
    cache_fields: bool = True  # report cache_read_input_tokens / cache_creation_input_tokens
    requests: list[Reported] = field(default_factory=list)
    cached: set[str] = field(default_factory=set)  # the prefixes in the "prompt cache"
    lock: threading.Lock = field(default_factory=threading.Lock)


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    texts = []
    for block in content or []:
        if block.get("type") == "text":
            texts.append(block["text"])
        elif block.get("type") == "tool_result":
            texts.extend(_texts(block.get("content")))
    return texts


def _counts(body: dict[str, Any], state: ServerState) -> Reported:
    system = body.get("system") or []
    blocks = [{"type": "text", "text": system}] if isinstance(system, str) else system
    prefix = "".join(block["text"] for block in blocks if block.get("cache_control"))
    rest = [block["text"] for block in blocks if not block.get("cache_control")]
    rest += [text for message in body.get("messages") or [] for text in _texts(message.get("content"))]
    read = written = 0
    if prefix:
        with state.lock:
            hit = prefix in state.cached
            state.cached.add(prefix)
        read, written = (CACHE_BASE + len(prefix), 0) if hit else (0, CACHE_BASE + len(prefix))
    return Reported(body, INPUT_BASE + sum(len(text) for text in rest), read, written, int(body["max_tokens"]))


class _Handler(BaseHTTPRequestHandler):
    server: AnthropicServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))) or b"{}")
        model = body.get("model")
        if self.path.partition("?")[0] != "/v1/messages" or model in _ERRORS:  # the beta API adds ?beta=true
            status, kind, message = _ERRORS.get(model, (404, "not_found_error", self.path))
            return self._send(status, {"type": "error", "error": {"type": kind, "message": message},
                                       "request_id": "req_error"})  # fmt: skip
        if model == "refuse-stream":  # refused before answering: nothing counted
            return self._send_events([_error_event()])
        state = self.server.state
        reported = _counts(body, state)
        with state.lock:
            state.requests.append(reported)
            number = len(state.requests)
        message = {"id": f"msg_test_{number}", "type": "message", "role": "assistant", "model": model,
                   "stop_sequence": None}  # fmt: skip
        if body.get("stream") is True:
            return self._send_events(self._events(body, message, reported))
        content = [*self._thinking(body), {"type": "text", "text": REPLY_TEXT}, *self._tool_use(body, complete=True)]
        self._send(200, {**message, "content": content, "stop_reason": self._stop_reason(body),
                         "usage": self._usage(body, reported, reported.output_tokens)})  # fmt: skip

    def _usage(self, body: dict[str, Any], reported: Reported, output_tokens: int) -> dict[str, Any]:
        usage: dict[str, Any] = {"input_tokens": reported.input_tokens, "output_tokens": output_tokens}
        if self.server.state.cache_fields:
            usage.update(
                cache_read_input_tokens=reported.cache_read, cache_creation_input_tokens=reported.cache_creation
            )
        if body.get("thinking"):
            usage["output_tokens_details"] = {"thinking_tokens": THINKING_TOKENS}
        return usage

    @staticmethod
    def _thinking(body: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"type": "thinking", "thinking": THINKING, "signature": "c2ln"}] if body.get("thinking") else []

    @staticmethod
    def _tool_use(body: dict[str, Any], *, complete: bool) -> list[dict[str, Any]]:
        if not body.get("tools"):
            return []
        tool_input = json.loads("".join(TOOL_INPUT_CHUNKS)) if complete else {}
        return [{"type": "tool_use", "id": "toolu_test_1", "name": TOOL_NAME, "input": tool_input}]

    @staticmethod
    def _stop_reason(body: dict[str, Any]) -> str:
        return "tool_use" if body.get("tools") else "end_turn"

    def _events(self, body: dict[str, Any], message: dict[str, Any], reported: Reported) -> list[dict[str, Any]]:
        model = body["model"]
        start = {**message, "content": [], "stop_reason": None, "usage": self._usage(body, reported, 1)}
        start["usage"].pop("output_tokens_details", None)
        events: list[dict[str, Any]] = [{"type": "message_start", "message": start}, {"type": "ping"}]
        blocks: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
        if body.get("thinking"):
            deltas = [
                {"type": "thinking_delta", "thinking": THINKING},
                {"type": "signature_delta", "signature": "c2ln"},
            ]
            blocks.append(({"type": "thinking", "thinking": "", "signature": ""}, deltas))
        blocks.append(({"type": "text", "text": ""}, [{"type": "text_delta", "text": text} for text in REPLY_CHUNKS]))
        for block in self._tool_use(body, complete=False):
            blocks.append((block, [{"type": "input_json_delta", "partial_json": part} for part in TOOL_INPUT_CHUNKS]))
        for index, (block, deltas) in enumerate(blocks):
            events.append({"type": "content_block_start", "index": index, "content_block": block})
            for n, delta in enumerate(deltas):
                if model == "break-stream" and block["type"] == "text" and n == 2:
                    return [*events, _error_event()]
                events.append({"type": "content_block_delta", "index": index, "delta": delta})
            events.append({"type": "content_block_stop", "index": index})
        delta = {"stop_reason": self._stop_reason(body), "stop_sequence": None}
        usage = {"output_tokens": reported.output_tokens}
        if body.get("thinking"):
            usage["output_tokens_details"] = {"thinking_tokens": THINKING_TOKENS}
        return [*events, {"type": "message_delta", "delta": delta, "usage": usage}, {"type": "message_stop"}]

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("request-id", "req_test")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_events(self, events: list[dict[str, Any]]) -> None:
        text = "".join(f"event: {event['type']}\ndata: {json.dumps(event, ensure_ascii=False)}\n\n" for event in events)
        data = text.encode()
        self.send_response(200)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _error_event() -> dict[str, Any]:
    return {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}


class AnthropicServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # tests open dozens of connections at once (the default 5 resets some of them)

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = ServerState()
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def __enter__(self) -> AnthropicServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()
        self.server_close()

    @property
    def requests(self) -> list[Reported]:
        return self.state.requests
