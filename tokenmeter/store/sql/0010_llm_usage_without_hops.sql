-- llm_usage leaves out hops (tokenmeter.hop = true): calls to your own forwarding
-- service (Chatchat's /v1) whose forwarded call has its own span and row. Otherwise
-- the same view as in 0002; a view cannot be altered in place, so it is made again.

DROP VIEW IF EXISTS llm_usage_mv ${on_cluster}
;

CREATE MATERIALIZED VIEW IF NOT EXISTS llm_usage_mv ${on_cluster} TO ${local(llm_usage)} AS
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
    ServiceName AS service_name
FROM ${local(otel_traces)}
WHERE ScopeName = 'tokenmeter' AND SpanAttributes[${name(GEN_AI_OPERATION_NAME)}] != ''
  AND SpanAttributes[${name(TM_HOP)}] != 'true'
;
