-- otel_traces without the bloom-filter indexes over its attribute maps' keys and values.
-- They were a large part of span ingest: hashed for every attribute of every
-- span at insert and again at every merge, about a fifth of the CPU per span
-- (docs/benchmarks.md, "Where a span's ingest CPU goes"). tokenmeter reads per-call
-- usage from llm_usage, sorted by user, not from otel_traces by attribute; trace lookups
-- keep idx_trace_id. For ad-hoc attribute search over raw spans they can be added back
-- (docs/storage.md).

ALTER TABLE ${local(otel_traces)} ${on_cluster}
    DROP INDEX IF EXISTS idx_span_attr_key
;

ALTER TABLE ${local(otel_traces)} ${on_cluster}
    DROP INDEX IF EXISTS idx_span_attr_value
;
