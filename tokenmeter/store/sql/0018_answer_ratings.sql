-- Ratings of answers, joined to the calls that produced them (docs/compare.md).
--
-- llm_usage gains what the join and the experiments need: the answer's message id
-- (tokenmeter.message.id: Chatchat's message_id, or the app's own), the response id, and the
-- experiment and arm a call was in. Rows written before this migration have them empty.

ALTER TABLE ${local(llm_usage)} ${on_cluster}
    ADD COLUMN IF NOT EXISTS message_id String CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS response_id String CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS experiment LowCardinality(String),
    ADD COLUMN IF NOT EXISTS experiment_arm LowCardinality(String)
;

-- The cluster's Distributed table needs the columns too (on one server this is the same
-- table again, and IF NOT EXISTS makes it a no-op).
ALTER TABLE llm_usage ${on_cluster}
    ADD COLUMN IF NOT EXISTS message_id String CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS response_id String CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS experiment LowCardinality(String),
    ADD COLUMN IF NOT EXISTS experiment_arm LowCardinality(String)
;

-- The view of 0010 with the four columns (MODIFY QUERY: no moment in which inserts pass no view).
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
    SpanAttributes[${name(TM_EXPERIMENT_ARM)}] AS experiment_arm
FROM ${local(otel_traces)}
WHERE ScopeName = 'tokenmeter' AND SpanAttributes[${name(GEN_AI_OPERATION_NAME)}] != ''
  AND SpanAttributes[${name(TM_HOP)}] != 'true'
;

-- answer_ratings: the latest rating of each answer. A rating is an OTel log record (event
-- tokenmeter.feedback) keyed by the answer's message id or, for apps without one, a call's
-- response id. A record sent twice lands twice with the same key and time, and a later rating
-- of the same answer has a later rated_at: ReplacingMergeTree(rated_at) keeps one row per key,
-- the latest. Not partitioned by time, so a rating replaces one made in another month; readers
-- fold with argMax(score, rated_at) (or FINAL) for exact answers before merges. Ratings are
-- small; no TTL beyond the raw logs'.
CREATE TABLE IF NOT EXISTS ${local(answer_ratings)} ${on_cluster} (
    message_key String CODEC(ZSTD(1)),
    key_kind LowCardinality(String),
    score Float64,
    rated_at DateTime64(9, 'UTC') CODEC(Delta, ZSTD(1)),
    rater String CODEC(ZSTD(1)),
    department LowCardinality(String),
    app LowCardinality(String),
    service_name LowCardinality(String),
    reason_hash String CODEC(ZSTD(1)),
    reason String CODEC(ZSTD(1)),
    trace_id String CODEC(ZSTD(1))
) ENGINE = ${engine(ReplacingMergeTree, rated_at)}
ORDER BY message_key
SETTINGS ${dedup_window}
;

${distributed(answer_ratings, cityHash64(message_key))}
;

CREATE MATERIALIZED VIEW IF NOT EXISTS answer_ratings_mv ${on_cluster} TO ${local(answer_ratings)} AS
SELECT
    if(LogAttributes[${name(TM_MESSAGE_ID)}] != '', LogAttributes[${name(TM_MESSAGE_ID)}],
       LogAttributes[${name(GEN_AI_RESPONSE_ID)}]) AS message_key,
    if(LogAttributes[${name(TM_MESSAGE_ID)}] != '', 'message', 'response') AS key_kind,
    greatest(0, least(100, toFloat64OrZero(LogAttributes[${name(TM_FEEDBACK_SCORE)}]))) AS score,
    toDateTime64(Timestamp, 9, 'UTC') AS rated_at,
    LogAttributes[${name(ENDUSER_ID)}] AS rater,
    LogAttributes[${name(TM_DEPARTMENT)}] AS department,
    if(LogAttributes[${name(TM_APP)}] != '', LogAttributes[${name(TM_APP)}], ServiceName) AS app,
    ServiceName AS service_name,
    LogAttributes[${name(TM_FEEDBACK_REASON_HASH)}] AS reason_hash,
    LogAttributes[${name(TM_FEEDBACK_REASON)}] AS reason,
    TraceId AS trace_id
FROM ${local(otel_logs)}
WHERE ScopeName = 'tokenmeter'
  AND (EventName = ${name(EVENT_FEEDBACK)} OR LogAttributes[${name(EVENT_NAME)}] = ${name(EVENT_FEEDBACK)})
  AND (LogAttributes[${name(TM_MESSAGE_ID)}] != '' OR LogAttributes[${name(GEN_AI_RESPONSE_ID)}] != '')
  AND isFinite(toFloat64OrNull(LogAttributes[${name(TM_FEEDBACK_SCORE)}]))
;
