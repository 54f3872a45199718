-- The accounting tables take only sane points of tokenmeter's counters: a finite value from 0
-- to 2**53 at a time in 2000-2099 (tokenmeter/store/counter_points.py). One poisoned point
-- (+Inf, NaN, -4000, 1e300) made every report of its period fail (Inf cannot become an
-- integer), froze the enforcer on an old snapshot, or turned a department's usage negative.
-- serve's receiver refuses such points; these views keep them out whatever wrote
-- otel_metrics_sum (the production collector writes it directly). Raw rows stay there as they
-- came. Each view is the one of 0003 / 0008 with the condition added (MODIFY QUERY swaps the
-- query without a moment in which inserts pass no view).

ALTER TABLE usage_counter_series_mv ${on_cluster} MODIFY QUERY
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
  AND ${sane_counter_point(Value, TimeUnix)}
GROUP BY series_id
;

ALTER TABLE usage_counter_minutely_mv ${on_cluster} MODIFY QUERY
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
  AND ${sane_counter_point(Value, TimeUnix)}
GROUP BY series_id, minute
;

ALTER TABLE usage_counter_daily_mv ${on_cluster} MODIFY QUERY
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
  AND ${sane_counter_point(Value, TimeUnix)}
GROUP BY series_id, day
;

-- Repair what poisoned points already wrote. A minute or day whose largest value is not sane
-- is dropped (mutations_sync = 2: done on every replica before the next statement) ...
ALTER TABLE ${local(usage_counter_minutely)} ${on_cluster}
    DELETE WHERE NOT ${sane_counter_value(value_max)}
    SETTINGS mutations_sync = 2
;

ALTER TABLE ${local(usage_counter_daily)} ${on_cluster}
    DELETE WHERE NOT ${sane_counter_value(value_max)}
    SETTINGS mutations_sync = 2
;

-- ... and each (series, minute) / (series, day) that held a poisoned raw point is derived again
-- from the series' sane raw points there (a legitimate series a forged point hit keeps its
-- value; a forged series has none and stays out). Rows written twice change nothing: maxima.
INSERT INTO usage_counter_minutely
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
FROM otel_metrics_sum
WHERE MetricName IN (${name(METRIC_USAGE_TOKENS)}, ${name(METRIC_USAGE_COST)}, ${name(METRIC_USAGE_CALLS)})
  AND IsMonotonic AND AggregationTemporality = 2
  AND ${sane_counter_point(Value, TimeUnix)}
  AND (series_id, minute) IN (
      SELECT cityHash64(MetricName, ServiceName, ResourceAttributes[${name(SERVICE_INSTANCE_ID)}],
                        toString(mapSort(Attributes)), toUnixTimestamp64Nano(StartTimeUnix)),
             toDateTime(toStartOfMinute(TimeUnix), 'UTC')
      FROM otel_metrics_sum
      WHERE MetricName IN (${name(METRIC_USAGE_TOKENS)}, ${name(METRIC_USAGE_COST)}, ${name(METRIC_USAGE_CALLS)})
        AND NOT ${sane_counter_value(Value)})
GROUP BY series_id, minute
;

INSERT INTO usage_counter_daily
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
FROM otel_metrics_sum
WHERE MetricName IN (${name(METRIC_USAGE_TOKENS)}, ${name(METRIC_USAGE_COST)}, ${name(METRIC_USAGE_CALLS)})
  AND IsMonotonic AND AggregationTemporality = 2
  AND ${sane_counter_point(Value, TimeUnix)}
  AND (series_id, day) IN (
      SELECT cityHash64(MetricName, ServiceName, ResourceAttributes[${name(SERVICE_INSTANCE_ID)}],
                        toString(mapSort(Attributes)), toUnixTimestamp64Nano(StartTimeUnix)),
             toDate(TimeUnix, 'UTC')
      FROM otel_metrics_sum
      WHERE MetricName IN (${name(METRIC_USAGE_TOKENS)}, ${name(METRIC_USAGE_COST)}, ${name(METRIC_USAGE_CALLS)})
        AND NOT ${sane_counter_value(Value)})
GROUP BY series_id, day
;
