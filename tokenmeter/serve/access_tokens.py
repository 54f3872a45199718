"""The bearer tokens serve requires (the API's, the OTLP receivers') and where each came from.

Where a token came from goes on the ready line and in the log; the token itself never does.
"""

from __future__ import annotations

from collections.abc import Callable

from tokenmeter.serve.config import ServeConfig
from tokenmeter.server.listening import is_loopback_address
from tokenmeter.server.tokens import load_or_create_api_token, load_or_create_token, otlp_token_path


def api_token(config: ServeConfig) -> tuple[str, str]:
    """The API token and where it came from (for the ready line; never the token itself)."""
    if config.api_token is not None:
        return config.api_token, "TOKENMETER_API_TOKEN"
    token, path = load_or_create_api_token(config.token_dir)
    return token, str(path)


def otlp_token(config: ServeConfig) -> tuple[str | None, str | None]:
    """The token the OTLP receivers require and where it came from (None: no token, loopback only).

    On loopback every local process may report usage (the default, so apps work unconfigured on one
    machine); beyond it, serve never listens without a token: it makes one unless one is set.
    """
    if config.otlp_token is not None:
        return config.otlp_token, "TOKENMETER_OTLP_TOKEN"
    if is_loopback_address(config.host):
        return None, None
    token, path = load_or_create_token(otlp_token_path(config.token_dir))
    return token, str(path)


def say_otlp_token(config: ServeConfig, source: str | None, progress: Callable[[str], None]) -> None:
    if source is None:
        progress("OTLP receivers take no token: any process on this machine can report usage (docs/serve.md, "
                 "'Who can write usage'; set TOKENMETER_OTLP_TOKEN to close that)")  # fmt: skip
    elif config.otlp_token is None:
        progress(f"OTLP receivers require the bearer token in {source} (serve listens beyond loopback): "
                 "apps send it with OTEL_EXPORTER_OTLP_HEADERS=authorization=Bearer%20<token>")  # fmt: skip
