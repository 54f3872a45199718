"""The bearer token `report` and `check` send, where it came from, and what a 401 means for each.

A 401 with no token sent says so and how to send one; a 401 for a token that was sent names
where that token came from, so the operator knows which setting or file is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tokenmeter.errors import TokenmeterError
from tokenmeter.settings import default_api_token_file, get_settings


class TokenFileError(TokenmeterError):
    """A token file that exists but cannot be read; the message names it and the setting to use instead."""


@dataclass(frozen=True)
class SentToken:
    """The token to send and its source (a setting's name or a file); with no token, where it was looked for."""

    value: str | None
    source: str


def api_token(serve_token_file: Path | None = None) -> SentToken:
    """For serve's usage API: TOKENMETER_API_TOKEN, else the token file of the serve found (if
    known), else the one serve writes on this machine by default."""
    return _first_token(("TOKENMETER_API_TOKEN",), serve_token_file)


def enforcer_token(serve_token_file: Path | None = None) -> SentToken:
    """For the enforcer's API: TOKENMETER_ENFORCER_TOKEN, TOKENMETER_API_TOKEN, then the files as above."""
    return _first_token(("TOKENMETER_ENFORCER_TOKEN", "TOKENMETER_API_TOKEN"), serve_token_file)


def bearer_headers(token: SentToken) -> dict[str, str]:
    return {"authorization": f"Bearer {token.value}"} if token.value else {}


def refusal(answerer: str, token: SentToken, fix: str) -> str:
    """What a 401 from ``answerer`` means: no token was sent, or the one sent (from its source) is wrong."""
    if token.value is None:
        return f"{answerer} needs a bearer token and none was sent (none in {token.source}): {fix}"
    return f"{answerer} refused the token: {fix}; the token sent came from {token.source}"


def _first_token(settings_names: tuple[str, ...], serve_token_file: Path | None) -> SentToken:
    settings = get_settings()
    for name in settings_names:
        secret = getattr(settings, name.removeprefix("TOKENMETER_").lower())
        if secret is not None:
            return SentToken(secret.get_secret_value(), name)
    files = list(dict.fromkeys(p for p in (serve_token_file, default_api_token_file()) if p is not None))
    for path in files:
        try:
            value = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise TokenFileError(
                f"cannot read the API token file {path}: {exc.strerror}; set {settings_names[0]} instead"
            ) from None
        if value:
            return SentToken(value, str(path))
    return SentToken(None, ", ".join([*settings_names, *map(str, files)]))
