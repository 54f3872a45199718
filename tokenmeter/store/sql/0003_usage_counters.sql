-- Accounting from the cumulative usage counters (the exact source).
--
-- A series is one (metric, service.name, service.instance.id, data point attributes,
-- StartTimeUnix). Every export carries the series' running total, so max(Value) per
-- series and minute is idempotent: the same batch twice, overlapping batches and
-- retries cannot change a max. A restarted process starts a new series from 0, which
-- adds. Usage in [start, end) of a series = max(value before end) - max(value before start).
-- Both views compute series_id with the same expression; keep them in step.

CREATE TABLE IF NOT EXISTS ${local(usage_counter_series)} ${on_cluster} (
    series_id UInt64,
    metric LowCardinality(String),
    service_name LowCardinality(String),
    service_instance_id String,
    user String,
    department LowCardinality(String),
    app LowCardinality(String),
    operation LowCardinality(String),
    provider LowCardinality(String),
    request_model LowCardinality(String),
    response_model LowCardinality(String),
    model LowCardinality(String),
    token_type LowCardinality(String),
    usage_source LowCardinality(String),
    currency LowCardinality(String),
    virtual Bool,
    unpriced Bool,
    error_type LowCardinality(String),
    start_time DateTime64(9, 'UTC'),
    attributes Map(LowCardinality(String), String)
) ENGINE = ${engine(ReplacingMergeTree)}
ORDER BY series_id
SETTINGS ${dedup_window}
;

${distributed(usage_counter_series, series_id)}
;

CREATE MATERIALIZED VIEW IF NOT EXISTS usage_counter_series_mv ${on_cluster} TO ${local(usage_counter_series)} AS
SELECT
    cityHash64(MetricName, ServiceName, ResourceAttributes[${name(SERVICE_INSTANCE_ID)}],
               toString(mapSort(Attributes)), toUnixTimestamp64Nano(StartTimeUnix)) AS series_id,
    any(MetricName) AS metric,
    any(ServiceName) AS service_name,
    any(ResourceAttributes[${name(SERVICE_INSTANCE_ID)}]) AS service_instance_id,
    any(Attributes[${name(ENDUSER_ID)}]) AS user,
    any(Attributes[${name(TM_DEPARTMENT)}]) AS department,
    any(if(Attributes[${name(TM_APP)}] != '', Attributes[${name(TM_APP)}], ServiceName)) AS app,
    any(Attributes[${name(GEN_AI_OPERATION_NAME)}]) AS operation,
    any(Attributes[${name(GEN_AI_PROVIDER_NAME)}]) AS provider,
    any(Attributes[${name(GEN_AI_REQUEST_MODEL)}]) AS request_model,
    any(Attributes[${name(GEN_AI_RESPONSE_MODEL)}]) AS response_model,
    any(if(Attributes[${name(GEN_AI_RESPONSE_MODEL)}] != '', Attributes[${name(GEN_AI_RESPONSE_MODEL)}],
           Attributes[${name(GEN_AI_REQUEST_MODEL)}])) AS model,
    any(Attributes[${name(GEN_AI_TOKEN_TYPE)}]) AS token_type,
    any(Attributes[${name(TM_USAGE_SOURCE)}]) AS usage_source,
    any(Attributes[${name(TM_COST_CURRENCY)}]) AS currency,
    any(Attributes[${name(TM_COST_VIRTUAL)}] = 'true') AS virtual,
    any(Attributes[${name(TM_COST_UNPRICED)}] = 'true') AS unpriced,
    any(Attributes[${name(ERROR_TYPE)}]) AS error_type,
    any(toDateTime64(StartTimeUnix, 9, 'UTC')) AS start_time,
    any(mapSort(Attributes)) AS attributes
FROM ${local(otel_metrics_sum)}
WHERE MetricName IN (${name(METRIC_USAGE_TOKENS)}, ${name(METRIC_USAGE_COST)}, ${name(METRIC_USAGE_CALLS)})
  AND IsMonotonic AND AggregationTemporality = 2
GROUP BY series_id
;

CREATE TABLE IF NOT EXISTS ${local(usage_counter_minutely)} ${on_cluster} (
    user String,
    series_id UInt64,
    minute DateTime('UTC'),
    metric LowCardinality(String),
    department LowCardinality(String),
    app LowCardinality(String),
    model LowCardinality(String),
    token_type LowCardinality(String),
    currency LowCardinality(String),
    virtual Bool,
    value_max SimpleAggregateFunction(max, Float64)
) ENGINE = ${engine(AggregatingMergeTree)}
PARTITION BY toYYYYMM(minute)
PRIMARY KEY (user, series_id, minute)
-- The columns after minute depend on series_id alone; they are in the key so that
-- merges never have to pick one of several values (ClickHouse >= 26 insists).
ORDER BY (user, series_id, minute, metric, department, app, model, token_type, currency, virtual)
${aggregate_ttl(minute)}
SETTINGS ${dedup_window}
;

${distributed(usage_counter_minutely, series_id)}
;

CREATE MATERIALIZED VIEW IF NOT EXISTS usage_counter_minutely_mv ${on_cluster} TO ${local(usage_counter_minutely)} AS
SELECT
    any(Attributes[${name(ENDUSER_ID)}]) AS user,
    cityHash64(MetricName, ServiceName, ResourceAttributes[${name(SERVICE_INSTANCE_ID)}],
               toString(mapSort(Attributes)), toUnixTimestamp64Nano(StartTimeUnix)) AS series_id,
    toDateTime(toStartOfMinute(TimeUnix), 'UTC') AS minute,
    any(MetricName) AS metric,
    any(Attributes[${name(TM_DEPARTMENT)}]) AS department,
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
GROUP BY series_id, minute
;
