-- quota_utilisation: each budget's period-to-date usage per subject as the enforcer sees it
-- (store usage, in-flight reservations, limit, ratio), written by every enforcer replica
-- about twice a minute and at stop. The limits live in the policy file, so this is where
-- dashboards find utilisation. The latest row per (budget, subject, period, replica) wins.

CREATE TABLE IF NOT EXISTS ${local(quota_utilisation)} ${on_cluster} (
    updated_at DateTime64(3, 'UTC'),
    budget String,
    scope LowCardinality(String),
    subject String,
    period LowCardinality(String),
    period_start DateTime('UTC'),
    resets_at DateTime('UTC'),
    used_tokens Int64,
    reserved_tokens Int64,
    limit_tokens Nullable(Int64),
    used_cost Nullable(Decimal(38, 9)),
    reserved_cost Nullable(Decimal(38, 9)),
    limit_cost Nullable(Decimal(38, 9)),
    currency LowCardinality(String),
    ratio Float64,
    action LowCardinality(String),
    replica LowCardinality(String)
) ENGINE = ${engine(ReplacingMergeTree, updated_at)}
PARTITION BY toYYYYMM(period_start)
ORDER BY (budget, scope, subject, period_start, replica)
${aggregate_ttl(toDateTime(period_start))}
;

${distributed(quota_utilisation, cityHash64(subject))}
;
