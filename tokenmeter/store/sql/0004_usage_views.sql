-- Daily rollup and reconciliation, computed at query time from the tables above.
--
-- usage_daily: per series, usage on a day = its running total at the end of the day
-- minus its running total at the end of the previous day it reported (0 for a new
-- series): the same max-difference rule as tokenmeter.store.usage_queries.period_usage.
-- Long format: one row per (day, department, user, app, model, metric, token_type,
-- currency, virtual); value is tokens, calls, or billionths of the currency.

CREATE VIEW IF NOT EXISTS usage_daily ${on_cluster} AS
SELECT
    day, department, user, app, model, metric, token_type, currency, virtual,
    toInt64(sum(usage)) AS value
FROM (
    SELECT
        series_id, day, department, user, app, model, metric, token_type, currency, virtual,
        day_max - lagInFrame(day_max, 1, 0.) OVER (
            PARTITION BY series_id ORDER BY day ASC ROWS BETWEEN 1 PRECEDING AND CURRENT ROW
        ) AS usage
    FROM (
        SELECT
            series_id,
            toDate(minute, 'UTC') AS day,
            max(value_max) AS day_max,
            any(department) AS department,
            any(user) AS user,
            any(app) AS app,
            any(model) AS model,
            any(metric) AS metric,
            any(token_type) AS token_type,
            any(currency) AS currency,
            any(virtual) AS virtual
        FROM usage_counter_minutely
        GROUP BY series_id, day
    )
)
GROUP BY day, department, user, app, model, metric, token_type, currency, virtual
;

-- usage_reconciliation: per day and user, tokens and calls from the spans (llm_usage,
-- deduplicated with FINAL) beside the same from the counters. Differences come from
-- trace sampling, spans not yet exported, and calls near midnight (a span is dated by
-- its start, a counter by its export).
CREATE VIEW IF NOT EXISTS usage_reconciliation ${on_cluster} AS
SELECT
    day, department, user, app,
    span_input_tokens, counter_input_tokens,
    span_output_tokens, counter_output_tokens,
    span_calls, counter_calls,
    toInt64(counter_input_tokens + counter_output_tokens) - toInt64(span_input_tokens + span_output_tokens)
        AS tokens_missing_from_spans,
    toInt64(counter_calls) - toInt64(span_calls) AS calls_missing_from_spans
FROM (
    SELECT
        toDate(time, 'UTC') AS day, department, user, app,
        sum(input_tokens) AS span_input_tokens,
        sum(output_tokens) AS span_output_tokens,
        count() AS span_calls
    FROM llm_usage FINAL
    GROUP BY day, department, user, app
) AS spans
FULL OUTER JOIN (
    SELECT
        day, department, user, app,
        sumIf(value, metric = ${name(METRIC_USAGE_TOKENS)} AND token_type = 'input') AS counter_input_tokens,
        sumIf(value, metric = ${name(METRIC_USAGE_TOKENS)} AND token_type = 'output') AS counter_output_tokens,
        sumIf(value, metric = ${name(METRIC_USAGE_CALLS)}) AS counter_calls
    FROM usage_daily
    GROUP BY day, department, user, app
) AS counters
USING (day, department, user, app)
;
