"""The comparison's table and pair findings from plain rows: the contract's rules and the sentences they make."""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal

import pytest
from rich.console import Console

from tokenmeter import semconv
from tokenmeter.comparison.answer_rows import AnswerRow, CostTotal, ModelFigures, PricedCost
from tokenmeter.comparison.model_comparison import Comparison, ComparisonFilters
from tokenmeter.comparison.periods import ComparisonPeriod
from tokenmeter.comparison.renderings import render_csv, render_json, render_table

NOVEMBER = ComparisonPeriod.parse("2026-11")


def row(model: str, answers: int, rated: int, mean: float, variance: float, cost: str | None, *,
        currency: str = "CNY", virtual: bool = True, unpriced: int = 0, app: str = "kb-assistant",
        experiment: str = "", arm: str = "") -> AnswerRow:  # fmt: skip
    """A row whose ratings have this mean and sample variance (as the store's sums)."""
    costs = (PricedCost(currency, virtual, Decimal(cost), answers - unpriced),) if cost is not None else ()
    return AnswerRow(app=app, model=model, answers=answers, rated_answers=rated, rating_sum=rated * mean,
                     rating_sum_of_squares=(rated - 1) * variance + rated * mean * mean, input_tokens=answers * 900,
                     output_tokens=answers * 300, calls=answers * 2, unpriced_answers=unpriced, costs=costs,
                     experiment=experiment, arm=arm)  # fmt: skip


QWEN = row("qwen-7b", 2000, 40, 82.0, 64.0, "27")  # 0.0135 CNY per answer
BAICHUAN = row("baichuan2-7b", 1500, 30, 81.0, 64.0, "15")  # 0.01 CNY per answer


def only_finding(*rows: AnswerRow, **options: object) -> str:
    comparison = Comparison(NOVEMBER, rows, **options)  # type: ignore[arg-type]
    [finding] = comparison.findings
    return finding.sentence


def test_cheaper_at_similar_quality() -> None:
    # saving = 2000 x (0.0135 - 0.01) = 7.00; d = 81 - 82 = -1; se^2 = 64/40 + 64/30 = 3.7333, df = 62.6,
    # t = 1.9983, half-width 3.861 -> (-4.9, +2.9), inside (-5, +5)
    comparison = Comparison(NOVEMBER, (BAICHUAN, QWEN))
    [finding] = comparison.findings

    assert finding.sentence == (
        "moving kb-assistant from qwen-7b to baichuan2-7b would have cost 7.00 CNY less in 2026-11 (virtual prices); "
        "rating difference -1.0 (95 % CI -4.9 .. +2.9): baichuan2-7b is cheaper at similar quality"
    )
    assert (finding.quality, finding.cost.direction) == ("similar", "cheaper")
    assert finding.cost.saving == CostTotal("CNY", True, Decimal("7.000000000000"))
    assert finding.rating_difference is not None and round(finding.rating_difference.df, 1) == 62.6


def test_too_few_ratings_says_so_instead_of_a_verdict() -> None:
    sentence = only_finding(row("qwen-7b", 30, 3, 90.0, 10.0, "0.45"), row("baichuan2-7b", 20, 2, 60.0, 10.0, "0.2"))
    assert sentence == (
        "moving kb-assistant from qwen-7b to baichuan2-7b would have cost 0.15 CNY less in 2026-11 (virtual prices); "
        "too few ratings to tell (qwen-7b 3, baichuan2-7b 2; at least 10 each)"
    )
    # --min-ratings moves the bar
    assert "too few ratings to tell (qwen-7b 40, baichuan2-7b 30; at least 35 each)" in only_finding(
        QWEN, BAICHUAN, min_ratings=35
    )


@pytest.mark.parametrize(
    ("second_mean", "second_cost", "verdict"),
    [
        (70.0, "15", "baichuan2-7b is cheaper but rates lower"),
        (70.0, "30", "baichuan2-7b rates lower and costs more"),
        (92.0, "15", "baichuan2-7b rates higher and is cheaper"),
        (92.0, "30", "baichuan2-7b rates higher but costs more"),
        (81.0, "30", "baichuan2-7b costs more at similar quality"),
    ],
)
def test_the_verdicts(second_mean: float, second_cost: str, verdict: str) -> None:
    sentence = only_finding(QWEN, row("baichuan2-7b", 1500, 30, second_mean, 64.0, second_cost))
    assert sentence.endswith(f": {verdict}")


def test_an_interval_wider_than_the_margin_is_unclear() -> None:
    # spread 400: se^2 = 10 + 13.33, half-width ~ 9.7: the interval reaches past -5 and +5
    sentence = only_finding(
        row("qwen-7b", 2000, 40, 82.0, 400.0, "27"), row("baichuan2-7b", 1500, 30, 81.0, 400.0, "15")
    )
    assert sentence.endswith("not enough ratings to tell whether the quality differs by less than 5 points")
    # a wider margin makes it similar
    wide = only_finding(row("qwen-7b", 2000, 40, 82.0, 400.0, "27"), row("baichuan2-7b", 1500, 30, 81.0, 400.0, "15"),
                        margin=12.0)  # fmt: skip
    assert wide.endswith("baichuan2-7b is cheaper at similar quality")


def test_unpriced_and_other_currencies_leave_the_cost_unknown() -> None:
    unpriced = only_finding(QWEN, row("baichuan2-7b", 1500, 30, 81.0, 64.0, None, unpriced=1500))
    assert unpriced.startswith(
        "moving kb-assistant from qwen-7b to baichuan2-7b: the cost difference in 2026-11 is unknown: baichuan2-7b "
        "is unpriced (no price in the model catalog); rating difference"
    )
    assert unpriced.endswith(": similar quality")
    dollars = only_finding(QWEN, row("baichuan2-7b", 1500, 30, 81.0, 64.0, "1.5", currency="USD", virtual=False))
    assert "the costs are in different currencies (qwen-7b: CNY; baichuan2-7b: USD), never converted" in dollars


def test_partly_unpriced_and_real_prices_are_named() -> None:
    # qwen: 100 of 2000 answers unpriced; its 1900 priced answers cost 19 -> 0.01 each; baichuan 0.004 real
    sentence = only_finding(row("qwen-7b", 2000, 40, 82.0, 64.0, "19", virtual=False, unpriced=100),
                            row("baichuan2-7b", 1500, 30, 81.0, 64.0, "6", virtual=False))  # fmt: skip
    assert sentence.startswith(
        "moving kb-assistant from qwen-7b to baichuan2-7b would have cost 12.00 CNY less in 2026-11 (real prices; "
        "100 of 2000 answers of qwen-7b with unpriced calls, whose cost is unknown)"
    )


def test_the_table_columns_of_one_row() -> None:
    figures = ModelFigures(QWEN)
    assert figures.cost_per_answer == (CostTotal("CNY", True, Decimal("0.0135")),)
    # cost per rating point = 0.0135 / 82
    assert figures.cost_per_rating_point == (CostTotal("CNY", True, Decimal("0.000164634146")),)
    assert (figures.input_tokens_per_answer, figures.output_tokens_per_answer) == (900.0, 300.0)
    assert figures.mean_rating == 82.0
    unrated = ModelFigures(row("glm-4", 10, 0, 0.0, 0.0, "1"))
    assert (unrated.mean_rating, unrated.rating_interval, unrated.cost_per_rating_point) == (None, None, ())
    unpriced = ModelFigures(row("glm-4", 10, 5, 50.0, 4.0, None, unpriced=10))
    assert unpriced.cost_per_answer == ()  # unpriced: no cost, never 0


def test_which_pairs() -> None:
    glm = row("glm-4", 500, 30, 80.0, 64.0, "9")
    other_app = row("qwen-7b", 900, 30, 80.0, 64.0, "9", app="hr-bot")
    every = Comparison(NOVEMBER, (glm, BAICHUAN, QWEN, other_app)).findings
    # within each app, from the model with more answers
    assert [(f.app, f.first.row.model, f.second.row.model) for f in every] == [
        ("kb-assistant", "qwen-7b", "baichuan2-7b"), ("kb-assistant", "qwen-7b", "glm-4"),
        ("kb-assistant", "baichuan2-7b", "glm-4"),
    ]  # fmt: skip
    asked = Comparison(NOVEMBER, (glm, BAICHUAN, QWEN), filters=ComparisonFilters(models=("baichuan2-7b", "qwen-7b")))
    pairs = [(f.first.row.model, f.second.row.model) for f in asked.findings]
    assert pairs == [("baichuan2-7b", "qwen-7b"), ("baichuan2-7b", "glm-4")]


def test_an_experiment_pairs_control_with_candidate() -> None:
    control = row("qwen-7b", 300, 20, 82.0, 64.0, "4.05", experiment="cheap-kb", arm=semconv.ARM_CONTROL)
    candidate = row("baichuan2-7b", 280, 20, 81.5, 64.0, "2.8", experiment="cheap-kb", arm=semconv.ARM_CANDIDATE)
    comparison = Comparison(NOVEMBER, (candidate, control), filters=ComparisonFilters(experiment="cheap-kb"))

    assert [f.row.arm for f in comparison.figures] == ["control", "candidate"]
    [finding] = comparison.findings
    assert finding.sentence.startswith(
        "experiment cheap-kb: moving kb-assistant from qwen-7b (control) to baichuan2-7b (candidate) would have cost "
        "1.05 CNY less in 2026-11 (virtual prices)"
    )


def test_the_json_document_reads_back_into_the_same_comparison() -> None:
    comparison = Comparison(NOVEMBER, (QWEN, BAICHUAN), filters=ComparisonFilters("kb-assistant", ("qwen-7b",)))
    document = json.loads(render_json(comparison))

    assert Comparison.from_dict(document).to_dict() == document
    assert document["rows"][0]["cost_per_answer"] == [{"currency": "CNY", "virtual": True, "amount": "0.0135"}]
    assert document["findings"][0]["saving"] == {"currency": "CNY", "virtual": True, "amount": "7"}
    assert document["filters"] == {"app": "kb-assistant", "models": ["qwen-7b"], "experiment": None}
    with pytest.raises(ValueError, match="not a comparison document"):
        Comparison.from_dict({**document, "rows": [{"app": "x"}]})


def test_csv_has_one_line_per_row_and_currency() -> None:
    unpriced = row("glm-4", 10, 0, 0.0, 0.0, None, unpriced=10)
    lines = list(csv.DictReader(io.StringIO(render_csv(Comparison(NOVEMBER, (QWEN, unpriced))))))
    assert [(line["model"], line["cost_per_answer"], line["currency"], line["mean_rating"]) for line in lines] == [
        ("qwen-7b", "0.0135", "CNY", "82.0"), ("glm-4", "", "", "")
    ]  # fmt: skip


def test_the_table_and_its_sentences() -> None:
    out = io.StringIO()
    render_table(Comparison(NOVEMBER, (QWEN, BAICHUAN)), Console(file=out, width=250), store="chdb:///x")
    text = out.getvalue()
    assert "Models by cost and rating, 2026-11 (UTC)" in text
    assert "82.0 (79.4 .. 84.6)" in text  # t(0.975, 39) = 2.0227 x 8 / sqrt(40) = 2.56
    assert "0.0135 CNY (virtual)" in text
    assert "- moving kb-assistant from qwen-7b to baichuan2-7b would have cost 7.00 CNY less" in text
    empty = io.StringIO()
    render_table(Comparison(NOVEMBER, ()), Console(file=empty, width=250))
    assert "no chat calls recorded" in empty.getvalue()


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="min_ratings"):
        Comparison(NOVEMBER, (), min_ratings=1)
    with pytest.raises(ValueError, match="margin"):
        Comparison(NOVEMBER, (), margin=0)
