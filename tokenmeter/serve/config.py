"""What `tokenmeter serve` is told: addresses, the store, tokens, ingest limits and the quota options."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tokenmeter.collector.limits import (
    DEFAULT_BATCH_BYTES,
    DEFAULT_FLUSH_INTERVAL,
    DEFAULT_GRPC_MAX_CONNECTION_AGE_SECONDS,
    DEFAULT_MAX_PENDING_BYTES,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_WRITERS,
)
from tokenmeter.enforcer.quota_service import EnforcerOptions
from tokenmeter.server.body_deadline import DEFAULT_BODY_TIMEOUT_SECONDS


@dataclass(frozen=True)
class ServeConfig:
    clickhouse_url: str
    host: str = "127.0.0.1"
    otlp_grpc_port: int = 4317
    otlp_http_port: int = 4318
    api_port: int = 9400
    api_token: str | None = None
    otlp_token: str | None = None
    raw_ttl_days: int = 30
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES
    batch_bytes: int = DEFAULT_BATCH_BYTES
    flush_interval: float = DEFAULT_FLUSH_INTERVAL
    writers: int = DEFAULT_WRITERS
    token_dir: Path | None = None  # where the generated API token is written; default: the data dir
    # Quotas: /v1/check etc. on the API port. Without a policy file every check is allowed.
    enforcer: EnforcerOptions = field(default_factory=EnforcerOptions)
    # Accepted on the enforcer's endpoints besides the API token (the apps' token).
    enforcer_token: str | None = None
    # A request body (OTLP/HTTP, API) must arrive within this many seconds; else 408.
    body_timeout: float = DEFAULT_BODY_TIMEOUT_SECONDS
    # gRPC connections are closed after this long (+ body_timeout for calls in flight); clients reconnect.
    grpc_max_connection_age: float = DEFAULT_GRPC_MAX_CONNECTION_AGE_SECONDS
