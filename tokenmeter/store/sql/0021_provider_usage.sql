-- provider_usage: the providers' own usage and billing exports, imported by `tokenmeter reconcile`
-- (docs/reconcile.md). One value per provider, day (in the provider's time zone, day_zone), model as the
-- export names it, workspace / project, API key and token type: requests, input, cached_input, cache_write,
-- output, reasoning, audio_input, audio_output, or cost (money in currency). model_key is the name both sides
-- are compared under. Importing a value again writes nothing when it is unchanged (the importer compares
-- first); a changed value (a corrected export) is a new row with a later imported_at, and ReplacingMergeTree
-- keeps the latest: read with FINAL. No TTL: these are finance's records, like the credits ledger.

CREATE TABLE IF NOT EXISTS ${local(provider_usage)} ${on_cluster} (
    provider LowCardinality(String),
    day Date,
    model String,
    workspace String,
    api_key String,
    token_type LowCardinality(String),
    model_key String,
    quantity Decimal(38, 12),
    currency LowCardinality(String),
    day_zone LowCardinality(String),
    source_file String,
    imported_at DateTime64(6, 'UTC')
) ENGINE = ${engine(ReplacingMergeTree, imported_at)}
ORDER BY (provider, day, model, workspace, api_key, token_type)
;

${distributed(provider_usage, cityHash64(provider, model))}
;
