-- One department's period-to-date (the enforcer's second question, after the user's)
-- cannot use usage_counter_minutely's (user, series_id, minute) key and read the whole
-- table: 37 ms at 10M rows. A projection sorted by department reads only that
-- department's rows: 17 ms (bench/usage_query_latency.py, docs/benchmarks.md).
-- Aggregating tables need a rule for projections on merge: rebuild them.

ALTER TABLE ${local(usage_counter_minutely)} ${on_cluster}
    MODIFY SETTING deduplicate_merge_projection_mode = 'rebuild'
;

ALTER TABLE ${local(usage_counter_minutely)} ${on_cluster}
    ADD PROJECTION IF NOT EXISTS by_department (SELECT * ORDER BY department, series_id, minute)
;

ALTER TABLE ${local(usage_counter_minutely)} ${on_cluster}
    MATERIALIZE PROJECTION by_department
;
