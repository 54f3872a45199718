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
    cityHash64(MetricName, ServiceName, ResourceAttributes['service.instance.id'],
               toString(mapSort(Attributes)), toUnixTimestamp64Nano(StartTimeUnix)) AS series_id,
    any(MetricName) AS metric,
    any(ServiceName) AS service_name,
    any(ResourceAttributes['service.instance.id']) AS service_instance_id,
    any(Attributes['enduser.id']) AS user,
    any(Attributes['tokenmeter.department']) AS department,
    any(if(Attributes['tokenmeter.app'] != '', Attributes['tokenmeter.app'], ServiceName)) AS app,
    any(Attributes['gen_ai.operation.name']) AS operation,
    any(Attributes['gen_ai.provider.name']) AS provider,
    any(Attributes['gen_ai.request.model']) AS request_model,
    any(Attributes['gen_ai.response.model']) AS response_model,
    any(if(Attributes['gen_ai.response.model'] != '', Attributes['gen_ai.response.model'],
           Attributes['gen_ai.request.model'])) AS model,
    any(Attributes['gen_ai.token.type']) AS token_type,
    any(Attributes['tokenmeter.usage.source']) AS usage_source,
    any(Attributes['tokenmeter.cost.currency']) AS currency,
    any(Attributes['tokenmeter.cost.virtual'] = 'true') AS virtual,
    any(Attributes['tokenmeter.cost.unpriced'] = 'true') AS unpriced,
    any(Attributes['error.type']) AS error_type,
    any(toDateTime64(StartTimeUnix, 9, 'UTC')) AS start_time,
    any(mapSort(Attributes)) AS attributes
FROM ${local(otel_metrics_sum)}
WHERE MetricName IN ('tokenmeter.usage.tokens', 'tokenmeter.usage.cost', 'tokenmeter.usage.calls')
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
    any(Attributes['enduser.id']) AS user,
    cityHash64(MetricName, ServiceName, ResourceAttributes['service.instance.id'],
               toString(mapSort(Attributes)), toUnixTimestamp64Nano(StartTimeUnix)) AS series_id,
    toDateTime(toStartOfMinute(TimeUnix), 'UTC') AS minute,
    any(MetricName) AS metric,
    any(Attributes['tokenmeter.department']) AS department,
    any(if(Attributes['tokenmeter.app'] != '', Attributes['tokenmeter.app'], ServiceName)) AS app,
    any(if(Attributes['gen_ai.response.model'] != '', Attributes['gen_ai.response.model'],
           Attributes['gen_ai.request.model'])) AS model,
    any(Attributes['gen_ai.token.type']) AS token_type,
    any(Attributes['tokenmeter.cost.currency']) AS currency,
    any(Attributes['tokenmeter.cost.virtual'] = 'true') AS virtual,
    max(Value) AS value_max
FROM ${local(otel_metrics_sum)}
WHERE MetricName IN ('tokenmeter.usage.tokens', 'tokenmeter.usage.cost', 'tokenmeter.usage.calls')
  AND IsMonotonic AND AggregationTemporality = 2
GROUP BY series_id, minute
;
