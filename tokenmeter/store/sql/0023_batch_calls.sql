-- The Batch API's calls (docs/instrumentation.md, "The Batch API"): llm_usage gains the id of the batch a call
-- was made in ('' for every other call, and for rows written before this migration), so that what reads the
-- stored calls again (`tokenmeter reprice`) prices them at the catalog's batch rate, as they were billed.

ALTER TABLE ${local(llm_usage)} ${on_cluster}
    ADD COLUMN IF NOT EXISTS batch_id String
;

-- The cluster's Distributed table needs the column too (on one server this is the same table again).
ALTER TABLE llm_usage ${on_cluster}
    ADD COLUMN IF NOT EXISTS batch_id String
;

-- The view of 0020 with the new column.
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
    SpanAttributes[${name(TM_PRICE_TIER)}] AS price_tier,
    SpanAttributes[${name(TM_BATCH_ID)}] AS batch_id
FROM ${local(otel_traces)}
WHERE ScopeName = 'tokenmeter' AND SpanAttributes[${name(GEN_AI_OPERATION_NAME)}] != ''
  AND SpanAttributes[${name(TM_HOP)}] != 'true'
;
