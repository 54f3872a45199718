"""tokenmeter.feedback(): one OTel log record per rating, through the real OTel SDK's log pipeline.

In process: instrumented with an SDK LoggerProvider and its in-memory exporter. In subprocesses:
a process with no logger provider configured gets one of tokenmeter's own from OTEL_LOGS_EXPORTER
(the console exporter, whose output the test reads), flushed at exit and on SIGTERM; with no
exporter named, the rating is dropped with one warning and the app goes on.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk._logs import LoggerProvider
from rating_logs import Ratings, instrument_with
from telemetry_fixtures import make_telemetry

import tokenmeter
from tokenmeter import semconv
from tokenmeter.instrumentation.instrumentor import TokenmeterInstrumentor
from tokenmeter.settings import Settings

HASH_KEY = "rating-key"
REASON = "答非所问, off topic"

pytestmark = pytest.mark.usefixtures("no_service_name")


@pytest.fixture
def ratings() -> Iterator[Ratings]:
    found = Ratings()
    instrumentor = instrument_with(found, hash_key=HASH_KEY)
    try:
        yield found
    finally:
        instrumentor.uninstrument()


def test_a_rating_is_one_event_of_the_tokenmeter_scope(ratings: Ratings) -> None:
    with tokenmeter.attribution(user="张三", department="法务部", app="kb-assistant", session="c-1", message="m-0"):
        tokenmeter.feedback(80, message_id="m-1")
    record, attributes = ratings.only()
    assert record.instrumentation_scope is not None
    assert record.instrumentation_scope.name == semconv.INSTRUMENTATION_SCOPE == "tokenmeter"
    assert record.log_record.event_name == semconv.EVENT_FEEDBACK == "tokenmeter.feedback"
    assert attributes == {
        semconv.EVENT_NAME: semconv.EVENT_FEEDBACK,
        semconv.TM_FEEDBACK_SCORE: 80.0,
        semconv.TM_MESSAGE_ID: "m-1",  # the answer named, not the one the rater's own code was in
        semconv.ENDUSER_ID: "张三",
        semconv.TM_DEPARTMENT: "法务部",
        semconv.TM_APP: "kb-assistant",
    }
    assert isinstance(attributes[semconv.TM_FEEDBACK_SCORE], float)
    assert record.log_record.timestamp is not None and record.log_record.timestamp > 0


def test_a_later_rating_has_a_later_time(ratings: Ratings) -> None:
    tokenmeter.feedback(80, message_id="m-1")
    tokenmeter.feedback(Decimal("40.5"), message_id="m-1")
    first, second = ratings.records()
    assert [r.log_record.attributes[semconv.TM_FEEDBACK_SCORE] for r in (first, second)] == [80.0, 40.5]
    assert second.log_record.timestamp > first.log_record.timestamp  # the store keeps the later one


def test_a_response_id_names_the_answer_of_apps_without_message_ids(ratings: Ratings) -> None:
    tokenmeter.feedback(0, response_id="chatcmpl-42")
    _, attributes = ratings.only()
    assert attributes[semconv.GEN_AI_RESPONSE_ID] == "chatcmpl-42"
    assert semconv.TM_MESSAGE_ID not in attributes
    assert attributes[semconv.TM_FEEDBACK_SCORE] == 0.0


def test_the_rater_given_wins_field_by_field_over_the_attribution(ratings: Ratings) -> None:
    with tokenmeter.attribution(user="alice", department="ml", app="chat"):
        tokenmeter.feedback(100, message_id="m-1", user=" bob\n", app="kb")
    _, attributes = ratings.only()
    assert (attributes[semconv.ENDUSER_ID], attributes[semconv.TM_DEPARTMENT], attributes[semconv.TM_APP]) == (
        "bob", "ml", "kb")  # fmt: skip


def test_without_attribution_the_app_is_the_service_name(ratings: Ratings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "chatchat")
    tokenmeter.instrumentation.attribution.default_app.cache_clear()
    tokenmeter.feedback(60, message_id="m-1")
    _, attributes = ratings.only()
    assert attributes[semconv.TM_APP] == "chatchat"
    assert semconv.ENDUSER_ID not in attributes and semconv.TM_DEPARTMENT not in attributes


def test_the_reason_is_kept_as_a_keyed_hash_only(ratings: Ratings) -> None:
    tokenmeter.feedback(20, message_id="m-1", reason=REASON)
    _, attributes = ratings.only()
    expected = hmac.new(HASH_KEY.encode(), REASON.encode(), hashlib.sha256).hexdigest()
    assert attributes[semconv.TM_FEEDBACK_REASON_HASH] == expected
    assert semconv.TM_FEEDBACK_REASON not in attributes
    assert REASON not in json.dumps(attributes, ensure_ascii=False)


def test_an_empty_reason_is_no_reason(ratings: Ratings) -> None:
    tokenmeter.feedback(20, message_id="m-1", reason="  ")
    _, attributes = ratings.only()
    assert semconv.TM_FEEDBACK_REASON_HASH not in attributes


def test_the_reason_text_only_with_content_capture(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    found = Ratings()
    instrumentor = instrument_with(found)  # and no hash key: plain SHA-256
    try:
        tokenmeter.feedback(20, message_id="m-1", reason=REASON)
    finally:
        instrumentor.uninstrument()
    _, attributes = found.only()
    assert attributes[semconv.TM_FEEDBACK_REASON] == REASON
    assert attributes[semconv.TM_FEEDBACK_REASON_HASH] == hashlib.sha256(REASON.encode()).hexdigest()


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"score": 101, "message_id": "m"}, "score"),
        ({"score": -0.5, "message_id": "m"}, "score"),
        ({"score": math.nan, "message_id": "m"}, "score"),
        ({"score": math.inf, "message_id": "m"}, "score"),
        ({"score": "80", "message_id": "m"}, "score"),
        ({"score": True, "message_id": "m"}, "score"),
        ({"score": None, "message_id": "m"}, "score"),
        ({"score": 50}, "exactly one of message_id"),
        ({"score": 50, "message_id": "m", "response_id": "r"}, "exactly one of message_id"),
        ({"score": 50, "message_id": " \n"}, "message_id is empty"),
        ({"score": 50, "message_id": ["m"]}, "message_id must be a string"),
        ({"score": 50, "response_id": ""}, "response_id is empty"),
        ({"score": 50, "message_id": "m", "reason": 3}, "reason must be a string"),
    ],
)
def test_bad_arguments_raise_a_value_error_naming_them(ratings: Ratings, arguments: dict[str, Any],
                                                      named: str) -> None:  # fmt: skip
    score = arguments.pop("score")
    with pytest.raises(ValueError, match=named):
        tokenmeter.feedback(score, **arguments)
    assert ratings.records() == []


def test_an_integer_message_id_is_taken_as_text(ratings: Ratings) -> None:
    tokenmeter.feedback(70, message_id=1234)  # type: ignore[arg-type]  # an app's database id
    _, attributes = ratings.only()
    assert attributes[semconv.TM_MESSAGE_ID] == "1234"


class BrokenLoggerProvider(LoggerProvider):
    """A host's logger provider that fails (tokenmeter's problem to contain, not the host's)."""

    def get_logger(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("logger provider exploded")


def test_tokenmeters_own_failure_never_reaches_the_caller(caplog: pytest.LogCaptureFixture) -> None:
    instrumentor = TokenmeterInstrumentor()
    instrumentor.instrument(logger_provider=BrokenLoggerProvider(shutdown_on_exit=False), settings=Settings(),
                            meter_provider=make_telemetry().meter_provider, skip_dep_check=True)  # fmt: skip
    try:
        with caplog.at_level(logging.DEBUG, logger="tokenmeter"):
            tokenmeter.feedback(50, message_id="m-1")  # no exception
            tokenmeter.feedback(50, message_id="m-2")
    finally:
        instrumentor.uninstrument()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and "tokenmeter.feedback" in r.getMessage()]
    assert len(errors) == 1, caplog.text  # logged once
    with pytest.raises(ValueError, match="score"):  # the caller's own bug still raises
        tokenmeter.feedback(500, message_id="m-3")


# --- a process without a logger provider ---------------------------------------------

RATING_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, time
    import tokenmeter
    if os.environ.get("TEST_INSTRUMENT") == "1":
        tokenmeter.instrument(skip_dep_check=True)
    with tokenmeter.attribution(user="alice", department="ml"):
        tokenmeter.feedback(75, message_id="m-9", reason="ok")
    print("rated", flush=True)
    if os.environ.get("TEST_WAIT_FOR_SIGTERM") == "1":
        signal.pause()
    """
)


def run_rating_script(env: dict[str, str], *, sigterm: bool = False, auto: bool = False) -> tuple[int, str, str]:
    full_env = {key: value for key, value in os.environ.items() if not key.startswith(("OTEL_", "TOKENMETER_"))}
    # A long batch delay: the record leaves only when tokenmeter flushes at exit or on SIGTERM.
    full_env.update({"OTEL_BLRP_SCHEDULE_DELAY": "600000", "OTEL_METRICS_EXPORTER": "none", **env})
    command = [sys.executable, "-c", RATING_SCRIPT]
    if auto:
        command.insert(0, str(Path(sys.executable).parent / "opentelemetry-instrument"))
    process = subprocess.Popen(command, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if sigterm:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "rated"
            process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    return process.returncode, out, err


def console_records(out: str) -> list[dict[str, Any]]:
    """The log records the SDK's console exporter printed (one JSON object each)."""
    decoder, records, position = json.JSONDecoder(), [], out.find("{")
    while position != -1:
        record, end = decoder.raw_decode(out, position)
        records.append(record)
        position = out.find("{", end)
    return records


@pytest.mark.parametrize("instrumented", [True, False])
def test_without_a_logger_provider_tokenmeter_makes_one_from_otel_logs_exporter(instrumented: bool) -> None:
    env = {"OTEL_LOGS_EXPORTER": "console", "OTEL_SERVICE_NAME": "rated-app", "TOKENMETER_HASH_KEY": HASH_KEY,
           "TEST_INSTRUMENT": "1" if instrumented else "0"}  # fmt: skip
    returncode, out, err = run_rating_script(env)
    assert returncode == 0, err
    [record] = console_records(out)  # flushed at exit
    assert record["event_name"] == semconv.EVENT_FEEDBACK
    assert record["attributes"][semconv.TM_MESSAGE_ID] == "m-9"
    assert record["attributes"][semconv.ENDUSER_ID] == "alice"
    assert record["attributes"][semconv.TM_FEEDBACK_SCORE] == 75.0
    assert record["attributes"][semconv.TM_FEEDBACK_REASON_HASH] == hmac.new(
        HASH_KEY.encode(), b"ok", hashlib.sha256).hexdigest()  # fmt: skip
    assert record["resource"]["attributes"]["service.name"] == "rated-app"


def test_a_rating_is_flushed_on_sigterm() -> None:
    env = {"OTEL_LOGS_EXPORTER": "console", "TEST_INSTRUMENT": "1", "TEST_WAIT_FOR_SIGTERM": "1"}
    returncode, out, err = run_rating_script(env, sigterm=True)
    assert returncode == -signal.SIGTERM, err
    [record] = console_records(out)
    assert record["attributes"][semconv.TM_MESSAGE_ID] == "m-9"


def test_with_no_log_exporter_anywhere_the_rating_is_dropped_with_one_warning() -> None:
    returncode, out, err = run_rating_script({"TEST_INSTRUMENT": "1"})
    assert returncode == 0 and "rated" in out, err
    assert console_records(out) == []
    assert err.count("OTEL_LOGS_EXPORTER names no log exporter") == 1, err


def test_under_opentelemetry_instrument_with_logs_exporter_none_one_warning_says_ratings_are_dropped() -> None:
    env = {"OTEL_LOGS_EXPORTER": "none", "OTEL_TRACES_EXPORTER": "none"}
    returncode, out, err = run_rating_script(env, auto=True)
    assert returncode == 0 and "rated" in out, err
    assert err.count("OTEL_LOGS_EXPORTER=none?): ratings (tokenmeter.feedback) are dropped") == 1, err


def test_under_opentelemetry_instrument_the_rating_goes_to_its_log_exporter() -> None:
    env = {"OTEL_LOGS_EXPORTER": "console", "OTEL_TRACES_EXPORTER": "none", "OTEL_BLRP_SCHEDULE_DELAY": "100"}
    returncode, out, err = run_rating_script(env, auto=True)
    assert returncode == 0, err
    [record] = console_records(out)
    assert record["attributes"][semconv.TM_MESSAGE_ID] == "m-9"
    assert "dropped" not in err, err
