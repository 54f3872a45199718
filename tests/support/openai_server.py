"""A small OpenAI-compatible HTTP server on 127.0.0.1 for tests and benchmarks.

It speaks the parts of the API tokenmeter meters (chat completions, completions,
embeddings, the Responses API; JSON and SSE streaming), reports `usage` the way real servers do or
withholds it like many local servers, and records every request it received.
`usage_fields` make the chat and text completions' usage any server's shape: OpenAI's
details, DeepSeek's cache hits and misses, DashScope's cache writes (see the helpers
below `ServerState`); the Responses API's usage has its own names (`responses_usage_fields`).
A Responses request with `reasoning` gets a reasoning item (with a summary) before the answer,
one with `tools` a call of the first tool after it.
Special model names make it fail: `fail-500`, `fail-400`, and `break-stream`
(the connection drops after two chunks).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

REPLY_CHUNKS = ["人工智能（AI）是", "计算机科学的一个分支。", "It studies agents 🤖 ", "and `code()`."]
REPLY_TEXT = "".join(REPLY_CHUNKS)
REASONING_SUMMARY = "The user asks what AI is; answer briefly."
TOOL_ARGUMENTS = '{"city": "北京"}'
# Fixed numbers the server "bills", deliberately unlike any local count.
SERVER_PROMPT_TOKENS = 41
SERVER_COMPLETION_TOKENS = 13

UsageMode = Literal["report", "omit"]


@dataclass
class ReceivedRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class ServerState:
    usage_mode: UsageMode = "report"
    requests: list[ReceivedRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Put into (and over) every completion's usage block; a test may change it between calls.
    usage_fields: dict[str, Any] | None = None


def openai_usage(
    cached: int | None = None,
    reasoning: int | None = None,
    *,
    audio_input: int | None = None,
    audio_output: int | None = None,
    image_input: int | None = None,
    cache_write: int | None = None,
) -> dict[str, Any]:
    """OpenAI's shape: the parts in prompt_tokens_details and completion_tokens_details (None: not sent)."""
    prompt = {"cached_tokens": cached, "audio_tokens": audio_input, "image_tokens": image_input,
              "cache_write_tokens": cache_write}  # fmt: skip
    completion = {"reasoning_tokens": reasoning, "audio_tokens": audio_output}
    fields: dict[str, Any] = {}
    if any(value is not None for value in prompt.values()):
        fields["prompt_tokens_details"] = {k: v for k, v in prompt.items() if v is not None}
    if any(value is not None for value in completion.values()):
        fields["completion_tokens_details"] = {k: v for k, v in completion.items() if v is not None}
    return fields


def responses_usage_fields(cached: int | None = None, reasoning: int | None = None) -> dict[str, Any]:
    """The Responses API's shape: input_tokens_details.cached_tokens, output_tokens_details.reasoning_tokens."""
    fields: dict[str, Any] = {}
    if cached is not None:
        fields["input_tokens_details"] = {"cached_tokens": cached}
    if reasoning is not None:
        fields["output_tokens_details"] = {"reasoning_tokens": reasoning}
    return fields


def deepseek_usage(hit: int | None, miss: int | None, reasoning: int | None = None) -> dict[str, Any]:
    """DeepSeek's shape: prompt_cache_hit_tokens / prompt_cache_miss_tokens beside the totals (reasoner: reasoning)."""
    fields: dict[str, Any] = {}
    if hit is not None:
        fields["prompt_cache_hit_tokens"] = hit
    if miss is not None:
        fields["prompt_cache_miss_tokens"] = miss
    if reasoning is not None:
        fields["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return fields


def dashscope_usage(cached: int, created: int) -> dict[str, Any]:
    """DashScope's OpenAI-compatible shape with its explicit cache: reads and writes in prompt_tokens_details."""
    details: dict[str, Any] = {"cached_tokens": cached}
    if created:
        details.update(cache_creation_input_tokens=created, cache_creation={"ephemeral_5m_input_tokens": created},
                       cache_type="ephemeral")  # fmt: skip
    return {"prompt_tokens_details": details}


def _usage(body: dict[str, Any], fields: dict[str, Any] | None = None) -> dict[str, Any]:
    # A request's max_tokens becomes its completion size, so tests can vary usage per call.
    completion = body.get("max_tokens")
    completion = completion if isinstance(completion, int) and completion > 0 else SERVER_COMPLETION_TOKENS
    usage: dict[str, Any] = {"prompt_tokens": SERVER_PROMPT_TOKENS, "completion_tokens": completion}
    usage.update(fields or {})  # a test's shape, which may also set the totals
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return usage


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    # Headers and body go out as separate writes; with Nagle on, each response waits
    # for the client's delayed ACK (~40 ms per call on Linux).
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        state = self.server.state
        with state.lock:
            state.requests.append(ReceivedRequest(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        model = body.get("model", "")
        if model == "fail-500":
            self._json(500, {"error": {"message": "upstream exploded", "type": "server_error"}})
            return
        if model == "fail-400":
            self._json(400, {"error": {"message": "bad request", "type": "invalid_request_error"}})
            return
        if self.path.endswith("/chat/completions"):
            self._completion(body, chat=True)
        elif self.path.endswith("/completions"):
            self._completion(body, chat=False)
        elif self.path.endswith("/embeddings"):
            self._embeddings(body)
        elif self.path.endswith("/responses"):
            self._responses(body)
        else:
            self._json(404, {"error": {"message": f"no route {self.path}"}})

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _completion(self, body: dict[str, Any], chat: bool) -> None:
        model = body.get("model", "")
        created = int(time.time())
        kind = "chat.completion" if chat else "text_completion"
        report = self.server.state.usage_mode == "report"
        if not body.get("stream"):
            choice: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
            if chat:
                choice["message"] = {"role": "assistant", "content": REPLY_TEXT}
            else:
                choice["text"] = REPLY_TEXT
            payload: dict[str, Any] = {
                "id": "cmpl-test-1",
                "object": kind,
                "created": created,
                "model": model,
                "choices": [choice],
            }
            if report:
                payload["usage"] = _usage(body, self.server.state.usage_fields)
            self._json(200, payload)
            return

        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        chunk_kind = "chat.completion.chunk" if chat else "text_completion"
        for i, piece in enumerate(REPLY_CHUNKS):
            if model == "break-stream" and i == 2:
                # Promise a chunk, then drop the connection: the client sees a broken body.
                self.wfile.write(b"400\r\ndata: {")
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            last = i == len(REPLY_CHUNKS) - 1
            choice = {"index": 0, "finish_reason": "stop" if last else None}
            if chat:
                choice["delta"] = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
            else:
                choice["text"] = piece
            self._event(
                {"id": "cmpl-test-1", "object": chunk_kind, "created": created, "model": model, "choices": [choice]}
            )
        wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        if report and wants_usage:
            self._event(
                {
                    "id": "cmpl-test-1",
                    "object": chunk_kind,
                    "created": created,
                    "model": model,
                    "choices": [],
                    "usage": _usage(body, self.server.state.usage_fields),
                }
            )
        self._chunk(b"data: [DONE]\n\n")
        self._chunk(b"")

    def _event(self, payload: dict[str, Any]) -> None:
        self._chunk(b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n")

    def _chunk(self, data: bytes) -> None:
        """One piece of a chunked body; an empty one ends the body."""
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _responses(self, body: dict[str, Any]) -> None:
        """The Responses API: a response, or its events (`event:` lines, no [DONE]) ending in response.completed."""
        response = _response_object(body, "completed", _response_output(body))
        if self.server.state.usage_mode == "report":
            response["usage"] = _responses_usage(body, self.server.state.usage_fields)
        if not body.get("stream"):
            self._json(200, response)
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        events = _response_events(body, response)
        deltas = 0
        for number, event in enumerate(events):
            if event["type"] == "response.output_text.delta":
                deltas += 1
                if body.get("model") == "break-stream" and deltas == 3:
                    self.wfile.write(b"400\r\nevent: response.output_text.delta\ndata: {")
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
            event["sequence_number"] = number
            data = json.dumps(event, ensure_ascii=False)
            self._chunk(f"event: {event['type']}\ndata: {data}\n\n".encode())
        self._chunk(b"")

    def _embeddings(self, body: dict[str, Any]) -> None:
        inputs = body.get("input")
        count = 1 if isinstance(inputs, str) or (inputs and isinstance(inputs[0], int)) else len(inputs or [])
        payload: dict[str, Any] = {
            "object": "list",
            "model": body.get("model", ""),
            "data": [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]} for i in range(count)],
        }
        if self.server.state.usage_mode == "report":
            payload["usage"] = {"prompt_tokens": SERVER_PROMPT_TOKENS, "total_tokens": SERVER_PROMPT_TOKENS}
        self._json(200, payload)


def _response_object(body: dict[str, Any], status: str, output: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": "resp-test-1", "object": "response", "created_at": int(time.time()), "model": body.get("model", ""),
            "status": status, "output": output, "incomplete_details": None, "error": None, "usage": None,
            "instructions": body.get("instructions"), "parallel_tool_calls": True, "tool_choice": "auto",
            "tools": []}  # fmt: skip


def _response_output(body: dict[str, Any]) -> list[dict[str, Any]]:
    output: list[dict[str, Any]] = []
    if body.get("reasoning"):
        output.append(
            {"type": "reasoning", "id": "rs-1", "summary": [{"type": "summary_text", "text": REASONING_SUMMARY}]}
        )
    output.append({"type": "message", "id": "msg-1", "role": "assistant", "status": "completed",
                   "content": [{"type": "output_text", "text": REPLY_TEXT, "annotations": []}]})  # fmt: skip
    if body.get("tools"):
        name = body["tools"][0].get("name", "tool")
        output.append({"type": "function_call", "id": "fc-1", "call_id": "call-1", "name": name,
                       "arguments": TOOL_ARGUMENTS, "status": "completed"})  # fmt: skip
    return output


def _response_events(body: dict[str, Any], response: dict[str, Any]) -> list[dict[str, Any]]:
    """The events of a streamed response, as OpenAI sends them (items added empty, their text in deltas)."""
    events: list[dict[str, Any]] = [{"type": "response.created", "response": _response_object(body, "in_progress", [])}]
    for index, item in enumerate(response["output"]):
        empty = {"message": {"content": []}, "reasoning": {"summary": []}, "function_call": {"arguments": ""}}[
            item["type"]
        ]
        added = {**item, **empty, "status": "in_progress"}
        events.append({"type": "response.output_item.added", "output_index": index, "item": added})
        where = {"item_id": item["id"], "output_index": index}
        if item["type"] == "reasoning":
            part = {"type": "summary_text", "text": ""}
            events.append({"type": "response.reasoning_summary_part.added", **where, "summary_index": 0, "part": part})
            events.append({"type": "response.reasoning_summary_text.delta", **where, "summary_index": 0,
                           "delta": REASONING_SUMMARY})  # fmt: skip
        elif item["type"] == "message":
            part = {"type": "output_text", "text": "", "annotations": []}
            events.append({"type": "response.content_part.added", **where, "content_index": 0, "part": part})
            events.extend({"type": "response.output_text.delta", **where, "content_index": 0, "delta": piece,
                           "logprobs": []} for piece in REPLY_CHUNKS)  # fmt: skip
        elif item["type"] == "function_call":
            events.append({"type": "response.function_call_arguments.delta", **where, "delta": TOOL_ARGUMENTS})
        events.append({"type": "response.output_item.done", "output_index": index, "item": item})
    events.append({"type": "response.completed", "response": response})
    return events


def _responses_usage(body: dict[str, Any], fields: dict[str, Any] | None) -> dict[str, Any]:
    """As OpenAI reports it (details with zeros); max_output_tokens becomes the output size, as max_tokens does."""
    output = body.get("max_output_tokens")
    output = output if isinstance(output, int) and output > 0 else SERVER_COMPLETION_TOKENS
    usage: dict[str, Any] = {"input_tokens": SERVER_PROMPT_TOKENS, "output_tokens": output,
                             "input_tokens_details": {"cached_tokens": 0},
                             "output_tokens_details": {"reasoning_tokens": 0}}  # fmt: skip
    usage.update(fields or {})
    usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
    return usage


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # tests open dozens of connections at once
    state: ServerState

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that hang up (tests closing streams early) are expected here


class OpenAICompatibleServer:
    """Start with `with OpenAICompatibleServer() as server:`; `server.base_url` ends in /v1."""

    def __init__(self, usage_mode: UsageMode = "report", usage_fields: dict[str, Any] | None = None) -> None:
        self.state = ServerState(usage_mode=usage_mode, usage_fields=usage_fields)
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.state = self.state
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def requests(self) -> list[ReceivedRequest]:
        return self.state.requests

    def __enter__(self) -> OpenAICompatibleServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


if __name__ == "__main__":  # manual use: python tests/support/openai_server.py
    with OpenAICompatibleServer() as srv:
        print(srv.base_url, flush=True)
        threading.Event().wait()
