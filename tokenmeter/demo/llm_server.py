"""A local OpenAI-compatible LLM server for the demo: deterministic answers, real token counts.

It counts prompts and answers with each model's own tokenizer (tokenmeter's registry, the
way a serving engine counts with the model's), reports ``usage`` like OpenAI — except for
the models in ``silent_models`` (an old local server that never reports usage) and for
streams that did not ask for it — and keeps its own per-model totals, which the demo
compares with the store.

The DeepSeek models answer as DeepSeek's API does: a prompt whose leading messages were sent
before is partly served from its context cache (``prompt_cache_hit_tokens``, in 64-token
units, and ``prompt_tokens_details.cached_tokens``), and ``deepseek-reasoner`` thinks first
(``reasoning_content``, counted in ``completion_tokens_details.reasoning_tokens``). Like a
provider, the server keeps a ledger per day and model: what its invoice would bill
(demo/invoice.py writes it as the provider's usage export).
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
import urllib.parse
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

from tokenmeter import semconv
from tokenmeter.tokenizers import TokenizerRegistry

CACHE_UNIT: Final = 64  # DeepSeek's context cache serves a prefix in whole units of 64 tokens
REASONING_MODELS: Final = frozenset({"deepseek-reasoner"})
CACHING_PREFIX: Final = "deepseek"
DAY_HEADER: Final = "x-demo-day"  # the history's calls say which past day they stand for (the ledger's day)
REASONING: Final = "先在资料中找到与问题相关的条款，再核对其中的数字和期限，最后用问题的语言作答。"
ANSWERS: Final = (
    "根据知识库中的资料，报销需要在费用发生后三十天内提交，并附上发票原件和审批单。",
    "According to the retrieved passages, the VPN client must be updated before Friday; "
    "the old version stops working after the certificate rotation.",
    "年假按入职年限计算：满一年五天，满十年十天，满二十年十五天，未休年假可顺延至次年第一季度。",
    "The quarterly report shows revenue up 12 percent; the largest growth came from the East China region.",
    "客户投诉应在二十四小时内首次响应，四十八小时内给出处理方案，并在系统中记录处理过程。",
)


class DemoLLMServer:
    def __init__(self, registry: TokenizerRegistry, silent_models: frozenset[str] = frozenset()) -> None:
        self.registry = registry
        self.silent_models = silent_models
        self.lock = threading.Lock()
        self.tokens_by_model: dict[str, int] = defaultdict(int)  # input + output it served
        self.calls_by_model: dict[str, int] = defaultdict(int)
        # By the enduser.id in the W3C baggage the caller sent (tokenmeter propagates it to
        # loopback servers), "" without one.
        self.tokens_by_user: dict[str, int] = defaultdict(int)
        self.ledger: dict[tuple[str, str], LedgerLine] = {}  # (UTC day, model) -> what the provider bills
        self._cached_prefixes: set[str] = set()
        handler = type("Handler", (_Handler,), {"app": self})
        self._httpd = _QuietServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="demo-llm", daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> DemoLLMServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def served(self, model: str, tokens: int, user: str = "") -> None:
        with self.lock:
            self.tokens_by_model[model] += tokens
            self.calls_by_model[model] += 1
            self.tokens_by_user[user] += tokens

    def bill(self, day: str, model: str, usage: dict[str, Any]) -> None:
        """Enter one answered chat call in the ledger, as the provider's usage records would."""
        with self.lock:
            line = self.ledger.setdefault((day, model), LedgerLine())
            line.requests += 1
            line.prompt_tokens += usage["prompt_tokens"]
            line.cache_hit_tokens += usage.get("prompt_cache_hit_tokens", 0)
            line.completion_tokens += usage["completion_tokens"]
            line.reasoning_tokens += (usage.get("completion_tokens_details") or {}).get("reasoning_tokens", 0)

    def cache_hit(self, model: str, messages: list[dict[str, Any]]) -> int:
        """Tokens of the longest leading run of messages sent before (whole cache units); remembers them all."""
        if not model.startswith(CACHING_PREFIX):
            return 0
        keys = [hashlib.sha256(json.dumps([model, messages[:end]], ensure_ascii=False).encode()).hexdigest()
                for end in range(1, len(messages) + 1)]  # fmt: skip
        with self.lock:
            seen = [end for end, key in enumerate(keys, 1) if key in self._cached_prefixes]
            self._cached_prefixes.update(keys)
        if not seen:
            return 0
        prefix = self.registry.count_messages(model, messages[: max(seen)]).tokens
        return prefix // CACHE_UNIT * CACHE_UNIT

    def answer(self, messages: list[dict[str, Any]], max_tokens: int | None) -> str:
        """The same question always gets the same answer, cut to ``max_tokens``."""
        digest = hashlib.sha256(json.dumps(messages, ensure_ascii=False).encode()).digest()
        text = ANSWERS[digest[0] % len(ANSWERS)] * (1 + digest[1] % 3)
        return text[: max_tokens * 2] if max_tokens else text


@dataclass
class LedgerLine:
    """One day's usage of one model, as the provider counts it."""

    requests: int = 0
    prompt_tokens: int = 0  # cache hits included
    cache_hit_tokens: int = 0
    completion_tokens: int = 0  # reasoning included
    reasoning_tokens: int = 0


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        # A client closing its keep-alive connection is not an error worth a traceback.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


class _Handler(BaseHTTPRequestHandler):
    app: DemoLLMServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *_args: object) -> None:  # quiet: the demo prints its own progress
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
        model = str(body.get("model", ""))
        if self.path.endswith("/embeddings"):
            self._embeddings(model, body)
        elif self.path.endswith("/chat/completions"):
            self._chat(model, body)
        else:
            self._json(404, {"error": {"message": f"no route {self.path}"}})

    def _embeddings(self, model: str, body: dict[str, Any]) -> None:
        inputs = body.get("input")
        texts = [inputs] if isinstance(inputs, str) else list(inputs or [])
        tokens = sum(self.app.registry.count_prompt(model, str(text)).tokens for text in texts)
        self.app.served(model, tokens, self._user())
        data = [{"object": "embedding", "index": i, "embedding": [0.01 * (i + 1)] * 8} for i in range(len(texts))]
        self._json(200, {"object": "list", "data": data, "model": model,
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})  # fmt: skip

    def _chat(self, model: str, body: dict[str, Any]) -> None:
        messages = list(body.get("messages") or [])
        text = self.app.answer(messages, body.get("max_tokens"))
        thought = REASONING if model in REASONING_MODELS else ""
        usage = self._usage(model, messages, text, thought)
        self.app.served(model, usage["prompt_tokens"] + usage["completion_tokens"], self._user())
        self.app.bill(self.headers.get(DAY_HEADER) or datetime.now(UTC).date().isoformat(), model, usage)
        reports = model not in self.app.silent_models
        created = int(time.time())
        if not body.get("stream"):
            message = {"role": "assistant", "content": text, **({"reasoning_content": thought} if thought else {})}
            reply: dict[str, Any] = {
                "id": "chatcmpl-demo", "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            }  # fmt: skip
            if reports:
                reply["usage"] = usage
            self._json(200, reply)
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        chunk = {"id": "chatcmpl-demo", "object": "chat.completion.chunk", "created": created, "model": model}
        deltas = [{"reasoning_content": thought[i : i + 16]} for i in range(0, len(thought), 16)]
        deltas += [{"content": text[i : i + 16]} for i in range(0, len(text), 16)]
        for index, delta in enumerate(deltas):
            finish = "stop" if index == len(deltas) - 1 else None
            self._event({**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        if reports and (body.get("stream_options") or {}).get("include_usage"):
            self._event({**chunk, "choices": [], "usage": usage})
        self._write_chunk(b"data: [DONE]\n\n")
        self._write_chunk(b"")

    def _usage(self, model: str, messages: list[dict[str, Any]], text: str, thought: str) -> dict[str, Any]:
        """``usage`` as the model's server reports it: DeepSeek's cache and reasoning fields where they apply."""
        prompt = self.app.registry.count_messages(model, messages).tokens
        reasoning = self.app.registry.count_text(model, thought).tokens if thought else 0
        completion = self.app.registry.count_text(model, text).tokens + reasoning
        usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                                 "total_tokens": prompt + completion}  # fmt: skip
        if model.startswith(CACHING_PREFIX):
            hit = self.app.cache_hit(model, messages)
            usage |= {"prompt_cache_hit_tokens": hit, "prompt_cache_miss_tokens": prompt - hit,
                      "prompt_tokens_details": {"cached_tokens": hit}}  # fmt: skip
        if thought:
            usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
        return usage

    def _user(self) -> str:
        for entry in (self.headers.get("baggage") or "").split(","):
            key, _, value = entry.partition("=")
            if key.strip() == semconv.BAGGAGE_USER:
                return urllib.parse.unquote(value.split(";")[0].strip())
        return ""

    def _event(self, payload: dict[str, Any]) -> None:
        self._write_chunk(f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode())

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
