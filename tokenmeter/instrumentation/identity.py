"""Who sent an HTTP request, from its headers: the identity middleware's pure core.

Three sources, merged field by field, the first one that has a field winning:

1. a verified JWT in ``Authorization: Bearer`` (believed from any peer, since
   only the key holder can sign it), when a JWT secret or public key is set;
2. the configured identity headers (``X-Forwarded-User`` ...), set by an
   authenticating proxy and believed only from a trusted peer;
3. W3C ``baggage`` sent by an upstream tokenmeter process, also believed only
   from a trusted peer.

Nothing here raises for bad input: a bad token, header or setting means that
source gives no identity, and the request goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Final

from opentelemetry import baggage as otel_baggage
from opentelemetry import propagate
from opentelemetry.context import Context

from tokenmeter.identity_proofs import HeaderSource, claim, header_map, is_trusted_peer, single_value, verified_claims
from tokenmeter.instrumentation.attribution import Attribution, sanitize
from tokenmeter.log_once import LogOnce
from tokenmeter.settings import Settings

__all__ = [
    "HeaderSource",
    "baggage_identity",
    "first_group",
    "header_identity",
    "header_map",
    "incoming_context",
    "is_trusted_peer",
    "jwt_identity",
    "resolve_identity",
    "single_value",
]

logger = logging.getLogger(__name__)


_EMPTY: Final = Attribution()
_BAGGAGE_HEADER: Final = "baggage"
_lasting_problems = LogOnce(logger)


def _warn_once(key: str, message: str, *args: object) -> None:
    """A warning for a lasting problem (a setting, a missing package), logged once per process."""
    _lasting_problems.warning(key, message, *args, exc_info=True)


def resolve_identity(headers: HeaderSource, client_host: str | None, settings: Settings) -> Attribution:
    """The identity a request carries, from the sources its peer may be believed for."""
    names = header_map(headers)
    found = _EMPTY
    if is_trusted_peer(client_host, settings.trusted_proxies):
        found = baggage_identity(names).merged(header_identity(names, settings))
    return found.merged(jwt_identity(single_value(names, "authorization"), settings))


def first_group(value: str | None) -> str | None:
    """The first entry of a group list such as ``"a,b"``; ``"/org/dept"`` stays whole."""
    if value is None:
        return None
    for entry in value.split(","):
        if entry.strip():
            return entry.strip()
    return None


def _first_header(names: Mapping[str, list[str]], candidates: Iterable[str]) -> str | None:
    for candidate in candidates:
        value = sanitize(single_value(names, candidate))
        if value is not None:
            return value
    return None


def header_identity(names: Mapping[str, list[str]], settings: Settings) -> Attribution:
    """The identity in the configured headers (first present name of each list wins)."""
    return Attribution(
        user=_first_header(names, settings.user_header),
        department=first_group(_first_header(names, settings.department_header)),
        app=_first_header(names, settings.app_header),
        session=_first_header(names, settings.session_header),
    )


def _carrier(names: Mapping[str, list[str]]) -> dict[str, str]:
    """Header map -> propagator carrier; several ``baggage`` headers join into one list (W3C)."""
    carrier: dict[str, str] = {}
    for name, values in names.items():
        if name == _BAGGAGE_HEADER:
            carrier[name] = ",".join(values)
        elif values:
            carrier[name] = values[0]
    return carrier


def incoming_context(names: Mapping[str, list[str]], base: Context | None = None) -> Context:
    """``base`` (default: the current context) with the request's trace context and baggage,
    as the global propagator (``OTEL_PROPAGATORS``) reads them."""
    return propagate.extract(_carrier(names), context=base)


def baggage_identity(names: Mapping[str, list[str]]) -> Attribution:
    """The attribution in the request's W3C ``baggage`` header."""
    try:
        extracted = incoming_context(names, Context())
    except Exception:  # a third-party propagator failing must not cost the other sources
        _warn_once("propagator", "tokenmeter: the global propagator failed to read a request's headers")
        return _EMPTY
    return Attribution.from_baggage(otel_baggage.get_all(extracted))


# --- JWT -------------------------------------------------------------------------


def _claim_text(value: object) -> str | None:
    """A claim as an attribution value: a list's first usable entry (``groups``); objects give none."""
    if isinstance(value, list | tuple):
        return next((text for entry in value if (text := _claim_text(entry)) is not None), None)
    if isinstance(value, Mapping | bool):
        return None
    return sanitize(value)


def _bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def jwt_identity(authorization: str | None, settings: Settings) -> Attribution:
    """User and department from a verified ``Authorization: Bearer`` JWT; empty if it does not verify.

    Off unless TOKENMETER_JWT_SECRET (HS*) or TOKENMETER_JWT_PUBLIC_KEY (RS*, ES*, PS*, EdDSA) is set.
    """
    if settings.jwt_secret is None and not settings.jwt_public_key:
        return _EMPTY
    token = _bearer_token(authorization)
    claims = verified_claims(token, settings) if token else None
    if claims is None:
        return _EMPTY
    return Attribution(
        user=_claim_text(claim(claims, settings.jwt_user_claim)),
        department=_claim_text(claim(claims, settings.jwt_department_claim)),
    )
