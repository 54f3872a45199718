"""serve's three servers on the sockets bound at start-up: OTLP/gRPC, OTLP/HTTP, and the API with the page.

Every socket is bound before anything runs, so a port in use is one clear error; ports
given as 0 are picked by the OS and read back from the sockets for the ready line.
"""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING

from tokenmeter.collector.counter_guard import CounterGuard
from tokenmeter.collector.grpc_receiver import otlp_grpc_server
from tokenmeter.collector.http_receiver import otlp_http_app
from tokenmeter.serve.api import api_app
from tokenmeter.serve.backend import Backend
from tokenmeter.serve.config import ServeConfig
from tokenmeter.server.listening import ServerStartError, bind_socket, quiet_uvicorn_server, socket_address

if TYPE_CHECKING:
    import grpc
    import uvicorn


def bind_sockets(config: ServeConfig) -> dict[str, socket.socket]:
    """The listening sockets by server ("grpc", "http", "api"); ServerStartError names a port in use."""
    return {
        "grpc": bind_socket(config.host, config.otlp_grpc_port, "OTLP/gRPC", "--otlp-grpc-port"),
        "http": bind_socket(config.host, config.otlp_http_port, "OTLP/HTTP", "--otlp-http-port"),
        "api": bind_socket(config.host, config.api_port, "the API", "--api-port"),
    }


class Servers:
    """The running servers: gRPC on its own, the two uvicorn servers as tasks on the event loop."""

    def __init__(
        self,
        grpc_server: grpc.aio.Server,
        grpc_address: str,
        http_server: uvicorn.Server,
        api_server: uvicorn.Server,
        sockets: dict[str, socket.socket],
    ) -> None:
        self._grpc_server = grpc_server
        self._grpc_address = grpc_address
        self._http_server = http_server
        self._api_server = api_server
        self._sockets = sockets
        self.tasks = [
            asyncio.create_task(http_server.serve(sockets=[sockets["http"]])),
            asyncio.create_task(api_server.serve(sockets=[sockets["api"]])),
        ]

    @classmethod
    async def start(
        cls,
        config: ServeConfig,
        backend: Backend,
        api_token: str,
        otlp_token: str | None,
        sockets: dict[str, socket.socket],
    ) -> Servers:
        """gRPC started; the uvicorn servers' tasks created (:meth:`wait_started` waits for them to listen)."""
        queue = backend.queue
        guard = CounterGuard()  # one for both transports: a series is screened alike on either
        grpc_server = otlp_grpc_server(queue, token=otlp_token, max_request_bytes=config.max_request_bytes, guard=guard,
                                       max_connection_age=config.grpc_max_connection_age,
                                       connection_grace=config.body_timeout)  # fmt: skip
        grpc_address = await _start_grpc(grpc_server, sockets.pop("grpc"))
        http_server = quiet_uvicorn_server(
            otlp_http_app(queue, token=otlp_token, max_request_bytes=config.max_request_bytes, guard=guard),
            config.body_timeout,
        )
        api_server = quiet_uvicorn_server(
            api_app(
                queue=queue,
                reader=backend.reader,
                api_token=api_token,
                store_display=backend.location.display,
                enforcer=backend.enforcer,
                enforcer_token=config.enforcer_token,
            ),
            config.body_timeout,
        )
        return cls(grpc_server, grpc_address, http_server, api_server, sockets)

    async def wait_started(self) -> None:
        """Until both uvicorn servers listen, or one of them has ended (it could not start)."""
        while not (self._http_server.started and self._api_server.started) and not self._any_ended():
            await asyncio.sleep(0.01)

    def _any_ended(self) -> bool:
        return any(task.done() for task in self.tasks)

    def addresses(self) -> dict[str, str]:
        """The bound addresses, as the ready line names them."""
        return {
            "otlp_grpc": self._grpc_address,
            "otlp_http": f"http://{socket_address(self._sockets['http'])}",
            "api": f"http://{socket_address(self._sockets['api'])}",
        }

    async def stop(self) -> None:
        """Stop taking requests; those in flight finish (they wait for their writes). Returns when all ended."""
        await self._grpc_server.stop(grace=10)
        self._http_server.should_exit = True
        self._api_server.should_exit = True
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def _start_grpc(server: grpc.aio.Server, probe: socket.socket) -> str:
    # grpc binds by address; the probe socket proved the port free (and picked one for port 0).
    address = socket_address(probe)
    probe.close()
    port = server.add_insecure_port(address)
    if port == 0:
        raise ServerStartError(f"cannot listen for OTLP/gRPC on {address}; choose another port with --otlp-grpc-port")
    await server.start()
    return f"{address.rsplit(':', 1)[0]}:{port}"
