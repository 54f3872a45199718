"""The bearer-token check shared by the OTLP receivers and serve's API (constant-time)."""

from __future__ import annotations

import hmac


class BearerToken:
    """``Authorization: Bearer <token>``; with no token configured every request passes."""

    def __init__(self, token: str | None) -> None:
        self._expected = f"Bearer {token}".encode() if token else None

    def allows(self, authorization: str | bytes | None) -> bool:
        if self._expected is None:
            return True
        given = authorization.encode() if isinstance(authorization, str) else (authorization or b"")
        return hmac.compare_digest(given, self._expected)
