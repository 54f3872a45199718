"""Listening for tokenmeter's servers (serve, `tokenmeter enforcer`): sockets bound before anything
runs, so a port in use is one clear error, and uvicorn set up the same way for each HTTP app."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING

from tokenmeter.errors import TokenmeterError
from tokenmeter.server.body_deadline import DEFAULT_BODY_TIMEOUT_SECONDS, BodyDeadline

if TYPE_CHECKING:
    import uvicorn


class ServerStartError(TokenmeterError):
    """A server cannot start (a port in use, a store not migrated); the message names the fix."""


def is_loopback_address(host: str) -> bool:
    """Only this machine can connect: 127.0.0.0/8, ::1, localhost (0.0.0.0 and :: are every interface)."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def bind_socket(host: str, port: int, what: str, flag: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP, not 0: asyncio turns Nagle off (TCP_NODELAY) only on connections
    # whose socket says TCP; with proto 0 every keep-alive response waited ~40 ms for a
    # delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ServerStartError(
            f"cannot listen for {what} on {host}:{port}: {exc.strerror}; choose another port with {flag}"
        ) from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def socket_address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def quiet_uvicorn_server(app: object, body_timeout: float = DEFAULT_BODY_TIMEOUT_SECONDS) -> uvicorn.Server:
    """uvicorn for one of serve's (or the enforcer's) apps: quiet, and request bodies due within ``body_timeout``."""
    import uvicorn

    class _Server(uvicorn.Server):
        # serve handles the signals for all its servers at once.
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    config = uvicorn.Config(
        BodyDeadline(app, body_timeout),  # type: ignore[arg-type]
        log_level="warning",
        access_log=False,
        lifespan="off",
        http="httptools",
        timeout_graceful_shutdown=10,
    )
    server = _Server(config)
    return server
