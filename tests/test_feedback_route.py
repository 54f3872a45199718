"""``POST /v1/feedback`` on a real `tokenmeter serve`: ratings through the ingest queue into the store, joined to
calls sent over OTLP/HTTP, read back with ``GET /v1/compare``."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from otlp_requests import post
from serve_process import ServeProcess
from test_rating_queries import Call, call_request

from tokenmeter import semconv

TOKEN = "feedback-api-token"
KEY = "feedback-hash-key"
NOW = datetime.now(UTC)
PERIOD = NOW.strftime("%Y-%m")  # the calls' month, in UTC


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    environment = {"TOKENMETER_API_TOKEN": TOKEN, "TOKENMETER_HASH_KEY": KEY}
    process = ServeProcess(tmp_path_factory.mktemp("feedback"), env=environment).start()
    try:
        yield process
    finally:
        process.stop()


def send_calls(serve: ServeProcess, calls: list[Call], first_number: int) -> None:
    """Over OTLP/HTTP, as an app exports them (span numbers from ``first_number``: unique within the store)."""
    for number, call in enumerate(calls, start=first_number):
        response = post(serve.otlp_http, "traces", call_request(call, number).SerializeToString())
        assert response.status_code == 200, response.text


def feedback(serve: ServeProcess, body: Any, token: str | None = TOKEN, **options: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.post(f"{serve.api}/v1/feedback", json=body, headers=headers, timeout=30, **options)


def compared(serve: ServeProcess, app: str) -> dict[str, Any]:
    """The app's one row in GET /v1/compare for the calls' month."""
    answer = httpx.get(f"{serve.api}/v1/compare", params={"period": PERIOD, "app": app},
                       headers={"authorization": f"Bearer {TOKEN}"}, timeout=30)  # fmt: skip
    assert answer.status_code == 200, answer.text
    [row] = answer.json()["rows"]
    return row


def test_a_rating_posted_twice_counts_once_and_a_later_one_replaces(serve: ServeProcess) -> None:
    send_calls(serve, [Call("qwen-7b", NOW, message_id="faq-1", app="faq")], first_number=100)
    for _ in range(2):
        answer = feedback(serve, {"score": 40, "message_id": "faq-1"})
        assert answer.status_code == 202, answer.text
    row = compared(serve, "faq")
    assert (row["answers"], row["rated_answers"], row["mean_rating"]) == (1, 1, 40.0)

    assert feedback(serve, {"score": 90, "message_id": "faq-1"}).status_code == 202

    row = compared(serve, "faq")
    assert (row["answers"], row["rated_answers"], row["mean_rating"]) == (1, 1, 90.0)


def test_a_rating_by_response_id_says_what_was_recorded(serve: ServeProcess) -> None:
    send_calls(serve, [Call("qwen-7b", NOW, response_id="chatcmpl-7", app="no-ids")], first_number=200)
    body = {"score": 70, "response_id": "chatcmpl-7", "user": " carol ", "department": "法务部", "app": "no-ids",
            "reason": "cited the wrong clause"}  # fmt: skip

    answer = feedback(serve, body)

    assert answer.status_code == 202, answer.text
    recorded = answer.json()["recorded"]
    assert (recorded["event_name"], recorded["scope"]) == ("tokenmeter.feedback", "tokenmeter")
    digest = hmac.new(KEY.encode(), b"cited the wrong clause", hashlib.sha256).hexdigest()
    assert recorded["attributes"] == {
        semconv.EVENT_NAME: semconv.EVENT_FEEDBACK, semconv.TM_FEEDBACK_SCORE: 70.0,
        semconv.GEN_AI_RESPONSE_ID: "chatcmpl-7", semconv.ENDUSER_ID: "carol", semconv.TM_DEPARTMENT: "法务部",
        semconv.TM_APP: "no-ids", semconv.TM_FEEDBACK_REASON_HASH: digest,  # no text: content capture is off
    }  # fmt: skip
    assert datetime.fromisoformat(recorded["rated_at"]) >= NOW
    row = compared(serve, "no-ids")
    assert (row["rated_answers"], row["mean_rating"]) == (1, 70.0)


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"score": 101, "message_id": "bad-1"}, "score: Input should be less than or equal to 100"),
        ({"score": "80", "message_id": "bad-1"}, "score: Input should be a valid number"),
        ({"score": True, "message_id": "bad-1"}, "score: Input should be a valid number"),
        ({"message_id": "bad-1"}, "score: Field required"),
        ({"score": 80}, "name the answer rated with message_id"),
        ({"score": 80, "message_id": "bad-1", "response_id": "r"}, "message_id (the app's id) or response_id"),
        ({"score": 80, "message_id": "   "}, "message_id: is empty"),
        ({"score": 80, "message_id": "bad-1", "mood": "happy"}, "mood: Extra inputs are not permitted"),
        ({"score": 80, "message_id": "bad-1", "reason": 5}, "reason: Input should be a valid string"),
        ([80, "bad-1"], "body: Input should be an object"),
        ("score=80", "body: Invalid JSON"),
    ],
)
def test_a_bad_body_gets_400_naming_the_field_and_stores_nothing(serve: ServeProcess, body: Any, named: str) -> None:
    # the same span each time (stored once)
    send_calls(serve, [Call("qwen-7b", NOW, message_id="bad-1", app="bad")], first_number=300)
    if isinstance(body, str):  # not JSON at all
        headers = {"authorization": f"Bearer {TOKEN}", "content-type": "application/json"}
        answer = httpx.post(f"{serve.api}/v1/feedback", content=body, headers=headers, timeout=30)
    else:
        answer = feedback(serve, body)

    assert answer.status_code == 400
    assert named in answer.json()["error"]
    assert compared(serve, "bad")["rated_answers"] == 0


def test_without_the_api_token_nothing_is_stored(serve: ServeProcess) -> None:
    send_calls(serve, [Call("qwen-7b", NOW, message_id="locked-1", app="locked")], first_number=400)
    body = {"score": 10, "message_id": "locked-1"}

    assert feedback(serve, body, token=None).status_code == 401
    assert feedback(serve, body, token="not-the-token").status_code == 401
    assert httpx.get(f"{serve.api}/v1/compare", params={"period": PERIOD}, timeout=30).status_code == 401
    assert compared(serve, "locked")["rated_answers"] == 0


def test_compare_refuses_bad_parameters_naming_them(serve: ServeProcess) -> None:
    headers = {"authorization": f"Bearer {TOKEN}"}
    for params, named in (({"period": "2026-13"}, "period: '2026-13' is not a period"),
                          ({"min_ratings": "1"}, "min_ratings: '1' is not a whole number of at least 2"),
                          ({"margin": "-5"}, "margin: '-5' is not a positive number"),
                          ({"timezone": "Mars/Base"}, "timezone: 'Mars/Base' is not a time zone"),
                          ({"apps": "faq"}, "unknown parameter 'apps'")):  # fmt: skip
        answer = httpx.get(f"{serve.api}/v1/compare", params=params, headers=headers, timeout=30)
        assert (answer.status_code, named in answer.json()["error"]) == (400, True), answer.text


def test_the_stored_record_is_the_contracts_log_record(tmp_path: Path) -> None:
    """With content capture on, the reason's text is stored too; the rest as the app side records a rating."""
    environment = {"TOKENMETER_API_TOKEN": TOKEN, "TOKENMETER_HASH_KEY": KEY,
                   "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true"}  # fmt: skip
    serve = ServeProcess(tmp_path, env=environment).start()
    try:
        body = {"score": 85.5, "message_id": "m-9", "reason": "clear and short", "user": "dave", "app": "kb"}
        assert feedback(serve, body).status_code == 202
    finally:
        serve.stop()
    with serve.store() as store:
        [(scope, event, service, severity, attributes)] = store.query(
            "SELECT ScopeName, EventName, ServiceName, SeverityText, LogAttributes FROM otel_logs"
        ).result_rows
        [rating] = store.query(
            "SELECT message_key, key_kind, score, rater, department, app, reason_hash, reason FROM answer_ratings"
        ).result_rows
    digest = hmac.new(KEY.encode(), b"clear and short", hashlib.sha256).hexdigest()
    assert (scope, event, service, severity) == ("tokenmeter", "tokenmeter.feedback", "tokenmeter-serve", "INFO")
    assert attributes == {
        semconv.EVENT_NAME: semconv.EVENT_FEEDBACK, semconv.TM_FEEDBACK_SCORE: "85.5", semconv.TM_MESSAGE_ID: "m-9",
        semconv.ENDUSER_ID: "dave", semconv.TM_APP: "kb", semconv.TM_FEEDBACK_REASON_HASH: digest,
        semconv.TM_FEEDBACK_REASON: "clear and short",
    }  # fmt: skip
    assert rating == ("m-9", "message", 85.5, "dave", "", "kb", digest, "clear and short")
