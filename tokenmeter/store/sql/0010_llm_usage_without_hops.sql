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
  AND SpanAttributes['tokenmeter.hop'] != 'true'
;
