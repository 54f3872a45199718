"""Chatchat's POST /chat/feedback observed: a real Starlette app with a route that answers as
Chatchat's does, wired with the integration's own ``add_identity_middleware``; ratings read from
the OTel SDK's in-memory log exporter. (The real Chatchat: tests/test_chatchat_ratings.py.)"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from rating_logs import Ratings, instrument_with
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tokenmeter import semconv
from tokenmeter.integrations.chatchat import add_identity_middleware
from tokenmeter.integrations.chatchat_feedback import MAX_OBSERVED_BYTES, ChatchatRating, accepted_rating

try:  # the openai SDK 3.x ships httpx2; older environments have httpx
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    httpx = pytest.importorskip("httpx")

pytestmark = pytest.mark.usefixtures("no_service_name")
RATER = {"X-Forwarded-User": "zhang", "X-Department": "法务部".encode()}


class FeedbackApp:
    """A Starlette app whose /chat/feedback answers like Chatchat's: HTTP 200, ``code`` 200 or 500."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.known = {"m-1", "m-2"}
        self.app = Starlette(routes=[Route("/chat/feedback", self.feedback, methods=["POST"]),
                                     Route("/chat/other", self.feedback, methods=["POST"])])  # fmt: skip
        add_identity_middleware(self.app)

    async def feedback(self, request: Request) -> JSONResponse:
        body = await request.body()
        self.received.append(body)
        message_id = json.loads(body).get("message_id")
        if message_id not in self.known:  # Chatchat: 'NoneType' object has no attribute 'id'
            return JSONResponse({"code": 500, "msg": "反馈聊天记录出错： no such message", "data": None})
        return JSONResponse({"code": 200, "msg": f"已反馈聊天记录 {message_id}", "data": None})


@pytest.fixture
def ratings() -> Iterator[Ratings]:
    found = Ratings()
    instrumentor = instrument_with(found, hash_key="k")
    try:
        yield found
    finally:
        instrumentor.uninstrument()


async def post(app: Any, body: bytes, path: str = "/chat/feedback", headers: dict[str, Any] | None = None) -> Any:
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        return await http.post(path, content=body, headers={"content-type": "application/json", **(headers or RATER)})


def rating_body(**fields: Any) -> bytes:
    return json.dumps({"message_id": "m-1", "score": 80, "reason": "很好", **fields}, ensure_ascii=False).encode()


async def test_an_accepted_rating_is_recorded_with_the_raters_identity(ratings: Ratings) -> None:
    chatchat = FeedbackApp()
    body = rating_body()
    response = await post(chatchat.app, body)
    assert response.status_code == 200
    assert response.json() == {"code": 200, "msg": "已反馈聊天记录 m-1", "data": None}  # Chatchat's answer, as it was
    assert chatchat.received == [body]  # and Chatchat got the request as sent
    _, attributes = ratings.only()
    assert attributes[semconv.TM_MESSAGE_ID] == "m-1"
    assert attributes[semconv.TM_FEEDBACK_SCORE] == 80.0
    assert (attributes[semconv.ENDUSER_ID], attributes[semconv.TM_DEPARTMENT]) == ("zhang", "法务部")
    assert semconv.TM_FEEDBACK_REASON_HASH in attributes and semconv.TM_FEEDBACK_REASON not in attributes


async def test_a_rating_chatchat_refused_is_not_recorded(ratings: Ratings) -> None:
    chatchat = FeedbackApp()
    response = await post(chatchat.app, rating_body(message_id="unknown"))
    assert response.json()["code"] == 500
    assert ratings.records() == []


async def test_two_ratings_of_one_message_are_two_records_the_later_last(ratings: Ratings) -> None:
    chatchat = FeedbackApp()
    await post(chatchat.app, rating_body(score=90))
    await post(chatchat.app, rating_body(score="30"))  # Chatchat's int field takes a numeric string
    assert [a[semconv.TM_FEEDBACK_SCORE] for a in ratings.attributes()] == [90.0, 30.0]


async def test_other_routes_are_not_ratings(ratings: Ratings) -> None:
    chatchat = FeedbackApp()
    assert (await post(chatchat.app, rating_body(), path="/chat/other")).json()["code"] == 200
    assert ratings.records() == []


async def test_a_body_over_the_limit_passes_through_unread(ratings: Ratings) -> None:
    chatchat = FeedbackApp()
    body = rating_body(reason="长" * MAX_OBSERVED_BYTES)
    response = await post(chatchat.app, body)
    assert response.json()["code"] == 200
    assert chatchat.received == [body]  # all of it reached Chatchat
    assert ratings.records() == []


async def test_a_score_off_the_scale_is_not_recorded_and_said_once(
    ratings: Ratings, caplog: pytest.LogCaptureFixture
) -> None:
    chatchat = FeedbackApp()
    with caplog.at_level(logging.WARNING, logger="tokenmeter"):
        for _ in range(2):
            response = await post(chatchat.app, rating_body(score=150))
            assert response.json()["code"] == 200  # Chatchat does not check the range
    assert ratings.records() == []
    assert sum("a rating Chatchat accepted was not recorded" in r.getMessage() for r in caplog.records) == 1


async def test_a_request_body_in_several_chunks_is_read_whole(ratings: Ratings) -> None:
    chatchat = FeedbackApp()
    body = rating_body(message_id="m-2", score=55)
    chunks = [body[:7], body[7:20], body[20:]]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/chat/feedback", "raw_path": b"/chat/feedback", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json"), (b"x-forwarded-user", b"li")],
             "client": ("127.0.0.1", 50000), "server": ("testserver", 80)}  # fmt: skip
    await chatchat.app(scope, receive, send)
    assert chatchat.received == [body]
    _, attributes = ratings.only()
    assert (attributes[semconv.TM_MESSAGE_ID], attributes[semconv.TM_FEEDBACK_SCORE]) == ("m-2", 55.0)
    assert attributes[semconv.ENDUSER_ID] == "li"


@pytest.mark.parametrize(
    ("request_body", "status", "answer", "expected"),
    [
        (rating_body(), 200, b'{"code": 200}', ChatchatRating("m-1", 80.0, "很好")),
        (rating_body(reason=""), 200, b'{"code": 200}', ChatchatRating("m-1", 80.0, None)),
        (b'{"message_id": "m-1"}', 200, b'{"code": 200}', ChatchatRating("m-1", 0.0, None)),  # Chatchat's default
        (rating_body(), 500, b'{"code": 200}', None),
        (rating_body(), 200, b'{"code": 500}', None),
        (rating_body(), 200, b"not json", None),
        (b"[1]", 200, b'{"code": 200}', None),
        (rating_body(message_id=""), 200, b'{"code": 200}', None),
        (rating_body(score=True), 200, b'{"code": 200}', None),
        (rating_body(score="many"), 200, b'{"code": 200}', None),
    ],
)
def test_accepted_rating(request_body: bytes, status: int, answer: bytes, expected: ChatchatRating | None) -> None:
    assert accepted_rating(request_body, status, answer) == expected
