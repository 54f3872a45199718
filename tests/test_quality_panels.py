"""The Models board's comparison panels on chDB: calls and ratings written through the OTLP ingest path (the
requests the receiver decodes, inserted as it inserts them, so llm_usage and answer_ratings are filled by their
views), each panel run as the web page runs it (bound parameters) and as Grafana does (macros expanded, values
pasted in), and its numbers equal to values worked out here by hand.

The store (all calls an hour ago, by alice):

- kb-assistant, CNY: qwen-7b 12 answers at 0.02 (10 rated, mean 82, s^2 = 48/9; one answer of two calls; an
  embedding call that is not an answer; a rating replaced by a later one; a rating sent twice), baichuan-7b 10 at
  0.015 (10 rated, mean 80, s^2 = 48/9; half of them keyed by a response id, not a message id, and one rated by
  both, the later counting), tiny-1b 10 at 0.005
  (10 rated, mean 50), llama-local 3 unpriced answers;
- contracts, USD: qwen-7b 5 answers at 0.003 rated 70, 80, 90, 60, 100 (mean 80, s^2 = 250: the fixed sample),
  gpt-x 3 at 0.01 rated 60, 70, 80 (t for 2 degrees of freedom: the table's 4.303); qwen-local 2 at a virtual
  CNY 0.001 and one unpriced; mixed, one answer at 0.002 USD and one at 0.01 CNY.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from grafana_macros import ALL, TimeRange, expand
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.logs.v1 import logs_pb2
from otlp_requests import attributes, resource, span, traces_request

from tokenmeter import semconv
from tokenmeter.collector.ingest_queue import IngestSchema, insert_payloads
from tokenmeter.collector.payloads import Signal, decode_protobuf
from tokenmeter.dashboards.grafana import build
from tokenmeter.dashboards.panels import models
from tokenmeter.dashboards.quality_panels import COMPARISON_IDS, G1, G2, G3, Z_975, comparison_board
from tokenmeter.web.panel_data import PanelQuery, run_panel

BOARD: dict[str, Any] = json.loads(build()["tokenmeter-models.json"])
SQL = {panel["title"]: panel["targets"][0]["rawSql"] for panel in BOARD["panels"]}
QUALITY, PAIRS = "Quality per cost", "Cheaper model, similar quality?"
HOUR_NS = 3600 * 10**9

QWEN_SCORES = [80, 84, 82, 78, 86, 82, 80, 84, 82, 82]  # mean 82, squared deviations 48
BAICHUAN_SCORES = [78, 82, 80, 76, 84, 80, 78, 82, 80, 80]  # mean 80, 48
TINY_SCORES = [50, 52, 48, 50, 50, 54, 46, 50, 50, 50]  # mean 50
FIXED_SAMPLE = [70, 80, 90, 60, 100]  # mean 80, squared deviations 1,000: s^2 = 250
SMALL_SAMPLE = [60, 70, 80]  # mean 70, s^2 = 100


@dataclass
class Writes:
    """OTLP spans and rating log records for one store."""

    start_ns: int
    spans: dict[str, list[Any]] = field(default_factory=dict)  # by app (service)
    ratings: dict[int, list[Any]] = field(default_factory=dict)  # by batch (one OTLP request each)
    trace: int = 0

    def call(self, app: str, model: str, cost: str | None, currency: str = "CNY", *, message: str = "",
             response: str = "", operation: str = "chat", tokens: tuple[int, int] = (100, 40), virtual: bool = False,
             same_trace: bool = False) -> None:  # fmt: skip
        if not same_trace:
            self.trace += 1
        attrs = {semconv.GEN_AI_OPERATION_NAME: operation, semconv.GEN_AI_REQUEST_MODEL: model,
                 semconv.ENDUSER_ID: "alice", semconv.TM_DEPARTMENT: "研发部", semconv.TM_APP: app,
                 semconv.GEN_AI_USAGE_INPUT_TOKENS: tokens[0],
                 semconv.GEN_AI_USAGE_OUTPUT_TOKENS: tokens[1]}  # fmt: skip
        if cost is None:
            attrs[semconv.TM_COST_UNPRICED] = "true"
        else:
            attrs |= {semconv.TM_COST: cost, semconv.TM_COST_CURRENCY: currency,
                      semconv.TM_COST_VIRTUAL: "true" if virtual else "false"}  # fmt: skip
        attrs |= {key: value for key, value in ((semconv.TM_MESSAGE_ID, message),
                                                (semconv.GEN_AI_RESPONSE_ID, response)) if value}  # fmt: skip
        one = span(f"{operation} {model}", self.trace, self.start_ns, attrs)
        one.span_id = (len(self.spans.get(app, [])) + 1000 * self.trace).to_bytes(8, "big")
        self.spans.setdefault(app, []).append(one)

    def rate(self, score: float, *, message: str = "", response: str = "", minutes_later: int = 1,
             batch: int = 0) -> None:  # fmt: skip
        attrs = {semconv.EVENT_NAME: semconv.EVENT_FEEDBACK, semconv.TM_FEEDBACK_SCORE: float(score),
                 semconv.ENDUSER_ID: "alice"}  # fmt: skip
        attrs |= {semconv.TM_MESSAGE_ID: message} if message else {semconv.GEN_AI_RESPONSE_ID: response}
        record = logs_pb2.LogRecord(
            time_unix_nano=self.start_ns + minutes_later * 60 * 10**9,
            event_name=semconv.EVENT_FEEDBACK,
            attributes=attributes(attrs),
        )
        self.ratings.setdefault(batch, []).append(record)

    def insert(self, store: Any) -> None:
        schema = IngestSchema.for_store(embedded=True)
        requests = [traces_request(spans, service=app, scope=semconv.INSTRUMENTATION_SCOPE)
                    for app, spans in self.spans.items()]  # fmt: skip
        insert_payloads(store, Signal.TRACES, [decode_protobuf(Signal.TRACES, r.SerializeToString()) for r in requests],
                        schema)  # fmt: skip
        for batch in sorted(self.ratings):  # one insert each: rows a merge has not folded yet
            scope = logs_pb2.ScopeLogs(scope=InstrumentationScope(name=semconv.INSTRUMENTATION_SCOPE),
                                       log_records=self.ratings[batch])  # fmt: skip
            logs = ExportLogsServiceRequest(resource_logs=[logs_pb2.ResourceLogs(resource=resource("rating-app"),
                                                                                 scope_logs=[scope])])  # fmt: skip
            insert_payloads(store, Signal.LOGS, [decode_protobuf(Signal.LOGS, logs.SerializeToString())], schema)


def _kb_assistant(writes: Writes) -> None:
    app = "kb-assistant"
    for index in range(12):
        if index == 0:  # one answer of two calls (their tokens and cost add up to one answer's)
            writes.call(app, "qwen-7b", "0.012", message="q0", tokens=(60, 25))
            writes.call(app, "qwen-7b", "0.008", message="q0", tokens=(40, 15), same_trace=True)
        else:
            writes.call(app, "qwen-7b", "0.02", message=f"q{index}")
    writes.call(app, "text-embedding", "0.001", message="q1", operation="embeddings", tokens=(500, 0))
    for index, score in enumerate(QWEN_SCORES):
        writes.rate(score, message=f"q{index}", minutes_later=5)
    writes.rate(10, message="q2", minutes_later=2, batch=1)  # arrives later, but was made before the 82 above
    writes.rate(QWEN_SCORES[3], message="q3", minutes_later=5, batch=2)  # the same rating sent twice
    for index, score in enumerate(BAICHUAN_SCORES):
        if index < 5:  # no message id: the answer is its trace, rated by its call's response id
            writes.call(app, "baichuan-7b", "0.015", response=f"chatcmpl-b{index}", tokens=(135, 54))
            writes.rate(score, response=f"chatcmpl-b{index}")
        else:
            writes.call(app, "baichuan-7b", "0.015", message=f"b{index}", response=f"chatcmpl-b{index}",
                        tokens=(135, 54))  # fmt: skip
            writes.rate(score, message=f"b{index}")
    writes.rate(0, response="chatcmpl-b7", minutes_later=0)  # the same answer by its response id, earlier
    for index, score in enumerate(TINY_SCORES):
        writes.call(app, "tiny-1b", "0.005", message=f"t{index}", tokens=(80, 30))
        writes.rate(score, message=f"t{index}")
    for index in range(3):
        writes.call(app, "llama-local", None, message=f"l{index}")


def _contracts(writes: Writes) -> None:
    app = "contracts"
    for index, score in enumerate(FIXED_SAMPLE):
        writes.call(app, "qwen-7b", "0.003", "USD", message=f"c-q{index}")
        writes.rate(score, message=f"c-q{index}")
    for index, score in enumerate(SMALL_SAMPLE):
        writes.call(app, "gpt-x", "0.01", "USD", message=f"c-g{index}", tokens=(200, 100))
        writes.rate(score, message=f"c-g{index}")
    for index in range(2):
        writes.call(app, "qwen-local", "0.001", message=f"c-l{index}", virtual=True)
    writes.call(app, "qwen-local", None, message="c-l2")  # its price missing for one answer
    writes.call(app, "mixed", "0.002", "USD", message="c-m0")  # two currencies: in no pair
    writes.call(app, "mixed", "0.01", "CNY", message="c-m1")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tokenmeter.store import open_store
    from tokenmeter.store.migrations import RenderOptions, migrate

    client = open_store(f"chdb://{tmp_path_factory.mktemp('quality') / 'chdb'}")
    try:
        migrate(client, RenderOptions())
        client.command("SYSTEM STOP MERGES answer_ratings")  # the panels must fold ratings themselves
        writes = Writes(int((datetime.now(UTC) - timedelta(hours=1)).timestamp() * 1e9))
        _kb_assistant(writes)
        _contracts(writes)
        writes.insert(client)
        yield client
    finally:
        client.close()


def _span() -> TimeRange:
    now = datetime.now(UTC)
    return TimeRange(now - timedelta(hours=2), now + timedelta(minutes=5), interval_seconds=60)


def _rows(store: Any, title: str, selection: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
    """The panel's rows as the web page gets them, after checking Grafana's expansion gives the same rows."""
    selection = selection or {}
    panel = models().panel(COMPARISON_IDS[0] if title == QUALITY else COMPARISON_IDS[1])
    span = _span()
    page = run_panel(store, panel, PanelQuery(span, selection))
    grafana = store.query(expand(SQL[title], {name: selection.get(name, ALL) for name in ("app", "model")}, span, {}))
    assert [list(map(_plain, row)) for row in grafana.result_rows] == [list(map(_plain, row)) for row in page["rows"]]
    names = [column["name"] for column in page["columns"]]
    return [dict(zip(names, row, strict=True)) for row in page["rows"]]


def _plain(value: Any) -> Any:
    """A store value as the page's JSON has it (Decimal as float, NaN as None)."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def t_975(df: float) -> float:
    """Student's t(0.975) as the panels approximate it (the module's coefficients, checked against the formula)."""
    table = {1: 12.706, 2: 4.303, 3: 3.182}
    if df < 4:
        return table[int(df)]
    return Z_975 + G1 / df + G2 / df**2 + G3 / df**3


def test_the_expansion_is_the_formula_and_near_the_exact_t() -> None:
    z = 1.959964
    coefficients = (G1, G2, G3)
    assert coefficients == pytest.approx(((z**3 + z) / 4, (5 * z**5 + 16 * z**3 + 3 * z) / 96,
                                          (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384))  # fmt: skip
    exact = {4: 2.776445, 9: 2.262157, 18: 2.100922, 30: 2.042272}  # published t(0.975) values
    for df, value in exact.items():
        assert abs(t_975(df) / value - 1) < 0.003, df
    assert abs(t_975(18) / exact[18] - 1) < 0.0005


def test_the_sql_t_is_the_table_below_4_and_the_expansion_above(store: Any) -> None:
    from tokenmeter.dashboards.quality_panels import t_975 as sql_t

    values = store.query(f"SELECT v, {sql_t('v')} FROM (SELECT arrayJoin([1, 2, 3, 3.5, 4, 9, 18.5]) AS v)")
    shown = {float(v): t for v, t in values.result_rows}
    assert {v: shown[v] for v in (1.0, 2.0, 3.0, 3.5)} == {1.0: 12.706, 2.0: 4.303, 3.0: 3.182, 3.5: 3.182}
    assert shown[4.0] == pytest.approx(2.769373, abs=1e-6) and shown[9.0] == pytest.approx(2.261901, abs=1e-6)
    assert shown[18.5] == pytest.approx(t_975(18.5))


def _by(rows: list[dict[str, Any]], *keys: str) -> dict[tuple[Any, ...], dict[str, Any]]:
    return {tuple(row[key] for key in keys): row for row in rows}


def test_quality_per_cost_per_app_and_model(store: Any) -> None:
    rows = _by(_rows(store, QUALITY), "app", "model", "currency_kind")
    assert set(rows) == {("kb-assistant", "qwen-7b", "CNY"), ("kb-assistant", "baichuan-7b", "CNY"),
                         ("kb-assistant", "tiny-1b", "CNY"), ("kb-assistant", "llama-local", "unpriced"),
                         ("contracts", "qwen-7b", "USD"), ("contracts", "gpt-x", "USD"),
                         ("contracts", "qwen-local", "CNY (virtual)"), ("contracts", "qwen-local", "unpriced"),
                         ("contracts", "mixed", "USD"), ("contracts", "mixed", "CNY")}  # fmt: skip
    qwen = rows["kb-assistant", "qwen-7b", "CNY"]
    stored = dict(store.query("SELECT message_key, count() FROM answer_ratings WHERE message_key IN ('q2', 'q3') "
                              "GROUP BY message_key").result_rows)  # fmt: skip
    assert stored == {"q2": 2, "q3": 2}  # both rows of each still there, unmerged
    # 12 answers (the two calls of q0 are one; the embedding call is none), 10 rated: q2's later 82 replaced its 10,
    # q3's rating sent twice counts once.
    assert (qwen["answers"], qwen["rated_answers"]) == (12, 10)
    assert qwen["mean_rating"] == pytest.approx(82)
    half = t_975(9) * math.sqrt(48 / 9 / 10)  # 2.2619 x 0.7303 = 1.6519
    assert (qwen["ci_low"], qwen["ci_high"]) == (pytest.approx(82 - half), pytest.approx(82 + half))
    assert half == pytest.approx(1.6519, abs=1e-4)
    assert (qwen["input_tokens_per_answer"], qwen["output_tokens_per_answer"]) == (100, 40)
    assert qwen["cost_per_answer"] == pytest.approx(0.02) and qwen["note"] == ""
    assert qwen["cost_per_rating_point"] == pytest.approx(0.02 / 82)
    baichuan = rows["kb-assistant", "baichuan-7b", "CNY"]  # half rated by response id
    assert (baichuan["answers"], baichuan["rated_answers"], baichuan["mean_rating"]) == (10, 10, pytest.approx(80))
    assert (baichuan["input_tokens_per_answer"], baichuan["output_tokens_per_answer"]) == (135, 54)
    unpriced = rows["kb-assistant", "llama-local", "unpriced"]  # said so, never 0
    assert unpriced["cost_per_answer"] is None and unpriced["cost_per_rating_point"] is None
    assert (unpriced["answers"], unpriced["rated_answers"], unpriced["mean_rating"]) == (3, 0, None)
    assert (unpriced["ci_low"], unpriced["note"]) == (None, "too few ratings")
    assert unpriced["unpriced_answers"] == 3 and qwen["unpriced_answers"] == 0
    partly = rows["contracts", "qwen-local", "CNY (virtual)"]  # the priced answers' cost: 2 x 0.001 / 2
    assert (partly["cost_per_answer"], partly["answers"], partly["unpriced_answers"]) == (pytest.approx(0.001), 3, 1)
    assert rows["contracts", "qwen-local", "unpriced"]["cost_per_answer"] is None
    mixed = (rows["contracts", "mixed", "USD"]["cost_per_answer"], rows["contracts", "mixed", "CNY"]["cost_per_answer"])
    assert mixed == (pytest.approx(0.002), pytest.approx(0.01))


def test_a_fixed_sample_has_its_hand_computed_interval(store: Any) -> None:
    rows = _by(_rows(store, QUALITY), "app", "model")
    fixed = rows["contracts", "qwen-7b"]  # 70, 80, 90, 60, 100: mean 80, s^2 = 1000 / 4 = 250, se = sqrt(50)
    assert (fixed["answers"], fixed["rated_answers"], fixed["mean_rating"]) == (5, 5, pytest.approx(80))
    half = 2.769373 * math.sqrt(50)  # t for 4 degrees of freedom by the expansion (exact: 2.776445)
    assert (fixed["ci_low"], fixed["ci_high"]) == (
        pytest.approx(80 - half, abs=1e-4),
        pytest.approx(80 + half, abs=1e-4),
    )
    assert fixed["ci_low"] == pytest.approx(60.418, abs=1e-3)
    assert abs((80 - fixed["ci_low"]) / (2.776445 * math.sqrt(50)) - 1) < 0.003  # the exact interval, nearly
    assert fixed["note"] == "too few ratings" and fixed["currency_kind"] == "USD"
    small = rows["contracts", "gpt-x"]  # 60, 70, 80: s^2 = 100, 2 degrees of freedom: the table's 4.303
    assert small["ci_high"] - small["mean_rating"] == pytest.approx(4.303 * math.sqrt(100 / 3))
    assert (small["input_tokens_per_answer"], small["cost_per_answer"]) == (200, pytest.approx(0.01))


def _welch(first: list[int], second: list[int]) -> tuple[float, float, float]:
    """d = mean(second) - mean(first) and its Welch 95 % interval, by hand."""

    def mean_and_se2(sample: list[int]) -> tuple[float, float]:
        mean = sum(sample) / len(sample)
        return mean, sum((x - mean) ** 2 for x in sample) / (len(sample) - 1) / len(sample)

    (m1, a), (m2, b) = mean_and_se2(first), mean_and_se2(second)
    df = (a + b) ** 2 / (a**2 / (len(first) - 1) + b**2 / (len(second) - 1))
    half = t_975(df) * math.sqrt(a + b)
    return m2 - m1, m2 - m1 - half, m2 - m1 + half


def test_cheaper_models_with_the_welch_interval_and_a_verdict(store: Any) -> None:
    rows = _rows(store, PAIRS)
    pairs = _by(rows, "app", "from_model", "to_model")
    assert [key for key in pairs if key[0] == "kb-assistant"] == [  # by saving, largest first
        ("kb-assistant", "qwen-7b", "tiny-1b"), ("kb-assistant", "baichuan-7b", "tiny-1b"),
        ("kb-assistant", "qwen-7b", "baichuan-7b")]  # fmt: skip
    similar = pairs["kb-assistant", "qwen-7b", "baichuan-7b"]
    # se^2 = 48/9/10 on each side: 18 degrees of freedom, t = 2.1009, half width 2.1698: -2 in (-4.17, 0.17)
    d, low, high = _welch(QWEN_SCORES, BAICHUAN_SCORES)
    assert (d, round(low, 3), round(high, 3)) == (-2, -4.17, 0.17)
    assert similar["rating_difference"] == pytest.approx(d)
    assert (similar["ci_low"], similar["ci_high"]) == (pytest.approx(low), pytest.approx(high))
    assert similar["saving"] == pytest.approx(12 * (0.02 - 0.015)) and similar["answers"] == 12
    assert (similar["rated_from"], similar["rated_to"], similar["currency_kind"]) == (10, 10, "CNY")
    assert similar["verdict"] == "cheaper at similar quality"
    lower = pairs["kb-assistant", "qwen-7b", "tiny-1b"]
    d, low, high = _welch(QWEN_SCORES, TINY_SCORES)
    assert (lower["rating_difference"], lower["ci_low"], lower["ci_high"]) == (
        pytest.approx(d), pytest.approx(low), pytest.approx(high))  # fmt: skip
    assert (lower["saving"], lower["verdict"]) == (pytest.approx(12 * 0.015), "rates lower")
    assert pairs["kb-assistant", "baichuan-7b", "tiny-1b"]["saving"] == pytest.approx(10 * 0.01)


def test_pairs_keep_to_one_currency_and_say_when_ratings_are_too_few(store: Any) -> None:
    pairs = _by(_rows(store, PAIRS), "app", "from_model", "to_model")
    # USD models pair among themselves; the virtual CNY model has no USD partner, the unpriced one none at all, and
    # the model priced in two currencies (at 0.002 USD, cheaper than both USD models) is in no pair.
    assert [key for key in pairs if key[0] == "contracts"] == [("contracts", "gpt-x", "qwen-7b")]
    assert not [key for key in pairs if "llama-local" in key]
    few = pairs["contracts", "gpt-x", "qwen-7b"]
    assert (few["currency_kind"], few["saving"], few["verdict"]) == ("USD", pytest.approx(3 * 0.007), "too few ratings")
    d, low, high = _welch(SMALL_SAMPLE, FIXED_SAMPLE)  # shown, though too few to judge
    assert (few["rating_difference"], few["ci_low"], few["ci_high"]) == (
        pytest.approx(d), pytest.approx(low), pytest.approx(high))  # fmt: skip


def test_the_app_and_model_variables_narrow_both_panels(store: Any) -> None:
    quality = _rows(store, QUALITY, {"app": ["contracts"]})
    assert {row["app"] for row in quality} == {"contracts"} and len(quality) == 6
    pairs = _rows(store, PAIRS, {"app": ["contracts", "o'brien"]})
    assert [(row["from_model"], row["to_model"]) for row in pairs] == [("gpt-x", "qwen-7b")]
    chosen = _rows(store, PAIRS, {"model": ["qwen-7b", "baichuan-7b"]})
    assert [(row["app"], row["from_model"], row["to_model"]) for row in chosen] == [
        ("kb-assistant", "qwen-7b", "baichuan-7b")]  # fmt: skip
    assert _rows(store, QUALITY, {"app": ["nobody"]}) == []


def test_serve_page_draws_the_comparison_panels_from_the_same_definitions() -> None:
    from tokenmeter.web.panel_data import WEB_BOARDS, catalog

    board = comparison_board()
    assert WEB_BOARDS["models"] == board
    assert [panel.sql for panel in board.panels] == [models().panel(panel_id).sql for panel_id in COMPARISON_IDS]
    listed = {entry["name"]: entry for entry in catalog()["boards"]}["models"]
    assert [panel["title"] for panel in listed["panels"]] == [QUALITY, PAIRS]
    assert "Cornish-Fisher" in BOARD["panels"][-2]["description"]


def test_the_panel_and_tokenmeter_compare_agree(store: Any) -> None:
    """The same store through the CLI's query and statistics (exact t) and through the panels (approximated t)."""
    from tokenmeter.comparison.model_comparison import Comparison
    from tokenmeter.comparison.periods import ComparisonPeriod
    from tokenmeter.store.rating_queries import answer_rows

    span = _span()
    period = ComparisonPeriod("day", "-", span.start, span.end, "UTC")
    document = Comparison(period, tuple(answer_rows(store, span.start, span.end))).to_dict()
    panel = _by(_rows(store, QUALITY), "app", "model", "currency_kind")
    single_priced = [
        row for row in document["rows"] if len(row["cost_per_answer"]) == 1 and not row["unpriced_answers"]
    ]
    assert len(single_priced) >= 5
    for row in single_priced:
        [cost] = row["cost_per_answer"]
        kind = cost["currency"] + (" (virtual)" if cost["virtual"] else "")
        shown = panel[row["app"], row["model"], kind]
        assert (shown["answers"], shown["rated_answers"]) == (row["answers"], row["rated_answers"]), row["model"]
        assert shown["mean_rating"] == pytest.approx(row["mean_rating"])
        assert shown["input_tokens_per_answer"] == pytest.approx(row["input_tokens_per_answer"])
        assert shown["output_tokens_per_answer"] == pytest.approx(row["output_tokens_per_answer"])
        assert shown["cost_per_answer"] == pytest.approx(float(cost["amount"]))
        interval = row["rating_interval"]
        if interval is not None and interval["df"] >= 4:  # the expansion is within 0.3 % of the exact t from 4 df
            half = interval["high"] - interval["estimate"]
            assert shown["ci_high"] - shown["mean_rating"] == pytest.approx(half, rel=0.003)
    pairs = _by(_rows(store, PAIRS), "app", "from_model", "to_model")
    compared = [f for f in document["findings"] if (f["app"], f["from"]["model"], f["to"]["model"]) in pairs]
    assert compared
    for finding in compared:
        shown = pairs[finding["app"], finding["from"]["model"], finding["to"]["model"]]
        assert shown["saving"] == pytest.approx(float(finding["saving"]["amount"]), rel=1e-6)
        if finding["rating_difference"] is not None:
            assert shown["rating_difference"] == pytest.approx(finding["rating_difference"]["estimate"])
