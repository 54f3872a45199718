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
    SpanAttributes['enduser.id'] AS user,
    SpanAttributes['tokenmeter.department'] AS department,
    if(SpanAttributes['tokenmeter.app'] != '', SpanAttributes['tokenmeter.app'], ServiceName) AS app,
    SpanAttributes['gen_ai.conversation.id'] AS conversation,
    SpanAttributes['gen_ai.provider.name'] AS provider,
    SpanAttributes['gen_ai.operation.name'] AS operation,
    if(SpanAttributes['tokenmeter.model.requested'] != '',
       SpanAttributes['tokenmeter.model.requested'], SpanAttributes['gen_ai.request.model']) AS request_model,
    SpanAttributes['gen_ai.response.model'] AS response_model,
    multiIf(SpanAttributes['tokenmeter.model.effective'] != '', SpanAttributes['tokenmeter.model.effective'],
            SpanAttributes['gen_ai.response.model'] != '', SpanAttributes['gen_ai.response.model'],
            SpanAttributes['gen_ai.request.model']) AS effective_model,
    toUInt64OrZero(SpanAttributes['gen_ai.usage.input_tokens']) AS input_tokens,
    toUInt64OrZero(SpanAttributes['gen_ai.usage.output_tokens']) AS output_tokens,
    SpanAttributes['tokenmeter.usage.source'] AS usage_source,
    toUInt64OrZero(SpanAttributes['tokenmeter.usage.local_input_tokens']) AS local_input_tokens,
    toUInt64OrZero(SpanAttributes['tokenmeter.usage.local_output_tokens']) AS local_output_tokens,
    SpanAttributes['tokenmeter.usage.local_source'] AS local_source,
    toDecimal128OrNull(SpanAttributes['tokenmeter.cost'], 12) AS cost,
    SpanAttributes['tokenmeter.cost.currency'] AS currency,
    SpanAttributes['tokenmeter.cost.virtual'] = 'true' AS virtual,
    SpanAttributes['tokenmeter.cost.unpriced'] = 'true' AS unpriced,
    SpanAttributes['tokenmeter.prompt.hash'] AS prompt_hash,
    SpanAttributes['tokenmeter.completion.hash'] AS completion_hash,
    SpanAttributes['tokenmeter.quota.decision'] AS quota_decision,
    SpanAttributes['error.type'] AS error_type,
    ServiceName AS service_name
FROM ${local(otel_traces)}
WHERE ScopeName = 'tokenmeter' AND SpanAttributes['gen_ai.operation.name'] != ''
;
