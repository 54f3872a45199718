-- cost_reprices: the log of `tokenmeter reprice --apply` (docs/accounting.md#repricing). One row per run,
-- UTC day, model and currency whose calls' cost in llm_usage the run rewrote: how many calls, their cost
-- before and after, and which catalog priced them. The calls' rows were re-inserted into llm_usage (a
-- ReplacingMergeTree: the newer row replaces the older); the usage counters keep the cost as charged.
-- No TTL: an audit record, like the credits ledger.

CREATE TABLE IF NOT EXISTS ${local(cost_reprices)} ${on_cluster} (
    run_id String,
    at DateTime64(6, 'UTC'),
    range_from Date,
    range_to Date,
    model_filter String,
    day Date,
    model LowCardinality(String),
    currency LowCardinality(String),
    virtual Bool,
    calls UInt64,
    rewritten UInt64,
    became_priced UInt64,
    became_unpriced UInt64,
    old_cost Decimal(38, 12),
    new_cost Decimal(38, 12),
    catalog String
) ENGINE = ${engine(MergeTree)}
ORDER BY (at, run_id, day, model, currency)
;

${distributed(cost_reprices, cityHash64(run_id))}
;
