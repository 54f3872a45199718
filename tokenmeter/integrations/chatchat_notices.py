"""What the person at Chatchat's screen reads about quotas: notices in the answer itself.

Chatchat's WebUI shows an answer's text (and a knowledge-base answer's passages), nothing
of the HTTP response around it, so an ``X-Tokenmeter-Quota`` header never reaches the
person. On the chat routes people read (:mod:`tokenmeter.integrations.chatchat_routes`),
:class:`AnswerNotices` adds to the answer, after what the model wrote:

- ``warn``: a short notice, once per warning threshold per budget, subject and period (in
  each API process): the first answer past 80 % says so, the next ones that period do not;
- ``downgrade``: which model answered; the stream's events name that model too;
- a call a quota stopped after the answer had started, whose error Chatchat swallowed (its
  kb_chat and file_chat run the model in a task that only logs errors): on ``degrade`` the
  retrieval-only message after the passages; otherwise an in-stream error as Chatchat
  sends its own (``{"error": message}``; file_chat: ``{"code": 429, "msg": message}``, the
  shape Chatchat's ``ApiRequest`` reports errors in).

A stream (server-sent events) gets events of its own before it ends (file_chat: before
its closing ``{"docs"}`` event); a JSON answer is rewritten whole. Texts are in
``TOKENMETER_QUOTA_NOTICE``'s languages.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from tokenmeter.instrumentation.asgi import Message, Send
from tokenmeter.instrumentation.quota.errors import QuotaVerdict
from tokenmeter.instrumentation.quota.gate import STOP_ACTIONS, QuotaNotices, stop_error
from tokenmeter.instrumentation.quota.responses import downgrade_notice, in_languages, warning_notice
from tokenmeter.instrumentation.safety import contained
from tokenmeter.integrations.chatchat_routes import AnswerStyle

_SEPARATOR: Final = b"\r\n\r\n"  # sse_starlette's, which Chatchat's streams use
_TEXT_MESSAGE: Final = 1  # Chatchat's MsgType.TEXT


class ToldWarnings:
    """The warnings told already: each once per threshold, budget, subject and period."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._lock = threading.Lock()
        self._told: dict[tuple[Any, ...], datetime | None] = {}
        self._capacity = capacity

    def first_time(self, verdict: QuotaVerdict) -> bool:
        key = (verdict.budget, verdict.scope, verdict.subject, verdict.resets_at, verdict.threshold)
        with self._lock:
            if key in self._told:
                return False
            if len(self._told) >= self._capacity:
                now = datetime.now(UTC)
                self._told = {k: ends for k, ends in self._told.items() if ends is None or ends > now}
                while len(self._told) >= self._capacity:  # still full: forget the oldest
                    del self._told[next(iter(self._told))]
            self._told[key] = verdict.resets_at
            return True


TOLD_WARNINGS = ToldWarnings()  # the API process's


@dataclass
class Said:
    texts: list[str] = field(default_factory=list)  # after the answer
    errors: list[str] = field(default_factory=list)  # in-stream errors

    def __bool__(self) -> bool:
        return bool(self.texts or self.errors)


def what_to_say(notices: QuotaNotices, languages: str, told: ToldWarnings) -> Said:
    said, seen = Said(), set()
    for verdict in list(notices):
        key = (verdict.action, verdict.budget, verdict.subject, verdict.effective_model)
        if key in seen:
            continue
        seen.add(key)
        if verdict.action == "warn" and languages != "off" and told.first_time(verdict):
            said.texts.append(in_languages(languages, lambda language, v=verdict: warning_notice(v, language)))
        elif verdict.action == "downgrade" and languages != "off":
            said.texts.append(in_languages(languages, lambda language, v=verdict: downgrade_notice(v, language)))
        elif verdict.action in STOP_ACTIONS:
            message = in_languages(languages, stop_error(verdict).message)
            (said.texts if verdict.action == "degrade" else said.errors).append(message)
    return said


def downgrade_of(notices: QuotaNotices) -> QuotaVerdict | None:
    return next((v for v in notices if v.action == "downgrade" and v.effective_model != v.requested_model), None)


def sse_event(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, ensure_ascii=False).encode() + _SEPARATOR


def parse_event(body: bytes) -> dict[str, Any] | None:
    """The JSON object of one ``data:`` event as Chatchat sends it (one event per message), else None."""
    if not body.startswith(b"data: ") or not body.endswith(_SEPARATOR):
        return None
    payload = body[6 : -len(_SEPARATOR)]
    if b"\n" in payload:
        return None
    try:
        data = json.loads(payload)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def named_after(data: dict[str, Any], downgrade: QuotaVerdict | None) -> bool:
    """Rename the requested model to the one that answered; True when something changed."""
    if downgrade is not None and data.get("model") == downgrade.requested_model:
        data["model"] = downgrade.effective_model
        return True
    return False


def openai_chunk(last: dict[str, Any] | None, text: str) -> dict[str, Any]:
    """A chunk as Chatchat's own (``OpenAIChatOutput``), carrying ``text``, like the stream's last one."""
    kept = {name: last[name] for name in ("id", "created", "model", "message_id") if last and name in last}
    return {
        "id": f"chat{uuid.uuid4()}", "object": "chat.completion.chunk", "model": None, "message_id": None, **kept,
        "status": None, "message_type": _TEXT_MESSAGE, "is_ref": False,
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": text, "tool_calls": []},
                     "role": "assistant", "finish_reason": None}],
    }  # fmt: skip


def appended(text: str) -> str:
    return "\n\n" + text


def rewritten_json(body: bytes, said: Said, downgrade: QuotaVerdict | None) -> bytes:
    """A whole OpenAI-shaped answer with the notices after its content (kb_chat's is a JSON string of JSON);
    another answer (an error, Chatchat's ``{"code", "msg"}``) as it was."""
    data = json.loads(body)
    wrapped = isinstance(data, str)
    answer = json.loads(data) if wrapped else data
    choices = answer.get("choices") if isinstance(answer, dict) else None
    message = choices[0].get("message") if isinstance(choices, list) and choices else None
    if not isinstance(message, dict):
        return body
    message["content"] = (message.get("content") or "") + appended("\n\n".join([*said.texts, *said.errors]))
    named_after(answer, downgrade)
    text = json.dumps(answer, ensure_ascii=False)
    return json.dumps(text if wrapped else answer, ensure_ascii=False).encode()


class AnswerNotices:
    """``send`` for one request: passes the response through, adding the quota notices at its end."""

    def __init__(self, send: Send, style: AnswerStyle, notices: QuotaNotices, languages: str,
                 told: ToldWarnings = TOLD_WARNINGS) -> None:  # fmt: skip
        self._send, self._style, self._notices = send, style, notices
        self._languages, self._told = languages, told
        self._mode = "pass"  # "stream" (server-sent events), "json" (held whole) or "pass"
        self._start: Message | None = None
        self._body: list[bytes] = []
        self._last: dict[str, Any] | None = None  # the stream's last event
        self._docs: dict[str, Any] | None = None  # file_chat's closing event, held back
        self._errored = False  # the stream carried an error event already

    async def __call__(self, message: Message) -> None:
        kind = message.get("type")
        if kind == "http.response.start":
            await self._started(message)
        elif kind != "http.response.body" or self._mode == "pass":
            await self._send(message)
        elif self._mode == "json":
            await self._json_body(message)
        else:
            await self._event(message)

    async def _started(self, message: Message) -> None:
        headers = dict(message.get("headers") or ())
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip()
        if message.get("status") == 200 and content_type == b"text/event-stream":
            self._mode = "stream"
        elif message.get("status") == 200 and content_type == b"application/json" and self._style == "openai":
            self._mode = "json"  # the model call is over: what there is to say is known
            self._start = message
            return
        await self._send(message)

    async def _json_body(self, message: Message) -> None:
        self._body.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        assert self._start is not None
        body = b"".join(self._body)
        with contained("Chatchat quota notice"):
            said = what_to_say(self._notices, self._languages, self._told)
            if said:
                body = rewritten_json(body, said, downgrade_of(self._notices))
        headers = [(name, value) for name, value in self._start.get("headers") or () if name != b"content-length"]
        start = {**self._start, "headers": [*headers, (b"content-length", str(len(body)).encode())]}
        await self._send(start)
        await self._send({"type": "http.response.body", "body": body})

    async def _event(self, message: Message) -> None:
        with contained("Chatchat quota notice"):
            message = self._seen(message)
        if message.get("body"):
            await self._send(message)
        if message.get("more_body", False):
            return
        events = [sse_event(self._docs)] if self._docs is not None else []  # held back: never lost
        with contained("Chatchat quota notice"):
            events = self._closing_events()
        for event in events:
            await self._send({"type": "http.response.body", "body": event, "more_body": True})
        await self._send({**message, "body": b""})

    def _seen(self, message: Message) -> Message:
        """Note an event; rename the model in it; hold back file_chat's closing ``{"docs"}``."""
        data = parse_event(message.get("body", b""))
        if data is None:
            return message
        self._errored = self._errored or "error" in data
        if self._style == "file_chat" and "docs" in data:
            self._docs = data
            return {**message, "body": b""}
        self._last = data
        if named_after(data, downgrade_of(self._notices)):
            return {**message, "body": sse_event(data)}
        return message

    def _closing_events(self) -> list[bytes]:
        said = what_to_say(self._notices, self._languages, self._told)
        errors = [] if self._errored else said.errors
        text = appended("\n\n".join(said.texts)) if said.texts else ""
        if self._style == "openai":
            return [
                *([sse_event(openai_chunk(self._last, text))] if text else []),
                *(sse_event({"error": error}) for error in errors),
            ]
        events = [sse_event({"code": 429, "msg": error}) for error in errors]
        if self._docs is not None and "answer" in self._docs:  # file_chat's one event when not streamed
            self._docs["answer"] = (self._docs["answer"] or "") + text
        elif text:
            events.insert(0, sse_event({"answer": text}))
        return [*events, *([sse_event(self._docs)] if self._docs is not None else [])]
