-- otlp_traces_in read as parallel arrays: one column per span field instead of one deeply
-- nested column. ClickHouse's Protobuf input fills a column named `a.b.c` from the nested
-- message fields a -> b -> c, one Array level per repeated message, so the columns line
-- up: element [r][s][i] of every span column belongs to span i of scope s of resource r.
--
-- Why: an incremental materialized view analyses and plans its SELECT again for every
-- block it gets, and resolving each `span.x` against the single nested column cost about
-- 0.75 ms (the size of its type). Planning the flattening view took 48 ms of an insert's
-- ~70 ms fixed cost; over these columns it takes ~31 ms, and an insert of 16 requests
-- ~20 % less time (bench/ingest_insert_cost.py, docs/benchmarks.md). The rows written are
-- the same. The view and the table are made again (a Null table keeps nothing); a
-- receiver writing during the migration gets an error and its SDK retries.

DROP VIEW IF EXISTS otlp_traces_in_mv ${on_cluster}
;

DROP TABLE IF EXISTS otlp_traces_in ${on_cluster}
;

CREATE TABLE IF NOT EXISTS otlp_traces_in ${on_cluster} (
    `resource_spans.resource.attributes` Array(${otlp_attributes_type}),
    `resource_spans.scope_spans.scope.name` Array(Array(String)),
    `resource_spans.scope_spans.scope.version` Array(Array(String)),
    `resource_spans.scope_spans.spans.trace_id` Array(Array(Array(String))),
    `resource_spans.scope_spans.spans.span_id` Array(Array(Array(String))),
    `resource_spans.scope_spans.spans.trace_state` Array(Array(Array(String))),
    `resource_spans.scope_spans.spans.parent_span_id` Array(Array(Array(String))),
    `resource_spans.scope_spans.spans.name` Array(Array(Array(String))),
    `resource_spans.scope_spans.spans.kind` Array(Array(Array(Int32))),
    `resource_spans.scope_spans.spans.start_time_unix_nano` Array(Array(Array(UInt64))),
    `resource_spans.scope_spans.spans.end_time_unix_nano` Array(Array(Array(UInt64))),
    `resource_spans.scope_spans.spans.attributes` Array(Array(Array(${otlp_attributes_type}))),
    `resource_spans.scope_spans.spans.events` Array(Array(Array(Array(Tuple(
        time_unix_nano UInt64, name String, attributes ${otlp_attributes_type}))))),
    `resource_spans.scope_spans.spans.links` Array(Array(Array(Array(Tuple(
        trace_id String, span_id String, trace_state String, attributes ${otlp_attributes_type}))))),
    `resource_spans.scope_spans.spans.status.message` Array(Array(Array(String))),
    `resource_spans.scope_spans.spans.status.code` Array(Array(Array(Int32)))
) ENGINE = Null
;

CREATE MATERIALIZED VIEW IF NOT EXISTS otlp_traces_in_mv ${on_cluster} TO otel_traces AS
SELECT
    fromUnixTimestamp64Nano(toInt64(span_start_time_unix_nano)) AS Timestamp,
    lower(hex(span_trace_id)) AS TraceId,
    lower(hex(span_span_id)) AS SpanId,
    lower(hex(span_parent_span_id)) AS ParentSpanId,
    span_trace_state AS TraceState,
    span_name AS SpanName,
    transform(span_kind, [0, 1, 2, 3, 4, 5],
              ['SPAN_KIND_UNSPECIFIED', 'SPAN_KIND_INTERNAL', 'SPAN_KIND_SERVER', 'SPAN_KIND_CLIENT',
               'SPAN_KIND_PRODUCER', 'SPAN_KIND_CONSUMER'], '') AS SpanKind,
    ResourceAttributes[${name(SERVICE_NAME)}] AS ServiceName,
    ResourceAttributes,
    ScopeName,
    ScopeVersion,
    ${otlp_attributes_map(span_attributes)} AS SpanAttributes,
    if(span_end_time_unix_nano > span_start_time_unix_nano,
       span_end_time_unix_nano - span_start_time_unix_nano, 0) AS Duration,
    transform(span_status_code, [0, 1, 2], ['STATUS_CODE_UNSET', 'STATUS_CODE_OK', 'STATUS_CODE_ERROR'], '')
        AS StatusCode,
    span_status_message AS StatusMessage,
    arrayMap(event -> fromUnixTimestamp64Nano(toInt64(event.time_unix_nano)), span_events) AS `Events.Timestamp`,
    arrayMap(event -> event.name, span_events) AS `Events.Name`,
    arrayMap(event -> ${otlp_attributes_map(event.attributes)}, span_events) AS `Events.Attributes`,
    arrayMap(link -> lower(hex(link.trace_id)), span_links) AS `Links.TraceId`,
    arrayMap(link -> lower(hex(link.span_id)), span_links) AS `Links.SpanId`,
    arrayMap(link -> link.trace_state, span_links) AS `Links.TraceState`,
    arrayMap(link -> ${otlp_attributes_map(link.attributes)}, span_links) AS `Links.Attributes`
FROM (
    -- one row per resource: its attributes become a map once, not once per span
    SELECT ${otlp_attributes_map(resource_attributes)} AS ResourceAttributes,
           scope_names, scope_versions, scopes_trace_id, scopes_span_id, scopes_trace_state,
           scopes_parent_span_id, scopes_name, scopes_kind, scopes_start_time_unix_nano,
           scopes_end_time_unix_nano, scopes_attributes, scopes_events, scopes_links,
           scopes_status_message, scopes_status_code
    FROM otlp_traces_in
    ARRAY JOIN
        `resource_spans.resource.attributes` AS resource_attributes,
        `resource_spans.scope_spans.scope.name` AS scope_names,
        `resource_spans.scope_spans.scope.version` AS scope_versions,
        `resource_spans.scope_spans.spans.trace_id` AS scopes_trace_id,
        `resource_spans.scope_spans.spans.span_id` AS scopes_span_id,
        `resource_spans.scope_spans.spans.trace_state` AS scopes_trace_state,
        `resource_spans.scope_spans.spans.parent_span_id` AS scopes_parent_span_id,
        `resource_spans.scope_spans.spans.name` AS scopes_name,
        `resource_spans.scope_spans.spans.kind` AS scopes_kind,
        `resource_spans.scope_spans.spans.start_time_unix_nano` AS scopes_start_time_unix_nano,
        `resource_spans.scope_spans.spans.end_time_unix_nano` AS scopes_end_time_unix_nano,
        `resource_spans.scope_spans.spans.attributes` AS scopes_attributes,
        `resource_spans.scope_spans.spans.events` AS scopes_events,
        `resource_spans.scope_spans.spans.links` AS scopes_links,
        `resource_spans.scope_spans.spans.status.message` AS scopes_status_message,
        `resource_spans.scope_spans.spans.status.code` AS scopes_status_code
)
-- one row per scope
ARRAY JOIN
    scope_names AS ScopeName,
    scope_versions AS ScopeVersion,
    scopes_trace_id AS spans_trace_id,
    scopes_span_id AS spans_span_id,
    scopes_trace_state AS spans_trace_state,
    scopes_parent_span_id AS spans_parent_span_id,
    scopes_name AS spans_name,
    scopes_kind AS spans_kind,
    scopes_start_time_unix_nano AS spans_start_time_unix_nano,
    scopes_end_time_unix_nano AS spans_end_time_unix_nano,
    scopes_attributes AS spans_attributes,
    scopes_events AS spans_events,
    scopes_links AS spans_links,
    scopes_status_message AS spans_status_message,
    scopes_status_code AS spans_status_code
-- one row per span
ARRAY JOIN
    spans_trace_id AS span_trace_id,
    spans_span_id AS span_span_id,
    spans_trace_state AS span_trace_state,
    spans_parent_span_id AS span_parent_span_id,
    spans_name AS span_name,
    spans_kind AS span_kind,
    spans_start_time_unix_nano AS span_start_time_unix_nano,
    spans_end_time_unix_nano AS span_end_time_unix_nano,
    spans_attributes AS span_attributes,
    spans_events AS span_events,
    spans_links AS span_links,
    spans_status_message AS span_status_message,
    spans_status_code AS span_status_code
;
