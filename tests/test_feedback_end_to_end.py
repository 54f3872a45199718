"""Ratings end to end: an app rates answers with tokenmeter.feedback(), the record travels OTLP to a
real `tokenmeter serve`, and the store holds the latest rating of each answer beside the answer's calls.

The app is the real openai SDK against a local OpenAI-compatible server, under `opentelemetry-instrument`
(the SDK's own exporters, OTEL_LOGS_EXPORTER=otlp) or instrumented with `tokenmeter.instrument()` alone
(no logger provider configured: tokenmeter makes one from OTEL_LOGS_EXPORTER). The store is read after
serve has stopped (chDB: one process at a time).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from openai_server import SERVER_PROMPT_TOKENS, OpenAICompatibleServer
from serve_process import ServeProcess, running_serve

APP = textwrap.dedent(
    """
    import os
    import openai
    import tokenmeter

    if os.environ.get("TEST_INSTRUMENT") == "1":
        tokenmeter.instrument()
    client = openai.OpenAI(base_url=os.environ["TEST_OPENAI_BASE_URL"], api_key="sk-test", max_retries=0)

    def ask(**kwargs):
        response = client.chat.completions.create(
            model="qwen2.5-7b-instruct", messages=[{"role": "user", "content": "合同第三条是什么意思？"}],
            max_tokens=7, **kwargs)
        return response

    with tokenmeter.attribution(user="alice", department="法务部", app="kb-assistant"):
        with tokenmeter.attribution(message="m-1"):  # an answer of two calls
            ask()
            for _ in ask(stream=True, stream_options={"include_usage": True}):
                pass
        with tokenmeter.attribution(message="m-2"):
            response_id = ask().id
    with tokenmeter.attribution(user="bob", department="销售部", app="kb-assistant"):
        tokenmeter.feedback(80, message_id="m-1", reason="清楚")
        tokenmeter.feedback(40, message_id="m-1", reason="其实不对")  # bob changed his mind: this one counts
        tokenmeter.feedback(90, response_id=response_id)
    print("done", flush=True)
    """
)


def _instrument_command() -> list[str]:
    found = Path(sys.executable).parent / "opentelemetry-instrument"
    return [str(found) if found.exists() else str(shutil.which("opentelemetry-instrument"))]


def run_app(server: OpenAICompatibleServer, serve: ServeProcess, *, auto: bool) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("OTEL_", "TOKENMETER_"))}
    env.update({
        "TEST_OPENAI_BASE_URL": server.base_url, "TEST_INSTRUMENT": "0" if auto else "1",
        "OTEL_SERVICE_NAME": "rating-app", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": serve.otlp_http, "OTEL_LOGS_EXPORTER": "otlp",
        "OTEL_TRACES_EXPORTER": "otlp", "OTEL_METRICS_EXPORTER": "otlp", "TOKENMETER_HASH_KEY": "e2e",
    })  # fmt: skip
    command = [*(_instrument_command() if auto else []), sys.executable, "-c", APP]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0 and "done" in result.stdout, result.stderr[-3000:]


def latest_ratings(client: Any) -> dict[str, tuple[float, str, str, str, str, bool]]:
    """message_key -> (latest score, key kind, rater, department, app, reason hash present), as readers fold them."""
    rows = client.query(
        "SELECT message_key, argMax(score, rated_at), argMax(key_kind, rated_at), argMax(rater, rated_at),"
        " argMax(department, rated_at), argMax(app, rated_at), argMax(reason_hash, rated_at) != ''"
        " FROM answer_ratings GROUP BY message_key"
    ).result_rows
    return {str(row[0]): (float(row[1]), *(str(value) for value in row[2:6]), bool(row[6])) for row in rows}


@pytest.mark.parametrize("auto", [True, False], ids=["opentelemetry-instrument", "instrument()"])
def test_the_latest_rating_of_each_answer_is_stored(tmp_path: Path, openai_server: OpenAICompatibleServer,
                                                    auto: bool) -> None:  # fmt: skip
    with running_serve(tmp_path / "serve") as serve:
        run_app(openai_server, serve, auto=auto)
    with serve.store() as client:
        assert latest_ratings(client) == {
            "m-1": (40.0, "message", "bob", "销售部", "kb-assistant", True),
            "cmpl-test-1": (90.0, "response", "bob", "销售部", "kb-assistant", False),
        }
        [(rows,)] = client.query("SELECT count() FROM answer_ratings FINAL WHERE message_key = 'm-1'").result_rows
        assert rows == 1  # the later rating replaced the earlier
        [(reason,)] = client.query("SELECT count() FROM answer_ratings WHERE reason != ''").result_rows
        assert reason == 0  # no content capture: the reason's text is not stored
        if not auto:
            return  # tokenmeter.instrument() alone configures no span exporter: the calls are not in llm_usage
        calls = client.query(
            "SELECT message_id, count(), sum(input_tokens), sum(output_tokens), any(user) FROM llm_usage FINAL"
            " GROUP BY message_id ORDER BY message_id"
        ).result_rows
        assert [tuple(row) for row in calls] == [
            ("m-1", 2, 2 * SERVER_PROMPT_TOKENS, 2 * 7, "alice"),
            ("m-2", 1, SERVER_PROMPT_TOKENS, 7, "alice"),
        ]
        [(joined,)] = client.query(
            "SELECT count() FROM llm_usage AS calls FINAL"
            " INNER JOIN (SELECT message_key, argMax(score, rated_at) AS score FROM answer_ratings"
            "             WHERE key_kind = 'message' GROUP BY message_key) AS ratings"
            " ON calls.message_id = ratings.message_key WHERE ratings.score = 40"
        ).result_rows
        assert joined == 2  # the rating of m-1 reaches both of its calls
