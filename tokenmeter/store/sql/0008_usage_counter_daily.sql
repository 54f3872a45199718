-- Day-level accounting for periods that start and end at midnight UTC (days, weeks,
-- months: what quotas and reports ask). Same rule as usage_counter_minutely, one row
-- per series and day instead of one per active minute, sorted by department first:
-- one department's month reads a few thousand rows, not one per minute of activity.
-- Filled from otel_metrics_sum like the minutely table; existing usage is copied from
-- the minutely table. Values are maxima, so rows that arrive twice (a point inserted
-- while this migration runs) change nothing.

CREATE TABLE IF NOT EXISTS ${local(usage_counter_daily)} ${on_cluster} (
    department LowCardinality(String),
    user String,
    series_id UInt64,
    day Date,
    metric LowCardinality(String),
    app LowCardinality(String),
    model LowCardinality(String),
    token_type LowCardinality(String),
    currency LowCardinality(String),
    virtual Bool,
    value_max SimpleAggregateFunction(max, Float64)
) ENGINE = ${engine(AggregatingMergeTree)}
PARTITION BY toYYYYMM(day)
PRIMARY KEY (department, user, series_id, day)
-- as in usage_counter_minutely: the columns after day depend on series_id alone
ORDER BY (department, user, series_id, day, metric, app, model, token_type, currency, virtual)
${aggregate_ttl(day)}
SETTINGS ${dedup_window}
;

${distributed(usage_counter_daily, series_id)}
;

CREATE MATERIALIZED VIEW IF NOT EXISTS usage_counter_daily_mv ${on_cluster} TO ${local(usage_counter_daily)} AS
SELECT
    any(Attributes[${name(TM_DEPARTMENT)}]) AS department,
    any(Attributes[${name(ENDUSER_ID)}]) AS user,
    cityHash64(MetricName, ServiceName, ResourceAttributes[${name(SERVICE_INSTANCE_ID)}],
               toString(mapSort(Attributes)), toUnixTimestamp64Nano(StartTimeUnix)) AS series_id,
    toDate(TimeUnix, 'UTC') AS day,
    any(MetricName) AS metric,
    any(if(Attributes[${name(TM_APP)}] != '', Attributes[${name(TM_APP)}], ServiceName)) AS app,
    any(if(Attributes[${name(GEN_AI_RESPONSE_MODEL)}] != '', Attributes[${name(GEN_AI_RESPONSE_MODEL)}],
           Attributes[${name(GEN_AI_REQUEST_MODEL)}])) AS model,
    any(Attributes[${name(GEN_AI_TOKEN_TYPE)}]) AS token_type,
    any(Attributes[${name(TM_COST_CURRENCY)}]) AS currency,
    any(Attributes[${name(TM_COST_VIRTUAL)}] = 'true') AS virtual,
    max(Value) AS value_max
FROM ${local(otel_metrics_sum)}
WHERE MetricName IN (${name(METRIC_USAGE_TOKENS)}, ${name(METRIC_USAGE_COST)}, ${name(METRIC_USAGE_CALLS)})
  AND IsMonotonic AND AggregationTemporality = 2
GROUP BY series_id, day
;

-- Usage recorded before this migration (runs once, through the Distributed tables on a cluster).
INSERT INTO usage_counter_daily
SELECT department, user, series_id, toDate(minute) AS day, metric, app, model, token_type, currency, virtual,
       max(value_max) AS value_max
FROM usage_counter_minutely
GROUP BY department, user, series_id, day, metric, app, model, token_type, currency, virtual
;
