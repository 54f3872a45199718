# ruff: noqa: S608 - panel SQL is built from this module's own constants; values arrive as macros
"""The Models board's comparison of models by cost and by their users' ratings (docs/compare.md,
docs/dashboards.md): "Quality per cost" per app and model, and "Cheaper model, similar quality?" per pair.

The semantics are `tokenmeter compare`'s (the two must give the same numbers):

- calls: ``llm_usage FINAL`` in the range, operations chat and text_completion (embeddings are retrieval,
  not the answering model) that ran (not refused by a quota), model = the effective model;
- an answer: the calls of one app and model with one answer key, ``if(message_id != '', message_id, trace_id)``
  (an answer that used two chat models counts once under each, with that model's tokens and cost);
- its rating: the latest (``argMax(score, rated_at)``) of the ratings in ``answer_ratings`` keyed by the
  answer's message id (key kind ``message``) or by the response id of one of its calls (``response``);
  ratings count whenever they were made (an answer of the range rated later still counts);
- cost per answer, per price (currency, real or virtual; ``unpriced`` when a call is unpriced or its cost NULL:
  unknown, never 0): the cost of the calls priced so / the answers with such calls; ``unpriced_answers``: the
  answers with an unpriced call;
- a pair A -> B (same app; each model priced in one currency, real and virtual prices of it added; B cheaper per
  answer): saving = answers of A x (cost per answer of A - of B); d = mean rating of B - of A with Welch's 95 %
  interval; a verdict from 10 rated answers on each side, with an equivalence margin of 5 rating points.

Student's t: SQL has no quantile of t, so :func:`t_975` uses the Cornish-Fisher expansion around the normal
quantile (within 0.26 % of the exact value from 4 degrees of freedom, 0.01 % from 9) and the exact table
values below 4.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Final

from tokenmeter.dashboards.panels import Board, Panel, filters
from tokenmeter.store.usage_queries import CALL_RAN

MIN_RATINGS: Final = 10  # rated answers on each side before a verdict
MARGIN: Final = 5  # rating points (0..100 scale): a difference inside +-MARGIN is "similar quality"
Z_975: Final = 1.959964  # the normal distribution's 0.975 quantile
# Cornish-Fisher: t ~ z + g1(z)/v + g2(z)/v^2 + g3(z)/v^3 (Abramowitz & Stegun 26.7.5).
G1: Final = (Z_975**3 + Z_975) / 4
G2: Final = (5 * Z_975**5 + 16 * Z_975**3 + 3 * Z_975) / 96
G3: Final = (3 * Z_975**7 + 19 * Z_975**5 + 17 * Z_975**3 - 15 * Z_975) / 384
T_BELOW_4: Final = (12.706, 4.303, 3.182)  # exact t(0.975) for 1, 2 and 3 degrees of freedom
UNPRICED: Final = "unpriced"
T_NOTE: Final = (
    "Student's t with n-1 degrees of freedom: SQL has no t quantile, so t = z + (z^3+z)/(4v) + "
    "(5z^5+16z^3+3z)/(96v^2) + (3z^7+19z^5+17z^3-15z)/(384v^3), z = 1.959964 (Cornish-Fisher; within 0.3 % of "
    "the exact value for v >= 4), and the exact 12.706, 4.303, 3.182 for v = 1, 2, 3."
)


def t_975(df: str) -> str:
    """SQL: the 0.975 quantile of Student's t with ``df`` degrees of freedom (an expression, >= 1; a fractional
    df below 4, as Welch's can be, takes the value of the whole number below it: a wider interval)."""
    one, two, three = T_BELOW_4
    return (f"multiIf({df} < 2, {one}, {df} < 3, {two}, {df} < 4, {three}, "
            f"{Z_975} + {G1:.9f} / {df} + {G2:.9f} / pow({df}, 2) + {G3:.9f} / pow({df}, 3))")  # fmt: skip


NO_PRICE: Final = "(unpriced OR cost IS NULL)"  # a call without a price: its cost is unknown, never 0
PRICE: Final = f"if({NO_PRICE}, '{UNPRICED}', concat(currency, if(virtual, ' (virtual)', '')))"
# The comparison's tables, shared by both panels (each panel is one query: WITH these, then its SELECT).
# Comments in /* */: Grafana's JSON keeps the query on one line.
COMPARISON: Final = f"""
    /* The calls that answered: chat and text completions in the range, under the board's variables. */
    calls AS (
        SELECT app, effective_model AS model, if(message_id != '', message_id, trace_id) AS answer_key,
               message_id, response_id, input_tokens, output_tokens, cost, currency, {NO_PRICE} AS no_price,
               {PRICE} AS currency_kind
        FROM llm_usage FINAL
        WHERE $__timeFilter(time) AND operation IN ('chat', 'text_completion') AND {CALL_RAN}
          AND {filters("effective_model")}
    ),
    /* An answer: its calls of one model (the key is the app's message id, else the trace). */
    answer_rows AS (
        SELECT app, model, answer_key, anyIf(message_id, message_id != '') AS message,
               groupUniqArrayIf(response_id, response_id != '') AS responses, sum(input_tokens) AS input,
               sum(output_tokens) AS output, max(no_price) AS partly_unpriced
        FROM calls GROUP BY app, model, answer_key
    ),
    /* The latest rating of each key: a rating sent twice is one, a later one replaces the earlier. */
    latest_ratings AS (
        SELECT key_kind, message_key, argMax(score, rated_at) AS latest_score, max(rated_at) AS latest_at
        FROM answer_ratings GROUP BY key_kind, message_key
    ),
    /* Each rated answer's rating: the latest of those keyed by its message id or a response id of its calls. */
    scored_answers AS (
        SELECT app, model, answer_key, argMax(latest_score, latest_at) AS score, 1 AS rated
        FROM (SELECT app, model, answer_key, rating_key.1 AS key_kind, rating_key.2 AS message_key
              FROM answer_rows
              ARRAY JOIN arrayConcat(if(message != '', [('message', message)], []),
                                     arrayMap(id -> ('response', id), responses)) AS rating_key) AS keyed
        INNER JOIN latest_ratings USING (key_kind, message_key)
        GROUP BY app, model, answer_key
    ),
    /* Per app and model: answers, ratings (mean, sample variance, the 95 % interval's half width), tokens. */
    per_model AS (
        SELECT app, model, count() AS answers, countIf(rated = 1) AS rated_answers,
               if(rated_answers > 0, avgIf(score, rated = 1), NULL) AS mean_rating,
               if(rated_answers > 1, varSampIf(score, rated = 1), NULL) AS rating_variance,
               rated_answers - 1 AS rating_df,
               if(rated_answers > 1, {t_975("rating_df")} * sqrt(rating_variance / rated_answers), NULL) AS half_width,
               sum(input) / answers AS input_tokens_per_answer, sum(output) / answers AS output_tokens_per_answer,
               countIf(partly_unpriced) AS unpriced_answers
        FROM answer_rows LEFT JOIN scored_answers USING (app, model, answer_key)
        GROUP BY app, model
    ),
    /* Per app, model and price: the cost per answer of the answers with calls priced so. */
    per_price AS (
        SELECT app, model, currency_kind, any(currency) AS currency,
               if(currency_kind = '{UNPRICED}', NULL, sum(cost) / uniqExact(answer_key)) AS cost_per_answer
        FROM calls GROUP BY app, model, currency_kind
    )"""

QUALITY_PER_COST: Final = f"""
    WITH {COMPARISON}
    SELECT app, model, answers, rated_answers, mean_rating,
           mean_rating - half_width AS ci_low, mean_rating + half_width AS ci_high,
           input_tokens_per_answer, output_tokens_per_answer, currency_kind, cost_per_answer,
           if(mean_rating > 0, toFloat64(cost_per_answer) / mean_rating, NULL) AS cost_per_rating_point,
           unpriced_answers, if(rated_answers < {MIN_RATINGS}, 'too few ratings', '') AS note
    FROM per_model INNER JOIN per_price USING (app, model)
    ORDER BY app, answers DESC, model, currency_kind"""

# A pair: per app, model A -> model B priced in the same currency where B costs less per answer.
PAIRS: Final = f"""
    SELECT a.app AS app, a.model AS from_model, b.model AS to_model,
           if(a.price_label = b.price_label, a.price_label, concat(a.price_label, ' -> ', b.price_label))
               AS pair_currency,
           a.answers AS answers_from, a.answers * (a.price_per_answer - b.price_per_answer) AS pair_saving,
           a.rated_answers AS rated_from, b.rated_answers AS rated_to,
           b.mean_rating - a.mean_rating AS difference,
           /* Welch: each mean's squared standard error, and the Welch-Satterthwaite degrees of freedom */
           a.rating_variance / a.rated_answers AS se2_from, b.rating_variance / b.rated_answers AS se2_to,
           pow(se2_from + se2_to, 2) / (pow(se2_from, 2) / (rated_from - 1) + pow(se2_to, 2) / (rated_to - 1))
               AS welch_df,
           if(se2_from + se2_to = 0, 0, {t_975("welch_df")} * sqrt(se2_from + se2_to)) AS difference_half_width
    FROM options AS a INNER JOIN options AS b ON a.app = b.app AND a.price_currency = b.price_currency
    WHERE b.price_per_answer < a.price_per_answer AND a.model != b.model"""
CHEAPER_MODEL: Final = f"""
    WITH {COMPARISON},
    /* A model's price for the pairs: one currency (real and virtual prices of it added), the unpriced left out. */
    model_prices AS (
        SELECT app, model, any(currency) AS price_currency, sum(cost_per_answer) AS price_per_answer,
               if(count() = 1, any(currency_kind), concat(price_currency, ' (real and virtual)')) AS price_label
        FROM per_price WHERE currency_kind != '{UNPRICED}'
        GROUP BY app, model HAVING uniqExact(currency) = 1
    ),
    options AS (SELECT * FROM per_model INNER JOIN model_prices USING (app, model))
    SELECT app, from_model, to_model, pair_currency AS currency_kind, answers_from AS answers,
           pair_saving AS saving, rated_from, rated_to, difference AS rating_difference,
           difference - difference_half_width AS ci_low, difference + difference_half_width AS ci_high,
           multiIf(rated_from < {MIN_RATINGS} OR rated_to < {MIN_RATINGS}, 'too few ratings',
                   ci_low > -{MARGIN} AND ci_high < {MARGIN}, 'cheaper at similar quality',
                   ci_high < 0, 'rates lower',
                   ci_low > 0, 'rates higher',
                   'unclear: more ratings needed') AS verdict
    FROM ({PAIRS})
    ORDER BY app, saving DESC, from_model, to_model"""

PER_ANSWER_COLUMNS: Final = (("input_tokens_per_answer", "tokens"), ("output_tokens_per_answer", "tokens"),
                             ("cost_per_answer", "cost"), ("cost_per_rating_point", "cost"))  # fmt: skip
QUALITY_DESCRIPTION: Final = (
    "Per app and model in the range: answers (the chat and completion calls of one model for one answer: the "
    "app's message id, else the trace), answers rated (each answer's latest rating, 0-100, whenever made), the "
    "mean rating with its 95 % interval (none below 2 ratings), tokens per answer, cost per answer per currency "
    "(the answers with calls priced so; (virtual): local models' internal prices; unpriced: no price in the "
    "catalog, cost unknown, never 0; unpriced_answers: answers with such a call) and cost per rating point = cost "
    f"per answer / mean rating. Fewer than {MIN_RATINGS} rated answers: too few ratings to tell. " + T_NOTE
)
PAIRS_DESCRIPTION: Final = (
    "Per app, each pair of models A -> B priced in one and the same currency (real and virtual prices of it added; "
    "unpriced calls left out) where B costs less per answer: the saving had A's answers cost B's (answers of A x "
    "the difference in cost per answer) and the rating difference d = mean of B - mean of A with its Welch 95 % "
    "interval (Welch-Satterthwaite degrees of freedom, the whole number below when under 4; t as in Quality per "
    f"cost). Verdict: too few ratings (under {MIN_RATINGS} rated answers on either side); cheaper at similar "
    f"quality (the interval inside -{MARGIN}..+{MARGIN} rating points); rates lower / rates higher (the interval "
    "below / above 0); else unclear: more ratings needed."
)
COMPARISON_IDS: Final = (6, 7)


def comparison_panels(top: int) -> tuple[Panel, ...]:
    """The Models board's two comparison panels, placed from row ``top`` of Grafana's grid down."""
    return (
        Panel(COMPARISON_IDS[0], "Quality per cost", "table", QUALITY_PER_COST, grid=(0, top, 24, 9),
              columns=PER_ANSWER_COLUMNS, description=QUALITY_DESCRIPTION),
        Panel(COMPARISON_IDS[1], "Cheaper model, similar quality?", "table", CHEAPER_MODEL, grid=(0, top + 9, 24, 8),
              columns=(("saving", "cost"),), description=PAIRS_DESCRIPTION),
    )  # fmt: skip


def comparison_board() -> Board:
    """The Models board as serve's web page draws it: the comparison panels (the board's others read raw spans)."""
    from tokenmeter.dashboards.panels import models

    board = models()
    return replace(board, panels=tuple(panel for panel in board.panels if panel.id in COMPARISON_IDS))
