"""Proofs of who sent an HTTP request, shared by the app side and serve: identity headers believed only
from trusted peers, and JWTs verified against the configured key.

The rules live here once: the app's identity middleware (:mod:`tokenmeter.instrumentation.identity`)
attributes calls with them, and serve's API (:mod:`tokenmeter.serve.people`) names the person acting.
Nothing here raises for bad input: a bad token, header or setting proves nothing.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TypeAlias

from tokenmeter.log_once import LogOnce
from tokenmeter.settings import Settings

logger = logging.getLogger(__name__)

# ASGI's raw header list, or a plain name -> value mapping (any case).
HeaderSource: TypeAlias = Mapping[str, str] | Iterable[tuple[bytes, bytes]]
_HMAC_PREFIX: Final = "HS"
_lasting_problems = LogOnce(logger)


def _warn_once(key: str, message: str, *args: object) -> None:
    """A warning for a lasting problem (a setting, a missing package), logged once per process."""
    _lasting_problems.warning(key, message, *args, exc_info=True)


def decode_header(raw: bytes | str) -> str:
    if isinstance(raw, str):
        return raw
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")  # what ASGI servers pass through; never fails


def header_map(headers: HeaderSource) -> dict[str, list[str]]:
    """Lower-cased header name -> its values in order (a name may be sent more than once).

    Bytes are read as UTF-8 (how proxies send non-ASCII ids), else Latin-1.
    """
    items: Iterable[tuple[bytes | str, bytes | str]] = headers.items() if isinstance(headers, Mapping) else headers
    found: dict[str, list[str]] = {}
    for raw_name, raw_value in items:
        found.setdefault(decode_header(raw_name).strip().lower(), []).append(decode_header(raw_value))
    return found


def single_value(names: Mapping[str, list[str]], name: str) -> str | None:
    """The value of header ``name``, stripped; ``None`` if absent, empty, or sent with different values.

    Different values for one identity header are ambiguous (a client's forged header
    beside the proxy's), so none of them is believed.
    """
    values = {value.strip() for value in names.get(name.strip().lower(), ()) if value.strip()}
    if len(values) > 1:
        logger.debug("tokenmeter: header %s sent with %d different values; not believed", name, len(values))
        return None
    return values.pop() if values else None


@functools.lru_cache(maxsize=32)
def _trusted_networks(
    entries: tuple[str, ...],
) -> tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...], bool]:
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    trust_all = False
    for entry in entries:
        text = entry.strip()
        if text == "*":
            trust_all = True
            continue
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            logger.warning(
                "tokenmeter: TOKENMETER_TRUSTED_PROXIES entry %r is not an IP address or CIDR network "
                "(write e.g. 10.0.0.0/8, ::1 or *); ignored",
                text,
            )
    return tuple(networks), trust_all


def is_trusted_peer(client_host: str | None, trusted_proxies: Sequence[str]) -> bool:
    """Whether the peer is one of TOKENMETER_TRUSTED_PROXIES (``*`` trusts every peer)."""
    networks, trust_all = _trusted_networks(tuple(trusted_proxies))
    if trust_all:
        return True
    if not client_host:
        return False
    try:
        address = ipaddress.ip_address(client_host.strip().strip("[]"))
    except ValueError:
        return False  # a unix socket path, Starlette's "testclient", ...
    candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [address]
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        candidates.append(address.ipv4_mapped)
    return any(candidate in network for candidate in candidates for network in networks)


@functools.lru_cache(maxsize=4)
def _public_key(setting: str) -> str | None:
    """TOKENMETER_JWT_PUBLIC_KEY as PEM text: given inline (``\\n`` escapes allowed) or as a file path."""
    text = setting.strip()
    if "-----BEGIN" in text:
        return text.replace("\\n", "\n") if "\n" not in text else text
    try:
        return Path(text).expanduser().read_text(encoding="utf-8")
    except OSError:
        _warn_once(
            f"jwt-public-key:{text}",
            "tokenmeter: TOKENMETER_JWT_PUBLIC_KEY is neither a PEM key nor a readable file (%s); JWT identity is off",
            text[:80],
        )
        return None


def _key_for(algorithm: object, settings: Settings) -> str | None:
    """The configured key for a token signed with ``algorithm``; HMAC keys never verify RSA/EC ones."""
    if not isinstance(algorithm, str):
        return None
    if algorithm.startswith(_HMAC_PREFIX):
        return settings.jwt_secret.get_secret_value() if settings.jwt_secret is not None else None
    return _public_key(settings.jwt_public_key) if settings.jwt_public_key else None


def claim(claims: Mapping[str, Any], name: str) -> object:
    """A claim by name, or by dotted path into nested objects (``realm_access.department``)."""
    if name in claims:
        return claims[name]
    node: object = claims
    for part in name.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def verified_claims(token: str, settings: Settings) -> Mapping[str, Any] | None:
    """The token's claims if it verifies against the configured key, else ``None`` (logged at debug)."""
    try:
        import jwt
    except ImportError:
        _warn_once("jwt-import", "tokenmeter: a JWT key is set but PyJWT is missing; install tokenmeter-otel[jwt]")
        return None
    allowed = [name for name in settings.jwt_algorithms if name.lower() != "none"]
    try:
        algorithm = jwt.get_unverified_header(token).get("alg")
        key = _key_for(algorithm, settings) if algorithm in allowed else None
        if key is None:
            logger.debug("tokenmeter: no key configured for a JWT signed with %r; ignored", algorithm)
            return None
        claims: Mapping[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[algorithm],
            audience=settings.jwt_audience,
            options={"verify_aud": settings.jwt_audience is not None},
        )
    except jwt.InvalidTokenError as error:
        logger.debug("tokenmeter: JWT not verified (%s); ignored", error)
        return None
    except Exception:  # a key that cannot be loaded, an algorithm the key does not fit
        _warn_once(
            "jwt-key",
            "tokenmeter: JWT verification failed; check TOKENMETER_JWT_PUBLIC_KEY / TOKENMETER_JWT_SECRET "
            "and TOKENMETER_JWT_ALGORITHMS",
        )
        return None
    return claims
