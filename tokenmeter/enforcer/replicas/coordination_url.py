"""Where the enforcer replicas share budget headroom: ``TOKENMETER_COORDINATION_URL``.

``zk://host:2181[,host2:2181]/path`` names a ZooKeeper or ClickHouse Keeper ensemble and the node
under which tokenmeter keeps its own (``/tokenmeter`` when the path is empty). A URL that does not
look like that, or a server that cannot be used, is a :class:`CoordinationError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from tokenmeter.errors import TokenmeterError


class CoordinationError(TokenmeterError):
    """The coordination URL is unusable or the server cannot be reached; the message says which."""


@dataclass(frozen=True)
class CoordinationUrl:
    hosts: str  # "h1:2181,h2:2181"
    root: str  # "/tokenmeter"

    @classmethod
    def parse(cls, url: str) -> CoordinationUrl:
        parts = urlsplit(url)
        if parts.scheme != "zk" or not parts.netloc:
            raise CoordinationError(
                f"TOKENMETER_COORDINATION_URL must look like zk://host:2181[,host2:2181]/path, got {url!r}"
            )
        root = parts.path.rstrip("/") or "/tokenmeter"
        return cls(parts.netloc, root)

    def display(self) -> str:
        return f"zk://{self.hosts}{self.root}"
