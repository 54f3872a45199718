"""A small OpenAI Batch API server on 127.0.0.1 for tests: files (multipart upload, content) and batches.

``POST /v1/files`` takes a multipart upload (``file`` and ``purpose``); ``GET /v1/files/{id}/content`` returns the
bytes. ``POST /v1/batches`` creates a batch of an uploaded input file; it is run when it is created
(``complete_on="create"``, the default) or on its first ``GET /v1/batches/{id}`` (``"retrieve"``). Running a batch
answers every request line of its input: successes go to the output file, failures to the error file.

Each request's usage is the server's own count, fixed and unlike any local count: the input is ``PROMPT_BASE`` plus
the characters of its JSON body; the output is its ``max_tokens`` (or ``max_completion_tokens`` /
``max_output_tokens``) when given, else ``DEFAULT_OUTPUT`` (none for embeddings). Every third line reports half its
input as cached, every second line of a reasoning model (``o*``) a quarter of its output as reasoning. What was
counted is kept per ``custom_id`` (`ServedLine`). Special models: ``fail-400`` (a 400 response in the error file)
and ``fail-expired`` (an error line without a response, as for a batch that expired before the request ran).
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

PROMPT_BASE = 29
DEFAULT_OUTPUT = 17
REPLY_TEXT = "人工智能是计算机科学的一个分支。"
CREATED_AT = 1_767_225_600  # 2026-01-01T00:00:00Z: every batch is created then (a fixed price date)
COMPLETED_AT = CREATED_AT + 3_600


@dataclass(frozen=True)
class ServedLine:
    """What the server counted for one request of a batch (0 for parts it did not report)."""

    custom_id: str
    batch_id: str
    model: str
    status: int
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0


@dataclass
class StoredFile:
    id: str
    filename: str
    purpose: str
    data: bytes


@dataclass
class ServerState:
    complete_on: Literal["create", "retrieve"] = "create"
    lock: threading.Lock = field(default_factory=threading.Lock)
    files: dict[str, StoredFile] = field(default_factory=dict)
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    served: dict[str, ServedLine] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path) of every request
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def store(self, filename: str, purpose: str, data: bytes) -> StoredFile:
        with self.lock:
            stored = StoredFile(f"file-{next(self.ids)}", filename, purpose, data)
            self.files[stored.id] = stored
        return stored


def _output_limit(body: dict[str, Any]) -> int | None:
    for name in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        if isinstance(body.get(name), int):
            return int(body[name])
    return None


def _counted(custom_id: str, batch_id: str, index: int, body: dict[str, Any], endpoint: str) -> ServedLine:
    model = str(body.get("model", ""))
    input_tokens = PROMPT_BASE + len(json.dumps(body, ensure_ascii=False))
    if endpoint == "/v1/embeddings":
        return ServedLine(custom_id, batch_id, model, 200, input_tokens)
    output = _output_limit(body)
    output = DEFAULT_OUTPUT if output is None else output
    cached = input_tokens // 2 if index % 3 == 2 else 0
    reasoning = output // 4 if model.startswith("o") and index % 2 == 1 else 0
    return ServedLine(custom_id, batch_id, model, 200, input_tokens, output, cached, reasoning)


def _usage(line: ServedLine, responses: bool) -> dict[str, Any]:
    if responses:
        return {"input_tokens": line.input_tokens, "output_tokens": line.output_tokens,
                "input_tokens_details": {"cached_tokens": line.cached_tokens},
                "output_tokens_details": {"reasoning_tokens": line.reasoning_tokens},
                "total_tokens": line.input_tokens + line.output_tokens}  # fmt: skip
    return {"prompt_tokens": line.input_tokens, "completion_tokens": line.output_tokens,
            "total_tokens": line.input_tokens + line.output_tokens,
            "prompt_tokens_details": {"cached_tokens": line.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": line.reasoning_tokens}}  # fmt: skip


def _answer(line: ServedLine, endpoint: str) -> dict[str, Any]:
    """The body the endpoint answers with, as OpenAI's."""
    common = {"id": f"cmpl-{line.custom_id}", "created": CREATED_AT, "model": line.model}
    if endpoint == "/v1/embeddings":
        return {"object": "list", "model": line.model, "data": [{"object": "embedding", "index": 0,
                "embedding": [0.1, 0.2]}], "usage": {"prompt_tokens": line.input_tokens,
                "total_tokens": line.input_tokens}}  # fmt: skip
    if endpoint == "/v1/completions":
        choice = {"index": 0, "text": REPLY_TEXT, "finish_reason": "stop", "logprobs": None}
        return {**common, "object": "text_completion", "choices": [choice], "usage": _usage(line, False)}
    if endpoint == "/v1/responses":
        message = {"type": "message", "id": "msg-1", "role": "assistant", "status": "completed",
                   "content": [{"type": "output_text", "text": REPLY_TEXT, "annotations": []}]}  # fmt: skip
        return {"id": f"resp-{line.custom_id}", "object": "response", "created_at": CREATED_AT, "model": line.model,
                "status": "completed", "output": [message], "usage": _usage(line, True)}  # fmt: skip
    choice = {"index": 0, "message": {"role": "assistant", "content": REPLY_TEXT}, "finish_reason": "stop"}
    return {**common, "object": "chat.completion", "choices": [choice], "usage": _usage(line, False)}


def _result_lines(state: ServerState, batch: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(output lines, error lines) of running the batch; what was counted is kept in ``state.served``."""
    outputs: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    endpoint = batch["endpoint"]
    lines = [json.loads(raw) for raw in state.files[batch["input_file_id"]].data.splitlines() if raw.strip()]
    for index, line in enumerate(lines):
        custom_id, body = line["custom_id"], line["body"]
        result: dict[str, Any] = {"id": f"batch_req_{custom_id}", "custom_id": custom_id, "error": None}
        if body.get("model") == "fail-expired":
            served = ServedLine(custom_id, batch["id"], "fail-expired", 0)
            errors.append({**result, "response": None, "error": {"code": "batch_expired", "message": "expired"}})
        elif body.get("model") == "fail-400":
            served = ServedLine(custom_id, batch["id"], "fail-400", 400)
            failure = {"error": {"message": "bad request", "type": "invalid_request_error", "code": None}}
            errors.append({**result, "response": {"status_code": 400, "request_id": "req-x", "body": failure}})
        else:
            served = _counted(custom_id, batch["id"], index, body, endpoint)
            answer = {"status_code": 200, "request_id": f"req-{custom_id}", "body": _answer(served, endpoint)}
            outputs.append({**result, "response": answer})
        with state.lock:
            state.served[custom_id] = served
    return outputs, errors


def _run(state: ServerState, batch: dict[str, Any]) -> None:
    outputs, errors = _result_lines(state, batch)
    for name, lines in (("output_file_id", outputs), ("error_file_id", errors)):
        if lines:
            data = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode()
            batch[name] = state.store(f"{batch['id']}_{name}.jsonl", "batch_output", data).id
    batch.update(status="completed", completed_at=COMPLETED_AT,
                 request_counts={"total": len(outputs) + len(errors), "completed": len(outputs),
                                 "failed": len(errors)})  # fmt: skip


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, data: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        self._send(status, json.dumps(payload, ensure_ascii=False).encode())

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("content-length") or 0))

    def do_POST(self) -> None:
        state = self.server.state
        with state.lock:
            state.requests.append(("POST", self.path))
        if self.path == "/v1/files":
            self._upload()
        elif self.path == "/v1/batches":
            self._create(json.loads(self._body() or b"{}"))
        else:
            self._json(404, {"error": {"message": f"no route {self.path}"}})

    def do_GET(self) -> None:
        state = self.server.state
        with state.lock:
            state.requests.append(("GET", self.path))
        content = re.fullmatch(r"/v1/files/([^/]+)/content", self.path)
        batch = re.fullmatch(r"/v1/batches/([^/]+)", self.path)
        if content and content[1] in state.files:
            self._send(200, state.files[content[1]].data, "application/octet-stream")
        elif batch and batch[1] in state.batches:
            self._retrieve(state.batches[batch[1]])
        else:
            self._json(404, {"error": {"message": f"no route {self.path}"}})

    def _upload(self) -> None:
        head = f"Content-Type: {self.headers['content-type']}\r\n\r\n".encode()
        message = BytesParser(policy=HTTP).parsebytes(head + self._body())
        parts = {part.get_param("name", header="content-disposition"): part for part in message.iter_parts()}
        file_part = parts["file"]
        purpose = parts["purpose"].get_payload(decode=True).decode()
        stored = self.server.state.store(file_part.get_filename() or "upload", purpose,
                                         file_part.get_payload(decode=True))  # fmt: skip
        self._json(200, {"id": stored.id, "object": "file", "bytes": len(stored.data), "created_at": CREATED_AT,
                         "filename": stored.filename, "purpose": purpose, "status": "processed"})  # fmt: skip

    def _create(self, body: dict[str, Any]) -> None:
        state = self.server.state
        with state.lock:
            batch_id = f"batch-{next(state.ids)}"
        batch = {"id": batch_id, "object": "batch", "endpoint": body["endpoint"], "errors": None,
                 "input_file_id": body["input_file_id"], "completion_window": body["completion_window"],
                 "status": "validating", "output_file_id": None, "error_file_id": None, "created_at": CREATED_AT,
                 "completed_at": None, "metadata": body.get("metadata"),
                 "request_counts": {"total": 0, "completed": 0, "failed": 0}}  # fmt: skip
        if state.complete_on == "create":
            _run(state, batch)
        with state.lock:
            state.batches[batch_id] = batch
        self._json(200, batch)

    def _retrieve(self, batch: dict[str, Any]) -> None:
        if batch["status"] != "completed":
            _run(self.server.state, batch)
        self._json(200, batch)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    state: ServerState


class OpenAIBatchServer:
    """Start with ``with OpenAIBatchServer() as server:``; ``server.base_url`` ends in /v1."""

    def __init__(self, complete_on: Literal["create", "retrieve"] = "create") -> None:
        self.state = ServerState(complete_on=complete_on)
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.state = self.state
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def input_of(self, batch_id: str) -> list[dict[str, Any]]:
        """The request lines of a batch's input file, as the server received them."""
        data = self.state.files[self.state.batches[batch_id]["input_file_id"]].data
        return [json.loads(raw) for raw in data.splitlines() if raw.strip()]

    def __enter__(self) -> OpenAIBatchServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
