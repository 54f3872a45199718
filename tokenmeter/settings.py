"""tokenmeter's settings: one object, read from the environment once at start.

Every ``TOKENMETER_*`` variable is a field here and a row in the table in
docs/instrumentation.md. Code receives a ``Settings`` instance; only
``get_settings()`` reads the environment.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

CommaList = list[str]  # from the environment: "a,b" (or a JSON list)
_COMMA_FIELDS: Final = frozenset({
    "preload_models", "user_header", "department_header", "app_header", "session_header", "trusted_proxies",
    "jwt_algorithms", "hop_servers",
})  # fmt: skip


class _EnvironmentSource(EnvSettingsSource):
    """Comma lists reach the validator as written.

    pydantic-settings decodes list fields from the environment as JSON; its ``NoDecode``
    marker for that is 2.7+, and Langchain-Chatchat 0.3.1.3 pins pydantic-settings 2.3.4.
    """

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        if field_name in _COMMA_FIELDS and isinstance(value, str):
            return value
        return super().decode_complex_value(field_name, field, value)


def default_data_dir() -> Path:
    """Where the embedded store lives unless TOKENMETER_CLICKHOUSE_URL says otherwise."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "tokenmeter"


def default_api_token_file() -> Path:
    """Where `tokenmeter serve` writes its generated API token, and `tokenmeter report` reads it."""
    return default_data_dir() / "api-token"


class AnswerCacheSettings(BaseSettings):
    """The repeat-answer cache's fields of `Settings` (docs/answer-cache.md), kept apart to keep that class short."""

    model_config = SettingsConfigDict(env_prefix="TOKENMETER_", extra="ignore")
    # Off unless set: "memory", or a directory ("dir:/path" or an absolute path). Needs hash_key (answers are
    # encrypted under a key derived from it) and the answer-cache extra.
    answer_cache: str | None = None
    answer_cache_ttl: float = Field(default=3600.0, gt=0)  # seconds an answer is reused
    answer_cache_max_entries: int = Field(default=10_000, ge=1)


class ResponseHeaderSettings(BaseSettings):
    """What the identity middleware adds to responses (docs/accounting.md), kept apart to keep `Settings` short."""

    model_config = SettingsConfigDict(env_prefix="TOKENMETER_", extra="ignore")
    # X-Tokenmeter-Cost: the cost of the LLM calls a request made that returned before its response started.
    # Off unless asked: it shows what answers cost to whoever receives the response.
    cost_header: bool = False


class Settings(AnswerCacheSettings, ResponseHeaderSettings):
    model_config = SettingsConfigDict(env_prefix="TOKENMETER_", extra="ignore")

    # Store and services (used by later components; named here so the table is whole).
    clickhouse_url: str = Field(default_factory=lambda: f"chdb://{default_data_dir() / 'chdb'}")
    # Quotas (docs/quotas.md). The policy file, for `serve` and `enforcer`.
    policy: Path | None = None
    # The app side: check each call with the enforcer at this URL (e.g. http://127.0.0.1:9400).
    enforcer_url: str | None = None
    # Bearer token of the enforcer's API, for apps and `tokenmeter check`; serve and
    # enforcer accept it. Unset on the app side: the api-token file serve wrote, if readable.
    enforcer_token: SecretStr | None = None
    # When the enforcer cannot answer in time: "open" lets the call through (counted),
    # "closed" refuses it with QuotaUnavailable.
    fail_mode: Literal["open", "closed"] = "open"
    # Seconds one check may take in all (connection, request, answer). A stalled or busy enforcer
    # answers within it; only past it (or when unreachable) does a call follow fail_mode.
    enforcer_timeout: float = Field(default=2.0, gt=0, le=30)
    # How long the client reuses a deny/degrade answer, and waits before trying an
    # unreachable enforcer again (calls meanwhile follow fail_mode).
    enforcer_cache_seconds: float = Field(default=1.0, ge=0, le=300)
    # Sidecar: how often usage is read from the store; how long a finished call's
    # reservation is kept (its usage must be in the store by then: export interval + ingest).
    enforcer_refresh_seconds: float = Field(default=5.0, gt=0, le=3600)
    enforcer_settle_seconds: float = Field(default=90.0, ge=0, le=86400)
    # Shift the enforcer's calendar by this many seconds: rollover drills and tests only.
    enforcer_clock_offset: float = 0.0
    # More than one enforcer on one store: zk://host:2181[,host2:2181]/path of ClickHouse Keeper or
    # ZooKeeper, through which the replicas share budget headroom (docs/quotas.md).
    coordination_url: str | None = None

    # `tokenmeter serve`: bearer token for its usage API (read endpoints reveal usage).
    # Unset: serve makes one and writes it to <data dir>/api-token (mode 0600), where
    # `tokenmeter report` on the same machine finds it.
    api_token: SecretStr | None = None
    # Where `tokenmeter report` finds a running serve's API.
    api_url: str = "http://127.0.0.1:9400"
    # Optional bearer token the OTLP receiver requires (OTEL_EXPORTER_OTLP_HEADERS on the app side).
    otlp_token: SecretStr | None = None

    # Model catalog: a user YAML file whose entries win over the built-in ones.
    models: Path | None = None
    # Hugging Face hub ids may be fetched only when this is set; otherwise local cache only.
    allow_download: bool = False
    # Models whose tokenizers load at instrument() time instead of on first use.
    preload_models: CommaList = Field(default_factory=list)

    # Privacy: key for HMAC-SHA256 of prompts and completions.
    hash_key: SecretStr | None = None

    # Identity (ASGI middleware). Several header names may be given, first present wins.
    user_header: CommaList = Field(default_factory=lambda: ["X-Forwarded-User", "X-User-Id"])
    department_header: CommaList = Field(default_factory=lambda: ["X-Forwarded-Groups", "X-Department"])
    app_header: CommaList = Field(default_factory=lambda: ["X-Tokenmeter-App"])
    session_header: CommaList = Field(default_factory=lambda: ["X-Conversation-Id"])
    # Identity headers and incoming baggage are believed only from these peers
    # (like uvicorn's forwarded_allow_ips). A verified JWT is believed from anyone.
    trusted_proxies: CommaList = Field(default_factory=lambda: ["127.0.0.0/8", "::1"])
    jwt_secret: SecretStr | None = None
    jwt_public_key: str | None = None
    jwt_algorithms: CommaList = Field(default_factory=lambda: ["HS256", "RS256", "ES256"])
    jwt_audience: str | None = None
    jwt_user_claim: str = "sub"
    jwt_department_claim: str = "department"

    # Local counts when the server reports usage too (they show drift; billing uses the
    # server's): on every call, on a sample of calls (by trace id), or never. Calls
    # without server usage are always counted locally: that count is the bill.
    local_count: Literal["always", "sample", "fallback"] = "sample"
    drift_sample_rate: float = Field(default=0.1, ge=0.0, le=1.0)

    # Streaming: "inject" adds stream_options.include_usage so the server reports usage.
    stream_usage: Literal["off", "inject"] = "off"
    # Where trace context and attribution baggage (user id, department) are added to outgoing LLM
    # requests: by default only to hop servers (your own forwarding services, e.g. Chatchat's /v1), never
    # to a model server, even on loopback: a local proxy (one-api ...) may forward them to a third-party
    # API. "loopback" adds every loopback server, "always" every server, "never" none.
    propagate: Literal["hops", "loopback", "always", "never"] = "hops"
    # Your own services that forward LLM calls (host:port): calls to them are hops, not
    # billed or checked here; the forwarded call is (e.g. Chatchat's API, 127.0.0.1:7861).
    hop_servers: CommaList = Field(default_factory=list)
    # The usage counters carry a user dimension; the OTel SDK's default per-metric
    # limit (2000 series) would fold extra users into one overflow series.
    metrics_cardinality_limit: int = 100_000
    # Export the usage counters this long after a call finishes (debounced: at most one export per this
    # many seconds while calls keep finishing), not only every OTEL_METRIC_EXPORT_INTERVAL: a process
    # killed without warning loses at most the calls of its last such period. 0 = off (periodic only).
    usage_flush_seconds: float = Field(default=1.0, ge=0, le=3600)
    # Chatchat's launcher (`chatchat start`) SIGKILLs its servers when it is stopped:
    # tokenmeter makes it send SIGTERM first and wait this long for them to finish their
    # requests and export their usage. 0 = Chatchat's own immediate SIGKILL.
    chatchat_stop_seconds: float = Field(default=30.0, ge=0, le=3600)
    # Chatchat: languages of the quota notices added to answers, or "off" (docs/chatchat.md).
    quota_notice: Literal["zh+en", "zh", "en", "off"] = "zh+en"
    # A refusal (deny, degrade) ends with this link to ask for a top-up; {budget} {scope} {subject} filled in.
    topup_url: str | None = Field(default=None, max_length=2000)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _EnvironmentSource(settings_cls), dotenv_settings, file_secret_settings

    @field_validator(*sorted(_COMMA_FIELDS), mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("hop_servers")
    @classmethod
    def _hop_servers(cls, value: list[str]) -> list[str]:
        for server in value:
            split_hop_server(server)  # a clear error at start, not a silent non-match later
        return value

    @field_validator("metrics_cardinality_limit")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError("TOKENMETER_METRICS_CARDINALITY_LIMIT must be a positive integer")
        return value


def enforcer_client_token(settings: Settings) -> str | None:
    """The token apps and `tokenmeter check` send to the enforcer.

    TOKENMETER_ENFORCER_TOKEN, else TOKENMETER_API_TOKEN, else the api-token file a local
    `tokenmeter serve` wrote (the embedded default on one machine); None when none is there.
    """
    for secret in (settings.enforcer_token, settings.api_token):
        if secret is not None:
            return secret.get_secret_value()
    try:
        return default_api_token_file().read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def hash_key_bytes(settings: Settings) -> bytes | None:
    """TOKENMETER_HASH_KEY as the bytes prompts and rating reasons are hashed under; None when unset."""
    return settings.hash_key.get_secret_value().encode() if settings.hash_key else None


def capture_message_content() -> bool:
    """The OTel GenAI opt-in for recording prompt and completion text."""
    value = os.environ.get("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "")
    return value.strip().lower() in {"1", "true", "yes", "on", "span_only", "span_and_event"}


@functools.cache
def get_settings() -> Settings:
    """The process's settings, read from the environment on first use."""
    return Settings()


def split_hop_server(text: str) -> tuple[str, int | None]:
    """``host:port`` (or ``[::1]:port``, or a bare host: any port) as (host, port); raises ValueError."""
    text = text.strip()
    host, separator, port = text.rpartition(":")
    if not separator or host.endswith(":") or (host.count(":") and not host.startswith("[")):
        return text, None
    if not port.isdigit() or not host:
        raise ValueError(f"hop server {text!r} is not host:port")
    return host, int(port)
