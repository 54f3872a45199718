"""The quota notices added to Chatchat's answers, byte for byte as Chatchat's responses carry them.

The real Chatchat shows them in its WebUI (tests/test_chatchat_integration.py); here the
settings and the shapes of its answers that test does not reach: languages, ``off``, once per
threshold and period, whole JSON answers, file_chat's closing event.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

from tokenmeter.instrumentation.asgi import Message
from tokenmeter.instrumentation.quota.errors import QuotaVerdict
from tokenmeter.instrumentation.quota.gate import QuotaNotices
from tokenmeter.integrations.chatchat_notices import AnswerNotices, ToldWarnings, parse_event, sse_event
from tokenmeter.integrations.chatchat_routes import AnswerStyle

RESETS = datetime(2026, 11, 28, 16, tzinfo=UTC)
SSE = [(b"content-type", b"text/event-stream; charset=utf-8")]


def verdict(action: str, **fields: Any) -> QuotaVerdict:
    base: dict[str, Any] = {"budget": "daily", "scope": "user", "subject": "alice", "period": "day",
                            "used_tokens": 850, "limit_tokens": 1000, "ratio": 0.85, "threshold": 0.8,
                            "resets_at": RESETS, "timezone": "Asia/Shanghai"}  # fmt: skip
    models = ("qwen-max", "qwen-plus") if action == "downgrade" else ("qwen-max", "qwen-max")
    return QuotaVerdict(action, *models, **{**base, **fields})


def respond(style: AnswerStyle, notices: list[QuotaVerdict], messages: list[Message], languages: str = "zh+en",
            told: ToldWarnings | None = None) -> list[Message]:  # fmt: skip
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def run() -> None:
        answer = AnswerNotices(send, style, QuotaNotices(notices), languages, told or ToldWarnings())
        for message in messages:
            await answer(message)

    asyncio.run(run())
    return sent


def stream(*events: dict[str, Any], status: int = 200) -> list[Message]:
    return [
        {"type": "http.response.start", "status": status, "headers": SSE},
        *({"type": "http.response.body", "body": sse_event(event), "more_body": True} for event in events),
        {"type": "http.response.body", "body": b"", "more_body": False},
    ]


def events_of(sent: list[Message]) -> list[dict[str, Any]]:
    return [event for m in sent if m["type"] == "http.response.body" and (event := parse_event(m["body"]))]


def chunk(content: str, model: str = "qwen-max") -> dict[str, Any]:
    return {"id": "c1", "object": "chat.completion.chunk", "model": model, "status": None, "message_id": "m1",
            "choices": [{"delta": {"content": content}, "role": "assistant"}]}  # fmt: skip


def text_of(events: list[dict[str, Any]]) -> str:
    return "".join(event["choices"][0]["delta"]["content"] or "" for event in events if "choices" in event)


def test_a_warning_is_told_once_per_threshold_and_period_in_the_chosen_languages() -> None:
    told = ToldWarnings()
    zh_only = text_of(events_of(respond("openai", [verdict("warn")], stream(chunk("答案")), "zh", told)))
    assert zh_only.startswith("答案\n\n⚠️ 额度提醒") and "Quota notice" not in zh_only and "85%" in zh_only
    assert text_of(events_of(respond("openai", [verdict("warn")], stream(chunk("答案")), "zh", told))) == "答案"
    higher = verdict("warn", ratio=0.93, threshold=0.9)
    assert "Quota notice" in text_of(events_of(respond("openai", [higher], stream(chunk("a")), "en", told)))
    next_day = verdict("warn", resets_at=datetime(2026, 11, 29, 16, tzinfo=UTC))
    assert "⚠️" in text_of(events_of(respond("openai", [next_day], stream(chunk("a")), "zh+en", told)))


def test_off_appends_no_notice_but_still_says_an_answer_is_retrieval_only() -> None:
    quiet = events_of(respond("openai", [verdict("warn"), verdict("downgrade")], stream(chunk("a")), "off"))
    assert text_of(quiet) == "a"
    degraded = text_of(events_of(respond("openai", [verdict("degrade")], stream(chunk("")), "off")))
    assert "仅提供知识库检索结果" in degraded and "retrieval only" in degraded


def test_a_downgraded_stream_names_the_model_that_answered() -> None:
    events = events_of(respond("openai", [verdict("downgrade")], stream(chunk("a"), chunk("b"))))
    assert {event["model"] for event in events} == {"qwen-plus"}
    assert events[-1]["message_id"] == "m1" and "本回答由 qwen-plus 生成" in text_of(events)


def test_a_stop_the_app_swallowed_is_one_error_event() -> None:
    denied = events_of(respond("openai", [verdict("deny")], stream(chunk(""))))
    assert "额度已用尽" in denied[-1]["error"] and "Quota exceeded" in denied[-1]["error"]
    already = events_of(respond("openai", [verdict("deny")], stream({"error": "failed: 额度已用尽"})))
    assert already == [{"error": "failed: 额度已用尽"}]  # Chatchat said it itself


def test_file_chat_keeps_its_docs_event_last() -> None:
    streamed = events_of(respond("file_chat", [verdict("degrade")], stream({"docs": ["出处 [1]"]})))
    assert [list(event) for event in streamed] == [["answer"], ["docs"]] and "检索" in streamed[0]["answer"]
    whole = events_of(respond("file_chat", [verdict("degrade")], stream({"answer": "", "docs": ["出处 [1]"]})))
    assert len(whole) == 1 and "retrieval only" in whole[0]["answer"] and whole[0]["docs"] == ["出处 [1]"]
    denied = events_of(respond("file_chat", [verdict("deny")], stream({"docs": ["出处 [1]"]})))
    assert denied[0]["code"] == 429 and "额度已用尽" in denied[0]["msg"] and denied[-1] == {"docs": ["出处 [1]"]}


def test_a_whole_json_answer_is_rewritten_with_its_length() -> None:
    completion = {"model": "qwen-max", "choices": [{"message": {"role": "assistant", "content": "答案"}}]}
    for body in (json.dumps(completion), json.dumps(json.dumps(completion))):  # kb_chat's: a JSON string of JSON
        sent = respond("openai", [verdict("downgrade")], [
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json"),
                                                                        (b"content-length", b"1")]},
            {"type": "http.response.body", "body": body.encode()},
        ])  # fmt: skip
        data = json.loads(sent[1]["body"])
        answer = json.loads(data) if isinstance(data, str) else data
        assert answer["model"] == "qwen-plus" and answer["choices"][0]["message"]["content"].startswith(
            "答案\n\n本回答"
        )
        assert dict(sent[0]["headers"])[b"content-length"] == str(len(sent[1]["body"])).encode()


def test_other_answers_pass_unchanged() -> None:
    refused = stream(chunk("a"), status=429)
    assert respond("openai", [verdict("warn")], refused) == refused
    not_found = [{"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]},
                 {"type": "http.response.body", "body": b'{"code": 404, "msg": "no such knowledge base"}'}]  # fmt: skip
    assert respond("openai", [verdict("deny")], not_found)[1]["body"] == not_found[1]["body"]
