-- credit_ledger: the department credits' append-only ledger (docs/credits.md). Every grant,
-- top-up, adjustment and charge of a wallet, with who recorded it and why. Balances are
-- replayed from these rows, never stored. No TTL: finance keeps these records.
-- entry_id is made by whoever records an entry, so an entry sent twice is recorded once
-- (tokenmeter.store.credit_ledger checks before it writes; readers keep one row per id and
-- refuse an id recorded with different content). A wallet's entries stay on one shard.

CREATE TABLE IF NOT EXISTS ${local(credit_ledger)} ${on_cluster} (
    wallet String,
    entry_id String,
    kind LowCardinality(String),
    amount Decimal(38, 9),
    at DateTime64(6, 'UTC'),
    valid_until Nullable(DateTime64(6, 'UTC')),
    priority Int32,
    rolls_over Bool,
    actor String,
    reason String,
    recorded_at DateTime64(6, 'UTC')
) ENGINE = ${engine(MergeTree)}
ORDER BY (wallet, entry_id)
;

${distributed(credit_ledger, cityHash64(wallet))}
;
