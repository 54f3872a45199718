-- The embedded receiver's way in: each OTLP export request's protobuf bytes, as the SDK
-- sent them, go into a Null-engine input table (FORMAT Protobuf, schema
-- tokenmeter/collector/otlp_ingest.proto), and a materialized view flattens them into the
-- exporter-shaped otel_* table, one row per span / data point / log record, with the
-- exporter's column values (hex ids, SPAN_KIND_* / STATUS_CODE_* names, attribute maps of
-- strings). Nothing is kept in the input tables. On a cluster the views write to the
-- Distributed tables, so a receiver on any node fills every shard.

CREATE TABLE IF NOT EXISTS otlp_traces_in ${on_cluster} (
    resource_spans Array(Tuple(
        resource Tuple(attributes ${otlp_attributes_type}),
        scope_spans Array(Tuple(
            scope Tuple(name String, version String),
            spans Array(Tuple(
                trace_id String,
                span_id String,
                trace_state String,
                parent_span_id String,
                name String,
                kind Int32,
                start_time_unix_nano UInt64,
                end_time_unix_nano UInt64,
                attributes ${otlp_attributes_type},
                events Array(Tuple(time_unix_nano UInt64, name String, attributes ${otlp_attributes_type})),
                links Array(Tuple(trace_id String, span_id String, trace_state String, attributes ${otlp_attributes_type})),
                status Tuple(message String, code Int32)
            ))
        ))
    ))
) ENGINE = Null
;

CREATE MATERIALIZED VIEW IF NOT EXISTS otlp_traces_in_mv ${on_cluster} TO otel_traces AS
SELECT
    fromUnixTimestamp64Nano(toInt64(span.start_time_unix_nano)) AS Timestamp,
    lower(hex(span.trace_id)) AS TraceId,
    lower(hex(span.span_id)) AS SpanId,
    lower(hex(span.parent_span_id)) AS ParentSpanId,
    span.trace_state AS TraceState,
    span.name AS SpanName,
    transform(span.kind, [0, 1, 2, 3, 4, 5],
              ['SPAN_KIND_UNSPECIFIED', 'SPAN_KIND_INTERNAL', 'SPAN_KIND_SERVER', 'SPAN_KIND_CLIENT',
               'SPAN_KIND_PRODUCER', 'SPAN_KIND_CONSUMER'], '') AS SpanKind,
    ResourceAttributes[${name(SERVICE_NAME)}] AS ServiceName,
    ResourceAttributes,
    scope_span.scope.name AS ScopeName,
    scope_span.scope.version AS ScopeVersion,
    ${otlp_attributes_map(span.attributes)} AS SpanAttributes,
    if(span.end_time_unix_nano > span.start_time_unix_nano,
       span.end_time_unix_nano - span.start_time_unix_nano, 0) AS Duration,
    transform(span.status.code, [0, 1, 2], ['STATUS_CODE_UNSET', 'STATUS_CODE_OK', 'STATUS_CODE_ERROR'], '')
        AS StatusCode,
    span.status.message AS StatusMessage,
    arrayMap(event -> fromUnixTimestamp64Nano(toInt64(event.time_unix_nano)), span.events) AS `Events.Timestamp`,
    arrayMap(event -> event.name, span.events) AS `Events.Name`,
    arrayMap(event -> ${otlp_attributes_map(event.attributes)}, span.events) AS `Events.Attributes`,
    arrayMap(link -> lower(hex(link.trace_id)), span.links) AS `Links.TraceId`,
    arrayMap(link -> lower(hex(link.span_id)), span.links) AS `Links.SpanId`,
    arrayMap(link -> link.trace_state, span.links) AS `Links.TraceState`,
    arrayMap(link -> ${otlp_attributes_map(link.attributes)}, span.links) AS `Links.Attributes`
FROM (
    -- resource attributes once per resource, not once per span
    SELECT resource_span.scope_spans AS scope_spans,
           ${otlp_attributes_map(resource_span.resource.attributes)} AS ResourceAttributes
    FROM otlp_traces_in
    ARRAY JOIN resource_spans AS resource_span
)
ARRAY JOIN scope_spans AS scope_span
ARRAY JOIN scope_span.spans AS span
;

CREATE TABLE IF NOT EXISTS otlp_metrics_in ${on_cluster} (
    resource_metrics Array(Tuple(
        resource Tuple(attributes ${otlp_attributes_type}),
        scope_metrics Array(Tuple(
            scope Tuple(name String, version String, attributes ${otlp_attributes_type}, dropped_attributes_count UInt32),
            metrics Array(Tuple(
                name String,
                description String,
                unit String,
                gauge Tuple(data_points Array(Tuple(
                    attributes ${otlp_attributes_type}, start_time_unix_nano UInt64, time_unix_nano UInt64,
                    as_double Nullable(Float64), as_int Nullable(Int64), exemplars ${otlp_exemplars_type}, flags UInt32
                ))),
                sum Tuple(
                    data_points Array(Tuple(
                        attributes ${otlp_attributes_type}, start_time_unix_nano UInt64, time_unix_nano UInt64,
                        as_double Nullable(Float64), as_int Nullable(Int64), exemplars ${otlp_exemplars_type}, flags UInt32
                    )),
                    aggregation_temporality Int32,
                    is_monotonic Bool
                ),
                histogram Tuple(
                    data_points Array(Tuple(
                        attributes ${otlp_attributes_type}, start_time_unix_nano UInt64, time_unix_nano UInt64,
                        count UInt64, sum Float64, bucket_counts Array(UInt64), explicit_bounds Array(Float64),
                        exemplars ${otlp_exemplars_type}, flags UInt32, min Float64, max Float64
                    )),
                    aggregation_temporality Int32
                )
            )),
            schema_url String
        )),
        schema_url String
    ))
) ENGINE = Null
;

CREATE MATERIALIZED VIEW IF NOT EXISTS otlp_metrics_sum_mv ${on_cluster} TO otel_metrics_sum AS
SELECT
    ResourceAttributes,
    resource_schema_url AS ResourceSchemaUrl,
    scope_metric.scope.name AS ScopeName,
    scope_metric.scope.version AS ScopeVersion,
    ${otlp_attributes_map(scope_metric.scope.attributes)} AS ScopeAttributes,
    scope_metric.scope.dropped_attributes_count AS ScopeDroppedAttrCount,
    scope_metric.schema_url AS ScopeSchemaUrl,
    ResourceAttributes[${name(SERVICE_NAME)}] AS ServiceName,
    metric.name AS MetricName,
    metric.description AS MetricDescription,
    metric.unit AS MetricUnit,
    ${otlp_attributes_map(point.attributes)} AS Attributes,
    fromUnixTimestamp64Nano(toInt64(point.start_time_unix_nano)) AS StartTimeUnix,
    fromUnixTimestamp64Nano(toInt64(point.time_unix_nano)) AS TimeUnix,
    coalesce(point.as_double, toFloat64(point.as_int), 0) AS Value,
    point.flags AS Flags,
    ${otlp_exemplar_columns(point.exemplars)},
    metric.sum.aggregation_temporality AS AggregationTemporality,
    metric.sum.is_monotonic AS IsMonotonic
FROM (
    SELECT resource_metric.scope_metrics AS scope_metrics,
           resource_metric.schema_url AS resource_schema_url,
           ${otlp_attributes_map(resource_metric.resource.attributes)} AS ResourceAttributes
    FROM otlp_metrics_in
    ARRAY JOIN resource_metrics AS resource_metric
)
ARRAY JOIN scope_metrics AS scope_metric
ARRAY JOIN scope_metric.metrics AS metric
ARRAY JOIN metric.sum.data_points AS point
;

CREATE MATERIALIZED VIEW IF NOT EXISTS otlp_metrics_gauge_mv ${on_cluster} TO otel_metrics_gauge AS
SELECT
    ResourceAttributes,
    resource_schema_url AS ResourceSchemaUrl,
    scope_metric.scope.name AS ScopeName,
    scope_metric.scope.version AS ScopeVersion,
    ${otlp_attributes_map(scope_metric.scope.attributes)} AS ScopeAttributes,
    scope_metric.scope.dropped_attributes_count AS ScopeDroppedAttrCount,
    scope_metric.schema_url AS ScopeSchemaUrl,
    ResourceAttributes[${name(SERVICE_NAME)}] AS ServiceName,
    metric.name AS MetricName,
    metric.description AS MetricDescription,
    metric.unit AS MetricUnit,
    ${otlp_attributes_map(point.attributes)} AS Attributes,
    fromUnixTimestamp64Nano(toInt64(point.start_time_unix_nano)) AS StartTimeUnix,
    fromUnixTimestamp64Nano(toInt64(point.time_unix_nano)) AS TimeUnix,
    coalesce(point.as_double, toFloat64(point.as_int), 0) AS Value,
    point.flags AS Flags,
    ${otlp_exemplar_columns(point.exemplars)}
FROM (
    SELECT resource_metric.scope_metrics AS scope_metrics,
           resource_metric.schema_url AS resource_schema_url,
           ${otlp_attributes_map(resource_metric.resource.attributes)} AS ResourceAttributes
    FROM otlp_metrics_in
    ARRAY JOIN resource_metrics AS resource_metric
)
ARRAY JOIN scope_metrics AS scope_metric
ARRAY JOIN scope_metric.metrics AS metric
ARRAY JOIN metric.gauge.data_points AS point
;

CREATE MATERIALIZED VIEW IF NOT EXISTS otlp_metrics_histogram_mv ${on_cluster} TO otel_metrics_histogram AS
SELECT
    ResourceAttributes,
    resource_schema_url AS ResourceSchemaUrl,
    scope_metric.scope.name AS ScopeName,
    scope_metric.scope.version AS ScopeVersion,
    ${otlp_attributes_map(scope_metric.scope.attributes)} AS ScopeAttributes,
    scope_metric.scope.dropped_attributes_count AS ScopeDroppedAttrCount,
    scope_metric.schema_url AS ScopeSchemaUrl,
    ResourceAttributes[${name(SERVICE_NAME)}] AS ServiceName,
    metric.name AS MetricName,
    metric.description AS MetricDescription,
    metric.unit AS MetricUnit,
    ${otlp_attributes_map(point.attributes)} AS Attributes,
    fromUnixTimestamp64Nano(toInt64(point.start_time_unix_nano)) AS StartTimeUnix,
    fromUnixTimestamp64Nano(toInt64(point.time_unix_nano)) AS TimeUnix,
    point.count AS Count,
    point.sum AS Sum,
    point.bucket_counts AS BucketCounts,
    point.explicit_bounds AS ExplicitBounds,
    ${otlp_exemplar_columns(point.exemplars)},
    point.flags AS Flags,
    point.min AS Min,
    point.max AS Max,
    metric.histogram.aggregation_temporality AS AggregationTemporality
FROM (
    SELECT resource_metric.scope_metrics AS scope_metrics,
           resource_metric.schema_url AS resource_schema_url,
           ${otlp_attributes_map(resource_metric.resource.attributes)} AS ResourceAttributes
    FROM otlp_metrics_in
    ARRAY JOIN resource_metrics AS resource_metric
)
ARRAY JOIN scope_metrics AS scope_metric
ARRAY JOIN scope_metric.metrics AS metric
ARRAY JOIN metric.histogram.data_points AS point
;

CREATE TABLE IF NOT EXISTS otlp_logs_in ${on_cluster} (
    resource_logs Array(Tuple(
        resource Tuple(attributes ${otlp_attributes_type}),
        scope_logs Array(Tuple(
            scope Tuple(name String, version String, attributes ${otlp_attributes_type}),
            log_records Array(Tuple(
                time_unix_nano UInt64,
                observed_time_unix_nano UInt64,
                severity_number Int32,
                severity_text String,
                body ${otlp_any_value_type},
                attributes ${otlp_attributes_type},
                flags UInt32,
                trace_id String,
                span_id String,
                event_name String
            )),
            schema_url String
        )),
        schema_url String
    ))
) ENGINE = Null
;

CREATE MATERIALIZED VIEW IF NOT EXISTS otlp_logs_in_mv ${on_cluster} TO otel_logs AS
SELECT
    -- the exporter's rule: a record without a time gets its observed time
    fromUnixTimestamp64Nano(toInt64(if(log.time_unix_nano != 0, log.time_unix_nano, log.observed_time_unix_nano)))
        AS Timestamp,
    lower(hex(log.trace_id)) AS TraceId,
    lower(hex(log.span_id)) AS SpanId,
    toUInt8(bitAnd(log.flags, 255)) AS TraceFlags,
    log.severity_text AS SeverityText,
    toUInt8(least(greatest(log.severity_number, 0), 255)) AS SeverityNumber,
    ResourceAttributes[${name(SERVICE_NAME)}] AS ServiceName,
    ${otlp_any_value_string(log.body)} AS Body,
    resource_schema_url AS ResourceSchemaUrl,
    ResourceAttributes,
    scope_log.schema_url AS ScopeSchemaUrl,
    scope_log.scope.name AS ScopeName,
    scope_log.scope.version AS ScopeVersion,
    ${otlp_attributes_map(scope_log.scope.attributes)} AS ScopeAttributes,
    ${otlp_attributes_map(log.attributes)} AS LogAttributes,
    log.event_name AS EventName
FROM (
    SELECT resource_log.scope_logs AS scope_logs,
           resource_log.schema_url AS resource_schema_url,
           ${otlp_attributes_map(resource_log.resource.attributes)} AS ResourceAttributes
    FROM otlp_logs_in
    ARRAY JOIN resource_logs AS resource_log
)
ARRAY JOIN scope_logs AS scope_log
ARRAY JOIN scope_log.log_records AS log
;
