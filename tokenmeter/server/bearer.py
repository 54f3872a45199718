"""The bearer-token check shared by the OTLP receivers and serve's API (constant-time)."""

from __future__ import annotations

import hmac


class BearerToken:
    """``Authorization: Bearer <token>`` for any of the tokens; with none configured every request passes."""

    def __init__(self, *tokens: str | None) -> None:
        self._expected = [f"Bearer {token}".encode() for token in tokens if token]

    def allows(self, authorization: str | bytes | None) -> bool:
        if not self._expected:
            return True
        given = authorization.encode() if isinstance(authorization, str) else (authorization or b"")
        # every token compared, so the time taken does not tell which one nearly matched
        return sum(hmac.compare_digest(given, expected) for expected in self._expected) > 0
