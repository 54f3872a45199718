"""A chat call's question features (tokenmeter.question.chars, conversation.depth, prompt.chars), the
retrieval hint (``tokenmeter.retrieval``) and the app's route, on the spans of real openai SDK calls."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai_server import OpenAICompatibleServer
from telemetry_fixtures import Telemetry, make_telemetry

import tokenmeter
from tokenmeter import semconv
from tokenmeter.catalog import ModelCatalog
from tokenmeter.instrumentation.asgi import IdentityMiddleware
from tokenmeter.instrumentation.instrumentor import TokenmeterInstrumentor
from tokenmeter.instrumentation.question_features import QuestionFeatures, question_features
from tokenmeter.instrumentation.retrieval import current_retrieval
from tokenmeter.settings import Settings
from tokenmeter.tokenizers import TokenizerRegistry

IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 5000}}


def test_a_first_question() -> None:
    assert question_features([{"role": "user", "content": "年假有几天？"}]) == QuestionFeatures("年假有几天？", 6, 1, 6)


def test_the_last_user_message_is_the_question_and_every_role_counts_in_the_prompt() -> None:
    messages = [
        {"role": "system", "content": "你是助手。"},  # 5
        {"role": "user", "content": "hello"},  # 5
        {"role": "assistant", "content": "hi there", "tool_calls": [{"id": "t", "type": "function"}]},  # 8
        {"role": "tool", "tool_call_id": "t", "content": "42"},  # 2
        {"role": "user", "content": "why is the sky blue?"},  # 20
        {"role": "assistant", "content": None},
    ]
    assert question_features(messages) == QuestionFeatures("why is the sky blue?", 20, 2, 40)


def test_content_parts_count_their_text_and_images_count_for_nothing() -> None:
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "be brief"}]},  # 8
        {"role": "user", "content": [{"type": "text", "text": "what is"}, IMAGE, {"type": "text", "text": "this?"}]},
    ]
    features = question_features(messages)
    assert features == QuestionFeatures("what is\nthis?", 12, 1, 20)  # the joins are not the user's characters


def test_no_question() -> None:
    empty = QuestionFeatures("", 0, 0, 0)
    assert question_features([]) == empty
    assert question_features(None) == empty
    assert question_features("not messages") == empty
    assert question_features([{"role": "system", "content": "rules"}]) == QuestionFeatures("", 0, 0, 5)
    assert question_features([{"role": "user", "content": [IMAGE]}]) == QuestionFeatures("", 0, 1, 0)
    assert question_features([{"role": "user"}, "junk", None]) == QuestionFeatures("", 0, 1, 0)


def test_retrieval_is_a_context_manager_and_a_plain_call() -> None:
    assert current_retrieval() is None
    with tokenmeter.retrieval(3, top_score=0.81) as hint:
        assert hint is not None and (hint.passages, hint.top_score) == (3, 0.81)
        with tokenmeter.retrieval(0):
            assert current_retrieval() == type(hint)(0, None)
        assert current_retrieval() == hint
    assert current_retrieval() is None

    async def request() -> Any:
        tokenmeter.retrieval(2, top_score=1)  # for the rest of this task's context
        return current_retrieval()

    assert asyncio.run(request()) == type(hint)(2, 1.0)
    assert current_retrieval() is None  # the task's context ended with it


@pytest.mark.parametrize(("passages", "top_score"), [(-1, None), (True, None), (1.5, None), (1, float("nan")),
                                                     (1, float("inf")), (1, "0.9")])  # fmt: skip
def test_retrieval_refuses_what_is_not_a_count_or_a_score(passages: Any, top_score: Any) -> None:
    with pytest.raises(ValueError):
        tokenmeter.retrieval(passages, top_score)


@pytest.fixture
def metered(openai_server: OpenAICompatibleServer) -> Iterator[tuple[Telemetry, openai.OpenAI]]:
    telemetry = make_telemetry()
    instrumentor = TokenmeterInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider,
                            settings=Settings(local_count="fallback"), skip_dep_check=True,
                            registry=TokenizerRegistry(ModelCatalog.load(None)))  # fmt: skip
    try:
        yield telemetry, openai.OpenAI(base_url=openai_server.base_url, api_key="sk-test", max_retries=0)
    finally:
        instrumentor.uninstrument()


def _span(telemetry: Telemetry) -> dict[str, Any]:
    assert tokenmeter.flush(timeout_s=30)
    return dict(telemetry.spans()[-1].attributes or {})


def test_chat_spans_carry_the_features_and_the_retrieval_embeddings_do_not(
    metered: tuple[Telemetry, openai.OpenAI],
) -> None:
    telemetry, client = metered
    messages = [{"role": "system", "content": "资料：年假五天。"}, {"role": "user", "content": "年假有几天？"}]
    with tokenmeter.retrieval(4, top_score=0.72):
        client.chat.completions.create(model="qwen2.5-7b-instruct", messages=messages)  # type: ignore[arg-type]
        chat = _span(telemetry)
        client.embeddings.create(model="text-embedding-3-small", input="年假")
        embedding = _span(telemetry)
    assert (chat[semconv.TM_QUESTION_CHARS], chat[semconv.TM_CONVERSATION_DEPTH], chat[semconv.TM_PROMPT_CHARS]) == (
        6, 1, 14,
    )  # fmt: skip
    assert (chat[semconv.TM_RETRIEVAL_PASSAGES], chat[semconv.TM_RETRIEVAL_TOP_SCORE]) == (4, 0.72)
    assert semconv.TM_APP_ROUTE not in chat  # no request is being served
    for name in (semconv.TM_QUESTION_CHARS, semconv.TM_PROMPT_CHARS, semconv.TM_RETRIEVAL_PASSAGES):
        assert name not in embedding
    client.chat.completions.create(model="qwen2.5-7b-instruct", messages=messages[1:])  # type: ignore[arg-type]
    assert semconv.TM_RETRIEVAL_PASSAGES not in _span(telemetry)  # the hint ended with its block


def test_calls_made_for_a_request_carry_its_route_and_its_own_retrieval(
    metered: tuple[Telemetry, openai.OpenAI],
) -> None:
    """A Starlette app behind the identity middleware: the route's template, not the path with its ids."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    telemetry, client = metered

    async def ask(request: Request) -> JSONResponse:
        if request.query_params.get("retrieved"):
            tokenmeter.retrieval(int(request.query_params["retrieved"]), top_score=0.9)  # for this request only
        await asyncio.to_thread(client.chat.completions.create, model="qwen2.5-7b-instruct",
                                messages=[{"role": "user", "content": "hi"}])  # fmt: skip
        return JSONResponse({})

    app = IdentityMiddleware(Starlette(routes=[Route("/kb/{kb_name}/ask", ask, methods=["POST"])]), Settings())

    async def requests() -> list[dict[str, Any]]:
        spans = []
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as http:
            for path in ("/kb/hr/ask?retrieved=3", "/kb/legal/ask"):
                assert (await http.post(path)).status_code == 200
                spans.append(_span(telemetry))
        return spans

    first, second = asyncio.run(requests())
    assert (first[semconv.TM_APP_ROUTE], first[semconv.TM_RETRIEVAL_PASSAGES]) == ("/kb/{kb_name}/ask", 3)
    assert second[semconv.TM_APP_ROUTE] == "/kb/{kb_name}/ask"
    assert semconv.TM_RETRIEVAL_PASSAGES not in second  # the first request's hint ended with it
