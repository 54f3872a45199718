# ruff: noqa: S608 - the SQL is this module's own constants; values are bound parameters
"""What the model comparison reads: per (app, model[, experiment arm]) answers, their ratings, tokens and cost.

The rules (docs/compare.md; the dashboards' comparison panels must give the same numbers):

- Calls: ``llm_usage FINAL`` (a re-sent span counts once) in ``[start, end)``, operations ``chat`` and
  ``text_completion`` (embeddings serve retrieval, not the answer) that ran (a call a quota refused has a
  row but no answer), model = the effective model.
- An answer: the calls with one answer key, ``message_id`` when the app named the answer, else the trace,
  per app and model. An answer that used two chat models counts once under each, with that model's calls.
- Its rating: the latest (``argMax(score, rated_at)``) of the ratings whose key is the answer's message id
  (kind ``message``) or the response id of one of the answer's calls (kind ``response``), whenever it was
  made. Ratings are folded per key first, so a rating stored twice (a re-sent record, before the table
  merges) counts once and a later one replaces the earlier.
- Cost, per price (currency, real or virtual): the cost of the calls priced so, and the answers with such
  calls (cost per answer is the one over the other). Answers with an unpriced call are counted apart; an
  unpriced call's cost is unknown, never 0.

One query, values bound as parameters. With an experiment, only its calls, grouped by arm too.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

from tokenmeter.comparison.answer_rows import AnswerRow, PricedCost
from tokenmeter.store.usage_queries import CALL_RAN

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

    from tokenmeter.comparison.comparison_query import ComparisonQuery
    from tokenmeter.comparison.model_comparison import Comparison

ANSWER_ROWS_SQL: Final = (
    """
WITH
calls AS (
    SELECT app, effective_model AS model,
           if({experiment:String} = '', '', experiment) AS experiment_key,
           if({experiment:String} = '', '', experiment_arm) AS arm,
           if(message_id != '', message_id, trace_id) AS answer_key,
           message_id, response_id, input_tokens, output_tokens, cost, currency, virtual,
           unpriced OR cost IS NULL AS no_price
    FROM llm_usage FINAL
    WHERE time >= {start:DateTime64(9, 'UTC')} AND time < {end:DateTime64(9, 'UTC')}
      AND operation IN ('chat', 'text_completion') AND """
    + CALL_RAN
    + """
      AND ({app:String} = '' OR app = {app:String})
      AND (empty({models:Array(String)}) OR has({models:Array(String)}, effective_model))
      AND ({experiment:String} = '' OR experiment = {experiment:String})
),
answers AS (
    SELECT app, model, experiment_key, arm, answer_key, anyIf(message_id, message_id != '') AS message_id,
           groupUniqArrayIf(response_id, response_id != '') AS response_ids, count() AS calls,
           sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens, max(no_price) AS unpriced,
           sumMapIf([(currency, virtual)], [assumeNotNull(cost)], NOT no_price) AS costs
    FROM calls
    GROUP BY app, model, experiment_key, arm, answer_key
),
latest_ratings AS (
    SELECT key_kind, message_key, argMax(score, rated_at) AS latest_score, max(rated_at) AS latest_at
    FROM answer_ratings
    GROUP BY key_kind, message_key
),
answer_scores AS (
    SELECT app, model, experiment_key, arm, answer_key, argMax(latest_score, latest_at) AS score, 1 AS rated
    FROM (
        SELECT app, model, experiment_key, arm, answer_key, rating_key.1 AS key_kind, rating_key.2 AS message_key
        FROM answers
        ARRAY JOIN arrayConcat(if(message_id != '', [('message', message_id)], []),
                               arrayMap(id -> ('response', id), response_ids)) AS rating_key
    ) AS answer_keys
    INNER JOIN latest_ratings USING (key_kind, message_key)
    GROUP BY app, model, experiment_key, arm, answer_key
)
SELECT app, model, experiment_key, arm, count() AS answers, sum(rated) AS rated_answers,
       sum(score) AS rating_sum, sum(score * score) AS rating_sum_of_squares,
       sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens, sum(calls) AS calls,
       countIf(unpriced) AS unpriced_answers,
       sumMap(costs.1, costs.2) AS price_costs,
       sumMap(costs.1, arrayMap(_ -> toUInt64(1), costs.1)) AS price_answers
FROM answers
LEFT JOIN answer_scores USING (app, model, experiment_key, arm, answer_key)
GROUP BY app, model, experiment_key, arm
ORDER BY app, model, experiment_key, arm
SETTINGS join_use_nulls = 0
"""
)


def answer_rows(
    client: Client,
    start: datetime,
    end: datetime,
    *,
    app: str | None = None,
    models: Sequence[str] = (),
    experiment: str | None = None,
) -> list[AnswerRow]:
    """The rows of ``[start, end)`` (aware datetimes), for one app and some models if given; with ``experiment``,
    only that experiment's calls, one row per (app, model, arm)."""
    for name, moment in (("start", start), ("end", end)):
        if moment.tzinfo is None:
            raise ValueError(f"{name} must be timezone-aware, got {moment.isoformat()}")
    if end <= start:
        raise ValueError(f"end ({end.isoformat()}) must be after start ({start.isoformat()})")
    parameters = {
        "start": start.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f"),
        "end": end.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f"),
        "app": app or "",
        "models": list(models),
        "experiment": experiment or "",
    }
    result = client.query(ANSWER_ROWS_SQL, parameters=parameters)
    return [_answer_row(row) for row in result.result_rows]


def read_comparison(client: Client, query: ComparisonQuery) -> Comparison:
    """The comparison ``query`` asks for, from the store."""
    filters = query.filters
    rows = answer_rows(client, query.period.start, query.period.end, app=filters.app, models=filters.models,
                       experiment=filters.experiment)  # fmt: skip
    return query.comparison(rows)


def _answer_row(row: Sequence[Any]) -> AnswerRow:
    app, model, experiment, arm, answers, rated, rating_sum, squares, input_tokens, output_tokens, calls = row[:11]
    unpriced, (prices, amounts), (_, priced_answers) = row[11:]
    return AnswerRow(
        app=str(app), model=str(model), experiment=str(experiment), arm=str(arm), answers=int(answers),
        rated_answers=int(rated), rating_sum=float(rating_sum), rating_sum_of_squares=float(squares),
        input_tokens=int(input_tokens), output_tokens=int(output_tokens), calls=int(calls),
        unpriced_answers=int(unpriced),
        costs=tuple(PricedCost(str(currency), bool(virtual), Decimal(amount), int(count))
                    for (currency, virtual), amount, count in zip(prices, amounts, priced_answers, strict=True)),
    )  # fmt: skip
