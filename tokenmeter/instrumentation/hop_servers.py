"""Your own services that forward LLM calls (Chatchat's ``/v1`` routes): calls to them are hops.

An app that calls its own OpenAI-compatible endpoint (Chatchat's agent calls Chatchat's
``/v1/chat/completions`` on loopback, which calls the model platform) would otherwise be
metered twice: once at the hop, once at the forwarded call. A hop keeps its span
(``tokenmeter.hop=true``) but adds nothing to the usage counters and is not checked
against quotas; the forwarded call, attributed through the baggage the hop carries, is
the one billed and checked.

Servers come from ``TOKENMETER_HOP_SERVERS`` (``host:port``, comma-separated) and from
integrations that know their own address (the Chatchat integration adds its API server).
Loopback names are one host: ``localhost:7861`` also matches ``127.0.0.1:7861``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from tokenmeter.instrumentation.propagation import is_loopback_host
from tokenmeter.settings import split_hop_server

_LOOPBACK = "loopback"


def _key(host: str, port: int | None) -> tuple[str, int | None]:
    host = host.strip().strip("[]").lower()
    return (_LOOPBACK if is_loopback_host(host) or host == "0.0.0.0" else host), port  # noqa: S104 - a name, not a bind


def parse_server(text: str) -> tuple[str, int | None]:
    """``host:port`` (or ``[::1]:port``, or a bare host: any port), as compared; raises ValueError."""
    return _key(*split_hop_server(text))


class HopServers:
    def __init__(self, servers: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._servers = {parse_server(server) for server in servers}

    def add(self, host: str, port: int | None) -> None:
        with self._lock:
            self._servers = {*self._servers, _key(host, port)}

    def add_all(self, servers: Iterable[str]) -> HopServers:
        """Add ``host:port`` entries (TOKENMETER_HOP_SERVERS); returns self."""
        parsed = {parse_server(server) for server in servers}
        with self._lock:
            self._servers = self._servers | parsed
        return self

    def __contains__(self, server: tuple[str | None, int | None]) -> bool:
        host, port = server
        if not host or not self._servers:
            return False
        key = _key(host, port)
        return key in self._servers or (key[0], None) in self._servers

    def __bool__(self) -> bool:
        return bool(self._servers)


# The process's hop servers: the settings' and those integrations add (Chatchat's API).
PROCESS_HOP_SERVERS = HopServers()
