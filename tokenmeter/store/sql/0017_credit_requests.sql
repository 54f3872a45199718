-- credit_request_events: top-up requests and what happened to them (docs/credits.md), append-only.
-- One row per event (requested, approved, rejected, cancelled); every row carries its whole
-- request, so any one row names it. A request's state is folded from its events
-- (tokenmeter.credits.approvals), never stored. No TTL: finance keeps these records.
-- event_id is made by whoever records an event, so an event sent twice is recorded once
-- (tokenmeter.store.credit_requests checks before it writes). A wallet's requests stay on one shard.

CREATE TABLE IF NOT EXISTS ${local(credit_request_events)} ${on_cluster} (
    account String,
    request_id String,
    event_id String,
    kind LowCardinality(String),
    wallet String,
    subject String,
    amount Decimal(38, 9),
    reason String,
    requester String,
    created_at DateTime64(6, 'UTC'),
    expires_at DateTime64(6, 'UTC'),
    actor String,
    actor_groups Array(String),
    comment String,
    at DateTime64(6, 'UTC'),
    recorded_at DateTime64(6, 'UTC')
) ENGINE = ${engine(MergeTree)}
ORDER BY (account, request_id, at, event_id)
;

${distributed(credit_request_events, cityHash64(account))}
;
