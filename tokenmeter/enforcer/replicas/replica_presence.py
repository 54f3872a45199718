"""Which other enforcers use this store, from the heartbeats each writes to ``enforcer_replicas``.

Enforcer replicas on one store must share budget headroom through a coordination server
(``TOKENMETER_COORDINATION_URL``): alone, each admits the whole budget before usage reaches the
store, so N replicas can pass a budget N times over. Nothing can stop an operator from starting
a second enforcer, but it must never be silently wrong: an enforcer that sees another one
without the same coordination says so in its log, in ``/healthz`` (``warnings``) and in
``/metrics``.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

from tokenmeter.log_once import LogOnce

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

logger = logging.getLogger(__name__)

SEEN_WITHIN_SECONDS: Final = 90  # three heartbeats
_OTHERS_SQL: Final = """
SELECT replica, any(host), any(pid), argMax(coordination, seen_at)
FROM enforcer_replicas
WHERE seen_at > now64(3) - toIntervalSecond({seconds:UInt32}) AND replica != {replica:String}
GROUP BY replica
ORDER BY replica
"""


def own_replica_id() -> str:
    """Unique among the enforcers of a store: several may run on one host."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class OtherReplica:
    replica: str
    host: str
    pid: int
    coordination: str  # "" when it shares headroom with nobody


class ReplicaPresence:
    def __init__(self, replica: str, coordination: str | None) -> None:
        self.replica = replica
        self.coordination = coordination or ""
        self.warnings: list[str] = []
        self.others: list[OtherReplica] = []
        self._warned = LogOnce(logger)

    def beat(self, client: Client) -> None:
        """Write this enforcer's heartbeat and look at the others' (on the refresh thread)."""
        now = datetime.now(UTC).replace(tzinfo=None)
        client.insert("enforcer_replicas", [[self.replica, socket.gethostname(), os.getpid(), self.coordination, now]],
                      column_names=["replica", "host", "pid", "coordination", "seen_at"])  # fmt: skip
        rows = client.query(_OTHERS_SQL, parameters={"replica": self.replica, "seconds": SEEN_WITHIN_SECONDS}
                            ).result_rows  # fmt: skip
        self.others = [OtherReplica(str(r), str(h), int(p), str(c)) for r, h, p, c in rows]
        uncoordinated = [other for other in self.others if not self.coordination or other.coordination !=
                         self.coordination]  # fmt: skip
        self.warnings = [self._warning(other) for other in uncoordinated]
        for other, warning in zip(uncoordinated, self.warnings, strict=True):
            self._warned.log(other.replica, logging.ERROR, "tokenmeter: %s", warning)

    def _warning(self, other: OtherReplica) -> str:
        theirs = other.coordination or "none"
        ours = self.coordination or "none"
        return (f"another enforcer uses this store (replica {other.replica}, host {other.host}, pid {other.pid}) "
                f"without sharing budget headroom with this one (coordination: theirs {theirs}, ours {ours}): each "
                "admits the whole budget, so budgets can be passed several times over; set the same "
                "TOKENMETER_COORDINATION_URL on every replica (docs/quotas.md)")  # fmt: skip
