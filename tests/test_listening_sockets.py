"""The sockets serve and enforcer listen on give every accepted connection TCP_NODELAY.

Regression: sockets made with proto 0 made asyncio skip TCP_NODELAY on accepted
connections, and each keep-alive response waited for the client's delayed ACK (~40 ms):
longer than the in-app quota client's 50 ms budget for a whole check.
"""

from __future__ import annotations

import asyncio
import socket

from tokenmeter.server.listening import bind_socket


def test_accepted_connections_have_nagle_off() -> None:
    listener = bind_socket("127.0.0.1", 0, "a test", "--port")
    assert listener.proto == socket.IPPROTO_TCP
    accepted: list[int] = []

    async def scenario() -> None:
        connected = asyncio.Event()

        def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sock = writer.get_extra_info("socket")
            accepted.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            connected.set()

        server = await asyncio.start_server(on_connection, sock=listener)
        port = listener.getsockname()[1]
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.wait_for(connected.wait(), 10)
        writer.close()
        server.close()
        await server.wait_closed()

    asyncio.run(scenario())
    assert accepted and accepted[0] != 0
