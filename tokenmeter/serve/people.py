"""Who is acting on serve's API: a person, with their SSO groups, from the request.

serve's API token (``Authorization: Bearer``) says a caller may use the API at all; it is shared, so it
never says who is acting. Actions that a person takes (a top-up request, an approval) need the person,
from one of the two sources the instrumentation's identity middleware believes
(:mod:`tokenmeter.instrumentation.identity`), with the same TOKENMETER_* settings:

1. a JWT in ``X-Tokenmeter-JWT`` (``Authorization`` carries the API token), verified with
   TOKENMETER_JWT_SECRET (HS*) or TOKENMETER_JWT_PUBLIC_KEY (RS*, ES*, ...) for TOKENMETER_JWT_ALGORITHMS and
   TOKENMETER_JWT_AUDIENCE; believed from any peer. The name is the TOKENMETER_JWT_USER_CLAIM claim, the groups
   the entries of the TOKENMETER_JWT_DEPARTMENT_CLAIM claim and of a ``groups`` claim;
2. the identity headers an authenticating proxy sets (TOKENMETER_USER_HEADER, and the groups as a comma list in
   TOKENMETER_DEPARTMENT_HEADER: ``X-Forwarded-User``, ``X-Forwarded-Groups`` by default), believed only from a
   peer in TOKENMETER_TRUSTED_PROXIES.

The rules are those of the app's identity middleware, from one place: :mod:`tokenmeter.identity_proofs`.
A header sent with different values is not believed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final

from starlette.datastructures import Headers

from tokenmeter.identity_proofs import claim, header_map, is_trusted_peer, single_value, verified_claims
from tokenmeter.settings import Settings

logger = logging.getLogger(__name__)

JWT_HEADER: Final = "X-Tokenmeter-JWT"
GROUPS_CLAIM: Final = "groups"
HOW_TO_SEND_A_PERSON: Final = (
    f"this needs the person acting, not only the API token: send their JWT in {JWT_HEADER} (verified with "
    "TOKENMETER_JWT_SECRET or TOKENMETER_JWT_PUBLIC_KEY), or call through an authenticating proxy in "
    "TOKENMETER_TRUSTED_PROXIES that sets the user and groups headers (X-Forwarded-User, X-Forwarded-Groups)"
)


@dataclass(frozen=True, slots=True)
class Person:
    name: str
    groups: tuple[str, ...]
    source: str  # "jwt" or "proxy headers"


def person_of(headers: Headers, client_host: str | None, settings: Settings) -> Person | None:
    """The person acting, from a verified JWT, else from a trusted proxy's headers; None when neither says."""
    names = header_map(headers.raw)  # the raw bytes: proxies send non-ASCII names (研发部) as UTF-8
    token = single_value(names, JWT_HEADER)
    claims = verified_claims(token.removeprefix("Bearer ").strip(), settings) if token else None
    if claims is not None:
        name = _text(claim(claims, settings.jwt_user_claim))
        if name:
            groups = _entries(claim(claims, settings.jwt_department_claim)) + _entries(claims.get(GROUPS_CLAIM))
            return Person(name, tuple(dict.fromkeys(groups)), "jwt")
    if not is_trusted_peer(client_host, settings.trusted_proxies):
        return None
    name = next(filter(None, (single_value(names, header) for header in settings.user_header)), None)
    if name is None:
        return None
    groups = next(filter(None, (single_value(names, header) for header in settings.department_header)), None)
    return Person(name, tuple(dict.fromkeys(_entries(groups))), "proxy headers")


def _text(value: object) -> str | None:
    return value.strip() or None if isinstance(value, str) else None


def _entries(value: object) -> list[str]:
    """A group claim or header as its entries: a list, or a comma list ``"a,b"``."""
    if isinstance(value, str):
        return [entry.strip() for entry in value.split(",") if entry.strip()]
    if isinstance(value, list | tuple):
        return [entry.strip() for entry in value if isinstance(entry, str) and entry.strip()]
    return []
