-- Token types beyond input and output, and which price a cost was computed with (docs/catalog.md).
--
-- llm_usage gains the parts of a call's tokens the server reported: cache reads and writes (parts of
-- input_tokens), reasoning (a part of output_tokens), audio and image tokens; and the effective date and
-- input-length tier of the catalog price its cost was computed with. 0 or '' where the server reported no
-- such part, or for rows written before this migration.
--
-- usage_counter_series gains the counter points' gen_ai.token.cache (none | read | creation, on input) and
-- gen_ai.token.phase (response | reasoning, on output); '' for a point of a call without the split.

ALTER TABLE ${local(llm_usage)} ${on_cluster}
    ADD COLUMN IF NOT EXISTS cache_read_input_tokens UInt64,
    ADD COLUMN IF NOT EXISTS cache_creation_input_tokens UInt64,
    ADD COLUMN IF NOT EXISTS reasoning_output_tokens UInt64,
    ADD COLUMN IF NOT EXISTS audio_input_tokens UInt64,
    ADD COLUMN IF NOT EXISTS audio_output_tokens UInt64,
    ADD COLUMN IF NOT EXISTS image_input_tokens UInt64,
    ADD COLUMN IF NOT EXISTS price_from LowCardinality(String),
    ADD COLUMN IF NOT EXISTS price_tier LowCardinality(String)
;

-- The cluster's Distributed table needs the columns too (on one server this is the same
-- table again, and IF NOT EXISTS makes it a no-op).
ALTER TABLE llm_usage ${on_cluster}
    ADD COLUMN IF NOT EXISTS cache_read_input_tokens UInt64,
    ADD COLUMN IF NOT EXISTS cache_creation_input_tokens UInt64,
    ADD COLUMN IF NOT EXISTS reasoning_output_tokens UInt64,
    ADD COLUMN IF NOT EXISTS audio_input_tokens UInt64,
    ADD COLUMN IF NOT EXISTS audio_output_tokens UInt64,
    ADD COLUMN IF NOT EXISTS image_input_tokens UInt64,
    ADD COLUMN IF NOT EXISTS price_from LowCardinality(String),
    ADD COLUMN IF NOT EXISTS price_tier LowCardinality(String)
;

-- The view of 0019 with the new columns (MODIFY QUERY: no moment in which inserts pass no view).
ALTER TABLE llm_usage_mv ${on_cluster} MODIFY QUERY
SELECT
    toDateTime64(Timestamp, 9, 'UTC') AS time,
    TraceId AS trace_id,
    SpanId AS span_id,
    SpanAttributes[${name(ENDUSER_ID)}] AS user,
    SpanAttributes[${name(TM_DEPARTMENT)}] AS department,
    if(SpanAttributes[${name(TM_APP)}] != '', SpanAttributes[${name(TM_APP)}], ServiceName) AS app,
    SpanAttributes[${name(GEN_AI_CONVERSATION_ID)}] AS conversation,
    SpanAttributes[${name(GEN_AI_PROVIDER_NAME)}] AS provider,
    SpanAttributes[${name(GEN_AI_OPERATION_NAME)}] AS operation,
    if(SpanAttributes[${name(TM_REQUESTED_MODEL)}] != '',
       SpanAttributes[${name(TM_REQUESTED_MODEL)}], SpanAttributes[${name(GEN_AI_REQUEST_MODEL)}]) AS request_model,
    SpanAttributes[${name(GEN_AI_RESPONSE_MODEL)}] AS response_model,
    multiIf(SpanAttributes[${name(TM_EFFECTIVE_MODEL)}] != '', SpanAttributes[${name(TM_EFFECTIVE_MODEL)}],
            SpanAttributes[${name(GEN_AI_RESPONSE_MODEL)}] != '', SpanAttributes[${name(GEN_AI_RESPONSE_MODEL)}],
            SpanAttributes[${name(GEN_AI_REQUEST_MODEL)}]) AS effective_model,
    toUInt64OrZero(SpanAttributes[${name(GEN_AI_USAGE_INPUT_TOKENS)}]) AS input_tokens,
    toUInt64OrZero(SpanAttributes[${name(GEN_AI_USAGE_OUTPUT_TOKENS)}]) AS output_tokens,
    SpanAttributes[${name(TM_USAGE_SOURCE)}] AS usage_source,
    toUInt64OrZero(SpanAttributes[${name(TM_LOCAL_INPUT_TOKENS)}]) AS local_input_tokens,
    toUInt64OrZero(SpanAttributes[${name(TM_LOCAL_OUTPUT_TOKENS)}]) AS local_output_tokens,
    SpanAttributes[${name(TM_LOCAL_SOURCE)}] AS local_source,
    toDecimal128OrNull(SpanAttributes[${name(TM_COST)}], 12) AS cost,
    SpanAttributes[${name(TM_COST_CURRENCY)}] AS currency,
    SpanAttributes[${name(TM_COST_VIRTUAL)}] = 'true' AS virtual,
    SpanAttributes[${name(TM_COST_UNPRICED)}] = 'true' AS unpriced,
    SpanAttributes[${name(TM_PROMPT_HASH)}] AS prompt_hash,
    SpanAttributes[${name(TM_COMPLETION_HASH)}] AS completion_hash,
    SpanAttributes[${name(TM_QUOTA_DECISION)}] AS quota_decision,
    SpanAttributes[${name(ERROR_TYPE)}] AS error_type,
    ServiceName AS service_name,
    SpanAttributes[${name(TM_MESSAGE_ID)}] AS message_id,
    SpanAttributes[${name(GEN_AI_RESPONSE_ID)}] AS response_id,
    SpanAttributes[${name(TM_EXPERIMENT)}] AS experiment,
    SpanAttributes[${name(TM_EXPERIMENT_ARM)}] AS experiment_arm,
    SpanAttributes[${name(TM_ROUTE_RULE)}] AS route_rule,
    SpanAttributes[${name(TM_ROUTE_TIER)}] AS route_tier,
    SpanAttributes[${name(TM_ROUTE_INTENT)}] AS route_intent,
    SpanAttributes[${name(TM_APP_ROUTE)}] AS app_route,
    toUInt32OrZero(SpanAttributes[${name(TM_QUESTION_CHARS)}]) AS question_chars,
    toUInt32OrZero(SpanAttributes[${name(TM_CONVERSATION_DEPTH)}]) AS conversation_depth,
    toUInt64OrZero(SpanAttributes[${name(TM_PROMPT_CHARS)}]) AS prompt_chars,
    toUInt32OrNull(SpanAttributes[${name(TM_RETRIEVAL_PASSAGES)}]) AS retrieval_passages,
    toFloat64OrNull(SpanAttributes[${name(TM_RETRIEVAL_TOP_SCORE)}]) AS retrieval_top_score,
    SpanAttributes[${name(TM_STREAM)}] = 'true' AS stream,
    SpanAttributes[${name(TM_STREAM_INCOMPLETE)}] = 'true' AS stream_incomplete,
    SpanAttributes[${name(TM_CACHE_HIT)}] = 'true' AS cache_hit,
    toUInt64OrZero(SpanAttributes[${name(TM_CACHE_SAVED_INPUT_TOKENS)}]) AS saved_input_tokens,
    toUInt64OrZero(SpanAttributes[${name(TM_CACHE_SAVED_OUTPUT_TOKENS)}]) AS saved_output_tokens,
    toDecimal128OrNull(SpanAttributes[${name(TM_CACHE_SAVED_COST)}], 12) AS saved_cost,
    toUInt64OrZero(SpanAttributes[${name(GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS)}]) AS cache_read_input_tokens,
    toUInt64OrZero(SpanAttributes[${name(GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS)}]) AS cache_creation_input_tokens,
    toUInt64OrZero(SpanAttributes[${name(GEN_AI_USAGE_REASONING_OUTPUT_TOKENS)}]) AS reasoning_output_tokens,
    toUInt64OrZero(SpanAttributes[${name(GEN_AI_USAGE_AUDIO_INPUT_TOKENS)}]) AS audio_input_tokens,
    toUInt64OrZero(SpanAttributes[${name(GEN_AI_USAGE_AUDIO_OUTPUT_TOKENS)}]) AS audio_output_tokens,
    toUInt64OrZero(SpanAttributes[${name(GEN_AI_USAGE_IMAGE_INPUT_TOKENS)}]) AS image_input_tokens,
    SpanAttributes[${name(TM_PRICE_FROM)}] AS price_from,
    SpanAttributes[${name(TM_PRICE_TIER)}] AS price_tier
FROM ${local(otel_traces)}
WHERE ScopeName = 'tokenmeter' AND SpanAttributes[${name(GEN_AI_OPERATION_NAME)}] != ''
  AND SpanAttributes[${name(TM_HOP)}] != 'true'
;

ALTER TABLE ${local(usage_counter_series)} ${on_cluster}
    ADD COLUMN IF NOT EXISTS token_cache LowCardinality(String),
    ADD COLUMN IF NOT EXISTS token_phase LowCardinality(String)
;

ALTER TABLE usage_counter_series ${on_cluster}
    ADD COLUMN IF NOT EXISTS token_cache LowCardinality(String),
    ADD COLUMN IF NOT EXISTS token_phase LowCardinality(String)
;

-- The view of 0014 with the new columns.
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
    any(Attributes[${name(GEN_AI_TOKEN_CACHE)}]) AS token_cache,
    any(Attributes[${name(GEN_AI_TOKEN_PHASE)}]) AS token_phase,
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

