"""The test ZooKeeper server works, and the facts the enforcer's budget leases rely on hold on it.

Checked with kazoo against a real server (the `zookeeper` fixture; Debian's `zookeeper` package):
versioned compare-and-set, an all-or-nothing multi-op transaction, an ephemeral node that goes
away when its owner's session expires, and a children watch that fires when it does. The owner
that dies is a separate process killed with SIGKILL, as a crashed enforcer replica would be: it
cannot close its session, so only expiry removes its node. Waits have generous deadlines; no
assertion is on a timing.
"""

from __future__ import annotations

import json
import queue
import selectors
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError
from kazoo.protocol.states import EventType, WatchedEvent
from waiting import wait_for
from zookeeper_server import ZooKeeperServer

DEADLINE = 60.0  # seconds; a 2 s session expires long before this on any host
HOLDER_SESSION_TIMEOUT = 2.0  # what the killed holder asks for; the server grants 1-20 s

# A process that creates an ephemeral node, says which session owns it, and waits to be killed.
HOLDER = """
import json, sys, time
from kazoo.client import KazooClient
hosts, path, session_timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
client = KazooClient(hosts=hosts, timeout=session_timeout)
client.start(timeout=30)
client.create(path, b"lease", ephemeral=True, makepath=True)
print(json.dumps({"session_id": client.client_id[0]}), flush=True)
time.sleep(3600)
"""


@pytest.fixture
def client(zookeeper: ZooKeeperServer) -> Iterator[KazooClient]:
    """A connected client whose root is a fresh path of this test's own."""
    yield from _client(zookeeper, f"/test-{uuid.uuid4().hex}")


@pytest.fixture
def other_client(zookeeper: ZooKeeperServer, client: KazooClient) -> Iterator[KazooClient]:
    """A second session on the same root, as a second enforcer replica would have."""
    assert client.chroot
    yield from _client(zookeeper, client.chroot)


def _client(zookeeper: ZooKeeperServer, root: str) -> Iterator[KazooClient]:
    setup = KazooClient(hosts=zookeeper.hosts)
    setup.start(timeout=30)
    setup.ensure_path(root)
    setup.stop()
    setup.close()
    client = KazooClient(hosts=zookeeper.hosts + root)
    client.start(timeout=30)
    try:
        yield client
    finally:
        client.stop()
        client.close()


class Holder:
    """A separate process owning an ephemeral node at ``path`` (under the client's root)."""

    def __init__(self, zookeeper: ZooKeeperServer, client: KazooClient, path: str) -> None:
        args = [sys.executable, "-c", HOLDER, zookeeper.hosts + (client.chroot or ""), path,
                str(HOLDER_SESSION_TIMEOUT)]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        # A selector, not select.select(): late in a long test session this process's descriptors pass 1023.
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            ready = selector.select(DEADLINE)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            self.kill()
            stderr = self.process.stderr.read() if self.process.stderr else ""
            pytest.fail(f"the holder process did not create {path}: {stderr}\n{zookeeper.log_tail()}")
        self.session_id = int(json.loads(line)["session_id"])

    def kill(self) -> None:
        """SIGKILL: the process cannot close its session; the server only sees the socket drop."""
        self.process.kill()
        self.process.wait(30)


@pytest.fixture
def holders(zookeeper: ZooKeeperServer) -> Iterator[list[Holder]]:
    started: list[Holder] = []
    yield started
    for holder in started:
        holder.kill()
        if holder.process.stderr:
            holder.process.stderr.close()
        if holder.process.stdout:
            holder.process.stdout.close()


def test_the_server_serves_standalone_on_loopback(zookeeper: ZooKeeperServer, client: KazooClient) -> None:
    assert zookeeper.hosts == f"127.0.0.1:{zookeeper.port}"
    assert zookeeper.url("/tokenmeter") == f"zk://127.0.0.1:{zookeeper.port}/tokenmeter"
    assert zookeeper.url("tokenmeter/leases") == f"zk://127.0.0.1:{zookeeper.port}/tokenmeter/leases"
    assert zookeeper.four_letter_word("ruok") == "imok"
    assert "Mode: standalone" in zookeeper.four_letter_word("srvr")
    client.create("/hello", b"world")
    assert client.get("/hello")[0] == b"world"


def test_a_stale_version_loses_the_compare_and_set(client: KazooClient, other_client: KazooClient) -> None:
    client.create("/headroom", b"1000")
    _, seen_by_first = client.get("/headroom")
    _, seen_by_second = other_client.get("/headroom")
    assert seen_by_first.version == seen_by_second.version

    written = client.set("/headroom", b"900", version=seen_by_first.version)
    assert written.version == seen_by_first.version + 1
    with pytest.raises(BadVersionError):
        other_client.set("/headroom", b"800", version=seen_by_second.version)
    assert other_client.get("/headroom")[0] == b"900"

    # the loser reads again and retries with the version it now sees
    data, seen_again = other_client.get("/headroom")
    other_client.set("/headroom", str(int(data) - 100).encode(), version=seen_again.version)
    assert client.get("/headroom")[0] == b"800"


def test_a_transaction_commits_all_of_its_operations_or_none(client: KazooClient) -> None:
    client.create("/budget", b"limit=10000")
    client.create("/leases", b"0")
    _, budget = client.get("/budget")
    _, leases = client.get("/leases")
    client.set("/budget", b"limit=5000", version=budget.version)  # the budget changed after it was read

    stale = client.transaction()
    stale.check("/budget", budget.version)
    stale.set_data("/leases", b"1000", version=leases.version)
    results = stale.commit()  # kazoo returns the failures as values; it does not raise
    assert isinstance(results[0], BadVersionError)
    assert all(isinstance(result, Exception) for result in results)
    assert client.get("/leases") == (b"0", leases)  # nothing applied: same data, same version

    _, budget = client.get("/budget")
    fresh = client.transaction()
    fresh.check("/budget", budget.version)
    fresh.set_data("/leases", b"1000", version=leases.version)
    results = fresh.commit()
    assert not any(isinstance(result, Exception) for result in results), results
    data, after = client.get("/leases")
    assert (data, after.version) == (b"1000", leases.version + 1)


def test_an_ephemeral_node_goes_away_when_its_owners_session_expires(
    zookeeper: ZooKeeperServer, client: KazooClient, holders: list[Holder]
) -> None:
    holders.append(holder := Holder(zookeeper, client, "/leases/replica-a"))
    _, stat = client.get("/leases/replica-a")
    assert stat.ephemeralOwner == holder.session_id
    assert stat.ephemeralOwner != client.client_id[0]

    holder.kill()
    assert wait_for(lambda: client.exists("/leases/replica-a") is None, timeout=DEADLINE), (
        f"the killed holder's ephemeral node outlived its session:\n{zookeeper.log_tail()}"
    )
    assert client.exists("/leases") is not None  # only the ephemeral node went


def test_a_children_watch_fires_when_an_ephemeral_child_goes_away(
    zookeeper: ZooKeeperServer, client: KazooClient, holders: list[Holder]
) -> None:
    holders.append(dying := Holder(zookeeper, client, "/leases/replica-a"))
    holders.append(Holder(zookeeper, client, "/leases/replica-b"))
    events: queue.Queue[WatchedEvent] = queue.Queue()
    assert sorted(client.get_children("/leases", watch=events.put)) == ["replica-a", "replica-b"]

    dying.kill()
    try:
        event = events.get(timeout=DEADLINE)
    except queue.Empty:
        pytest.fail(f"no children watch event after the holder was killed:\n{zookeeper.log_tail()}")
    assert event.type == EventType.CHILD
    assert event.path == "/leases"
    assert client.get_children("/leases") == ["replica-b"]
