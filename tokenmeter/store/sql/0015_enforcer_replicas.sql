-- enforcer_replicas: each enforcer's heartbeat (at start and about twice a minute), so an
-- enforcer can see the others that use the same store. Replicas that do not share budget
-- headroom through a coordination server (TOKENMETER_COORDINATION_URL) each admit the whole
-- budget; an enforcer that sees such a one says so loudly (log, /healthz, /metrics).

CREATE TABLE IF NOT EXISTS ${local(enforcer_replicas)} ${on_cluster} (
    replica String,
    host LowCardinality(String),
    pid UInt32,
    coordination String,
    seen_at DateTime64(3, 'UTC')
) ENGINE = ${engine(ReplacingMergeTree, seen_at)}
ORDER BY replica
TTL toDateTime(seen_at) + toIntervalDay(1)
;

${distributed(enforcer_replicas, cityHash64(replica))}
;
