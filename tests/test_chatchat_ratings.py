"""Ratings from a real Langchain-Chatchat 0.3.1.3 reach the store joined to the calls of the answers they rate.

Runs when ``TOKENMETER_CHATCHAT_VENV`` names a venv with Chatchat and tokenmeter installed (as
tests/test_chatchat_integration.py). Chatchat runs under ``opentelemetry-instrument`` with environment
variables only (``OTEL_LOGS_EXPORTER=otlp``: ratings are log records) and exports to a real
``tokenmeter serve``; its model platform is a local OpenAI-compatible server.

The scenario runs once (module fixture): people chat with a ``conversation_id`` through Chatchat's API,
so Chatchat gives each answer a ``message_id``; they rate answers through ``POST /chat/feedback``
as Chatchat's API client sends ratings (``ApiRequest.chat_feedback``); Chatchat and serve are
stopped (Chatchat's API server flushes on SIGTERM) and the tests read serve's store and
Chatchat's own database.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from chatchat_process import ChatchatProcess, chatchat_venv, configure
from serve_process import ServeProcess

from tokenmeter.catalog import ModelCatalog
from tokenmeter.demo.llm_server import DemoLLMServer
from tokenmeter.tokenizers import TokenizerRegistry

VENV = chatchat_venv()
pytestmark = pytest.mark.skipif(VENV is None, reason="TOKENMETER_CHATCHAT_VENV is not set (make test sets it)")

LLMS = ["qwen2.5-7b-instruct"]
EMBEDDINGS = ["text-embedding-3-small"]
QUESTION = "合同第三条的违约责任是什么？"


@dataclass
class Scenario:
    """What happened at Chatchat's API, and where its results are kept."""

    answers: dict[str, str | None] = field(default_factory=dict)  # answer name -> Chatchat's message_id
    feedback: dict[str, dict[str, Any]] = field(default_factory=dict)  # rating name -> Chatchat's JSON answer
    serve: ServeProcess | None = None
    chatchat_root: Path | None = None
    chatchat_log: str = ""


def chat(chatchat: ChatchatProcess, user: str, department: str, *, stream: bool = False,
         **extra: Any) -> httpx.Response:  # fmt: skip
    body = {"model": LLMS[0], "messages": [{"role": "user", "content": QUESTION}], "stream": stream, **extra}
    answer = chatchat.post("/chat/chat/completions", body, user, department)
    assert answer.status_code == 200, answer.text
    return answer


def streamed_message_id(answer: httpx.Response) -> str | None:
    """The message_id of a streamed answer (every chunk carries it), as the WebUI reads it."""
    ids = {json.loads(line[len("data:") :]).get("message_id") for line in answer.text.splitlines()
           if line.startswith("data:") and line[len("data:") :].strip().startswith("{")}  # fmt: skip
    assert len(ids) == 1, answer.text
    return ids.pop()


def rate(chatchat: ChatchatProcess, user: str, department: str, message_id: str | None, score: int,
         reason: str = "") -> dict[str, Any]:  # fmt: skip
    """What Chatchat's API client sends (ApiRequest.chat_feedback): POST /chat/feedback."""
    response = chatchat.post("/chat/feedback", {"message_id": message_id, "score": score, "reason": reason}, user,
                             department)  # fmt: skip
    assert response.status_code == 200, response.text  # HTTP 200 either way; Chatchat's "code" says how it went
    answer: dict[str, Any] = response.json()
    return answer


def talk_and_rate(chatchat: ChatchatProcess, scenario: Scenario) -> None:
    plain = chat(chatchat, "zhang", "法务部", conversation_id="conv-zhang").json()
    scenario.answers["plain"] = plain.get("message_id")
    scenario.answers["streamed"] = streamed_message_id(
        chat(chatchat, "zhang", "法务部", stream=True, conversation_id="conv-zhang"))  # fmt: skip
    # Agent chat: the agent's model calls go through Chatchat's own /v1 (hops) to the model platform.
    scenario.answers["agent"] = streamed_message_id(
        chat(chatchat, "li", "销售部", stream=True, tools=["calculate"], conversation_id="conv-li"))  # fmt: skip
    scenario.answers["no conversation"] = chat(chatchat, "wang", "销售部").json().get("message_id")

    scenario.feedback["plain, first"] = rate(chatchat, "zhang", "法务部", scenario.answers["plain"], 80, "很清楚")
    scenario.feedback["plain, changed"] = rate(chatchat, "zhang", "法务部", scenario.answers["plain"], 40, "其实不对")
    scenario.feedback["agent"] = rate(chatchat, "li", "销售部", scenario.answers["agent"], 100)
    scenario.feedback["unknown"] = rate(chatchat, "wang", "销售部", "0" * 32, 10)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    assert VENV is not None
    work = tmp_path_factory.mktemp("chatchat-ratings")
    upstream = DemoLLMServer(TokenizerRegistry(ModelCatalog.load(None))).start()
    serve = ServeProcess(work / "serve").start()
    root = work / "chatchat"
    root.mkdir()
    port = configure(root, VENV, upstream.base_url, LLMS, EMBEDDINGS)
    chatchat = ChatchatProcess(root, VENV, port, {
        "OTEL_SERVICE_NAME": "chatchat", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": serve.otlp_http, "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "otlp", "OTEL_LOGS_EXPORTER": "otlp", "TOKENMETER_HASH_KEY": "chatchat-ratings",
    })  # fmt: skip
    found = Scenario(serve=serve, chatchat_root=root)
    try:
        chatchat.start()
        talk_and_rate(chatchat, found)
    finally:
        chatchat.stop()  # SIGTERM: the API server exports its spans and ratings as it stops
        found.chatchat_log = chatchat.log_tail() if chatchat.log.exists() else ""
        serve.stop()
        upstream.stop()
    yield found


def store_rows(scenario: Scenario, sql: str, **parameters: Any) -> list[tuple[Any, ...]]:
    assert scenario.serve is not None
    with scenario.serve.store() as client:
        return [tuple(row) for row in client.query(sql, parameters=parameters).result_rows]


def test_chatchat_names_the_answers_of_a_conversation_and_takes_their_ratings(scenario: Scenario) -> None:
    answers = scenario.answers
    assert all(answers[name] for name in ("plain", "streamed", "agent")), answers
    assert len({answers["plain"], answers["streamed"], answers["agent"]}) == 3
    assert answers["no conversation"] is None  # no conversation_id: Chatchat makes no message
    assert [scenario.feedback[name]["code"] for name in ("plain, first", "plain, changed", "agent")] == [200] * 3
    assert scenario.feedback["unknown"]["code"] == 500  # Chatchat refused it


def test_the_calls_of_each_answer_carry_its_message_id(scenario: Scenario) -> None:
    answers = scenario.answers
    rows = store_rows(
        scenario,
        "SELECT message_id, count(), arrayStringConcat(groupUniqArray(user), ',') FROM llm_usage FINAL"
        " WHERE operation = 'chat' GROUP BY message_id",
    )
    calls = {str(message_id): (int(count), str(users)) for message_id, count, users in rows}
    assert calls[str(answers["plain"])] == (1, "zhang"), calls
    assert calls[str(answers["streamed"])] == (1, "zhang"), calls
    # The agent's calls were forwarded by Chatchat's /v1: the hop carried the answer's id with the user.
    agent_calls, agent_users = calls[str(answers["agent"])]
    assert agent_calls >= 1 and agent_users == "li", calls
    assert calls[""] == (1, "wang"), calls  # the answer without a conversation has no id


def test_the_latest_rating_of_each_answer_is_in_the_store_joined_to_its_calls(scenario: Scenario) -> None:
    answers = scenario.answers
    rows = store_rows(
        scenario,
        "SELECT message_key, argMax(score, rated_at), argMax(key_kind, rated_at), argMax(rater, rated_at),"
        " argMax(department, rated_at), argMax(app, rated_at), argMax(reason_hash, rated_at) != ''"
        " FROM answer_ratings GROUP BY message_key",
    )
    ratings = {
        str(key): (float(score), str(kind), str(rater), str(department), str(app), bool(reason_hash))
        for key, score, kind, rater, department, app, reason_hash in rows
    }
    assert ratings == {
        str(answers["plain"]): (40.0, "message", "zhang", "法务部", "chatchat", True),
        str(answers["agent"]): (100.0, "message", "li", "销售部", "chatchat", False),
    }, scenario.chatchat_log
    joined = store_rows(
        scenario, "SELECT ratings.score, sum(calls.input_tokens) > 0, any(calls.effective_model)"
        " FROM llm_usage AS calls FINAL INNER JOIN answer_ratings AS ratings FINAL"
        " ON calls.message_id = ratings.message_key WHERE ratings.message_key = {key:String}"
        " GROUP BY ratings.score", key=str(answers["plain"]))  # fmt: skip
    assert joined == [(40.0, True, LLMS[0])]
    assert store_rows(scenario, "SELECT count() FROM answer_ratings WHERE reason != ''") == [(0,)]  # no content


def test_chatchat_keeps_its_own_feedback_too(scenario: Scenario) -> None:
    assert scenario.chatchat_root is not None
    database = scenario.chatchat_root / "data" / "knowledge_base" / "info.db"
    with sqlite3.connect(database) as connection:
        rows = dict(
            (message_id, (score, reason))
            for message_id, score, reason in connection.execute(
                "SELECT id, feedback_score, feedback_reason FROM message WHERE id IN (?, ?)",
                (scenario.answers["plain"], scenario.answers["agent"]),
            )
        )
    assert rows == {scenario.answers["plain"]: (40, "其实不对"), scenario.answers["agent"]: (100, "")}
