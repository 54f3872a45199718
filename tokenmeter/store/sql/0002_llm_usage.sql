-- llm_usage: one row per LLM call, from the spans (the audit trail).
-- A re-sent span lands again with the same sort key (time, trace_id, span_id):
-- ReplacingMergeTree folds the copies; read with FINAL (or argMax) for exact counts.
-- Sampled traces are missing here by design: bills come from the counters (0003).

CREATE TABLE IF NOT EXISTS ${local(llm_usage)} ${on_cluster} (
    time DateTime64(9, 'UTC') CODEC(Delta, ZSTD(1)),
    trace_id String CODEC(ZSTD(1)),
    span_id String CODEC(ZSTD(1)),
    user String CODEC(ZSTD(1)),
    department LowCardinality(String),
    app LowCardinality(String),
    conversation String CODEC(ZSTD(1)),
    provider LowCardinality(String),
    operation LowCardinality(String),
    request_model LowCardinality(String),
    response_model LowCardinality(String),
    effective_model LowCardinality(String),
    input_tokens UInt64,
    output_tokens UInt64,
    usage_source LowCardinality(String),
    local_input_tokens UInt64,
    local_output_tokens UInt64,
    local_source LowCardinality(String),
    cost Nullable(Decimal(38, 12)),
    currency LowCardinality(String),
    virtual Bool,
    unpriced Bool,
    prompt_hash String CODEC(ZSTD(1)),
    completion_hash String CODEC(ZSTD(1)),
    quota_decision LowCardinality(String),
    error_type LowCardinality(String),
    service_name LowCardinality(String)
) ENGINE = ${engine(ReplacingMergeTree)}
PARTITION BY toYYYYMM(time)
ORDER BY (toDate(time), user, time, trace_id, span_id)
${aggregate_ttl(toDateTime(time))}
SETTINGS ${dedup_window}
;

${distributed(llm_usage, cityHash64(trace_id))}
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
;
