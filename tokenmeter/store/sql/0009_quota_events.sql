-- quota_events: what the enforcer saw happen, for dashboards and alerts.
--   threshold_crossed: a subject's usage in the store reached a warning threshold or the
--     limit (threshold 1) of a budget in a period; written once per (budget, subject,
--     period, threshold) by each enforcer replica (a restarted replica reads back what
--     it wrote and does not repeat it).
--   decision_changed: the decision for a (user, department, app) changed, e.g. allow -> warn
--     -> downgrade; after a rollover, back to allow.
-- Several replicas may each write the same crossing; count distinct
-- (budget, subject, period_start, threshold) when alerting.

CREATE TABLE IF NOT EXISTS ${local(quota_events)} ${on_cluster} (
    time DateTime64(3, 'UTC'),
    event LowCardinality(String),
    budget String,
    scope LowCardinality(String),
    subject String,
    period_start DateTime('UTC'),
    resets_at DateTime('UTC'),
    threshold Float64,
    ratio Float64,
    used_tokens Int64,
    limit_tokens Nullable(Int64),
    used_cost Nullable(Decimal(38, 9)),
    limit_cost Nullable(Decimal(38, 9)),
    currency LowCardinality(String),
    action LowCardinality(String),
    previous_action LowCardinality(String),
    user String,
    department LowCardinality(String),
    app LowCardinality(String),
    requested_model LowCardinality(String),
    effective_model LowCardinality(String),
    reason String,
    replica LowCardinality(String)
) ENGINE = ${engine(MergeTree)}
PARTITION BY toYYYYMM(time)
ORDER BY (event, budget, subject, time)
${aggregate_ttl(toDateTime(time))}
;

${distributed(quota_events, cityHash64(subject))}
;
