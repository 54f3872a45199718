"""The design's scenario, end to end: model A answers slightly better than model B but uses 35 % more
tokens per answer; the comparison must recover both and name B as cheaper at similar quality.

An app under `opentelemetry-instrument` (the real openai SDK against a local OpenAI-compatible
server, the SDK's real OTLP exporters) answers questions of one app with both models, each answer's
call carrying its message id; it rates a few answers itself with `tokenmeter.feedback()`; the rest
are rated in volume through serve's `POST /v1/feedback` (some sent twice, some rated again later).
Then `tokenmeter compare`, through the serve that holds the store, is checked against figures this
test computes from what it sent. (Ratings through Chatchat's own route: tests/test_chatchat_ratings.py.)
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from statistics import fmean
from typing import Any

import httpx
import pytest
from openai_server import SERVER_PROMPT_TOKENS, OpenAICompatibleServer
from serve_process import ServeProcess, running_serve
from waiting import wait_for

from tokenmeter.cli.main import main
from tokenmeter.settings import get_settings

APP = Path(__file__).parent / "support" / "rated_app.py"
STRONG, CHEAP = "qwen2.5-7b-instruct", "baichuan2-7b-chat"  # A and B
KB = "kb-assistant"
ANSWERS_PER_MODEL = 240
RATED_SHARE = 0.7
TRUE_MEAN = {STRONG: 80.0, CHEAP: 78.5}  # A rates 1.5 points better
SCORE_SD = 10.0
# The catalog's virtual price of both self-hosted models: CNY 1.00 per 1M input, 2.00 per 1M output tokens.
PRICE_IN, PRICE_OUT = Decimal("1.00") / 10**6, Decimal("2.00") / 10**6


@dataclass(frozen=True)
class Answer:
    message_id: str
    user: str
    model: str
    output_tokens: int

    @property
    def tokens(self) -> int:
        return SERVER_PROMPT_TOKENS + self.output_tokens

    @property
    def cost(self) -> Decimal:
        return SERVER_PROMPT_TOKENS * PRICE_IN + self.output_tokens * PRICE_OUT


def _answers() -> list[Answer]:
    """B's answers vary in length; each of A's is 35 % longer in total tokens than its B twin."""
    answers = []
    for number in range(ANSWERS_PER_MODEL):
        cheap_output = 120 + number * 53 % 121
        strong_output = round(1.35 * (SERVER_PROMPT_TOKENS + cheap_output)) - SERVER_PROMPT_TOKENS
        user = f"user-{number % 20}"
        answers += [
            Answer(f"a-{number}", user, STRONG, strong_output),
            Answer(f"b-{number}", user, CHEAP, cheap_output),
        ]
    return answers


def _scores(answers: list[Answer]) -> dict[str, int]:
    """message id -> the score people gave (a fixed sample: the seed is part of the scenario)."""
    rng = random.Random(21)
    scores = {}
    for answer in answers:
        if rng.random() < RATED_SHARE:
            scores[answer.message_id] = min(100, max(0, round(rng.gauss(TRUE_MEAN[answer.model], SCORE_SD))))
    return scores


def _run_app(server: OpenAICompatibleServer, serve: ServeProcess, plan: dict[str, Any], plan_file: Path) -> None:
    plan_file.write_text(json.dumps(plan), encoding="utf-8")
    instrument = Path(sys.executable).parent / "opentelemetry-instrument"
    env = {
        **os.environ,
        "TEST_OPENAI_BASE_URL": server.base_url,
        "TEST_PLAN": str(plan_file),
        "OTEL_SERVICE_NAME": "kb-service",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_LOGS_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": serve.otlp_http,
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_BLRP_SCHEDULE_DELAY": "200",
        "TOKENMETER_HASH_KEY": "scenario",
    }
    command = [str(instrument) if instrument.exists() else str(shutil.which("opentelemetry-instrument"))]
    result = subprocess.run([*command, sys.executable, str(APP)], env=env, capture_output=True, text=True,
                            timeout=600, check=False)  # fmt: skip
    assert result.returncode == 0 and "done" in result.stdout, result.stderr[-3000:]


def _rate_through_serve(serve: ServeProcess, ratings: list[tuple[str, int]]) -> None:
    headers = {"authorization": f"Bearer {serve.api_token}"}
    with httpx.Client(base_url=serve.api, headers=headers, timeout=30) as api:
        for message_id, score in ratings:
            body = {"score": score, "message_id": message_id, "user": "rater", "app": KB}
            assert api.post("/v1/feedback", json=body).status_code == 202


def _compare(
    serve: ServeProcess, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    monkeypatch.setenv("XDG_DATA_HOME", str(serve.data_dir / "xdg"))
    monkeypatch.delenv("TOKENMETER_API_TOKEN", raising=False)
    get_settings.cache_clear()
    period = datetime.now(UTC).strftime("%Y-%m")
    try:
        code = main(["compare", "--period", period, "--app", KB, "--models", f"{STRONG},{CHEAP}",
                     "--format", "json", "--clickhouse-url", serve.url])  # fmt: skip
    finally:
        get_settings.cache_clear()
    out, err = capsys.readouterr()
    assert code == 0, err
    return dict(json.loads(out))


def test_the_cheaper_model_at_similar_quality_is_found(
    tmp_path: Path, openai_server: OpenAICompatibleServer, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    answers = _answers()
    scores = _scores(answers)
    in_app = [
        mid for mid in scores if mid in {"a-0", "a-1", "a-2", "a-3", "b-0", "b-1", "b-2", "b-3"}
    ]  # a few rated by the app itself
    through_serve = [(mid, score) for mid, score in scores.items() if mid not in in_app]
    first_thoughts = [(mid, 100 - score) for mid, score in through_serve[:10]]  # replaced by the later rating
    sent_twice = through_serve[10:25]
    plan = {"app": KB, "answers": [[a.user, "法务部", a.model, a.output_tokens, a.message_id] for a in answers],
            "ratings": [[mid, scores[mid]] for mid in in_app]}  # fmt: skip
    with running_serve(tmp_path / "serve") as serve:
        _run_app(openai_server, serve, plan, tmp_path / "plan.json")
        _rate_through_serve(serve, first_thoughts + through_serve + sent_twice)

        def everything_stored() -> bool:
            rows = _compare(serve, capsys, monkeypatch)["rows"]
            return sorted((r["answers"], r["rated_answers"]) for r in rows) == sorted(
                (ANSWERS_PER_MODEL, sum(1 for mid in scores if mid[0] == prefix)) for prefix in "ab"
            )

        assert wait_for(everything_stored, timeout=60, interval=0.5)
        document = _compare(serve, capsys, monkeypatch)

    rows = {row["model"]: row for row in document["rows"]}
    expected_scores = {model: [s for mid, s in scores.items() if mid[0] == ("a" if model == STRONG else "b")]
                       for model in (STRONG, CHEAP)}  # fmt: skip
    for model in (STRONG, CHEAP):
        mine = [a for a in answers if a.model == model]
        row = rows[model]
        assert row["input_tokens_per_answer"] == pytest.approx(SERVER_PROMPT_TOKENS, rel=1e-12)
        assert row["output_tokens_per_answer"] == pytest.approx(fmean(a.output_tokens for a in mine), rel=1e-12)
        assert row["mean_rating"] == pytest.approx(fmean(expected_scores[model]), rel=1e-12)
        [cost] = row["cost_per_answer"]
        assert (cost["currency"], cost["virtual"]) == ("CNY", True)
        assert Decimal(cost["amount"]) == pytest.approx(sum(a.cost for a in mine) / len(mine), rel=Decimal("1e-9"))

    # the token ratio the scenario was built with, recovered from the store
    tokens = {m: rows[m]["input_tokens_per_answer"] + rows[m]["output_tokens_per_answer"] for m in rows}
    assert tokens[STRONG] / tokens[CHEAP] == pytest.approx(1.35, abs=0.005)

    [finding] = document["findings"]
    assert (finding["from"]["model"], finding["to"]["model"]) == (STRONG, CHEAP)
    assert (finding["cost"], finding["quality"]) == ("cheaper", "similar")
    difference = finding["rating_difference"]
    assert difference["estimate"] == pytest.approx(
        fmean(expected_scores[CHEAP]) - fmean(expected_scores[STRONG]), rel=1e-9
    )
    true_difference = TRUE_MEAN[CHEAP] - TRUE_MEAN[STRONG]
    assert -5 < difference["low"] <= true_difference <= difference["high"] < 5
    saving = sum(a.cost for a in answers if a.model == STRONG) - sum(a.cost for a in answers if a.model == CHEAP)
    assert Decimal(finding["saving"]["amount"]) == pytest.approx(saving, rel=Decimal("1e-9"))
    assert f"{CHEAP} is cheaper at similar quality" in finding["sentence"]
