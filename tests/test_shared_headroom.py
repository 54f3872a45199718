"""Two in-process enforcer replicas sharing headroom through a real ZooKeeper server: what a refusal
costs, and what is left behind on the server.

The replicas are `Enforcer`s with real `Coordinator`s on the session's ZooKeeper server; their
stores are empty (no usage yet), so the leases are the only thing that fills the budget. The
coordinator of the refusing replica counts its fresh reads of what the others hold (a subclass
that counts, the reads themselves are real).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from decimal import ROUND_DOWN, Decimal

import pytest
from zookeeper_server import ZooKeeperServer

from tokenmeter.enforcer.admission import Enforcer
from tokenmeter.enforcer.decision import CheckRequest, Usage
from tokenmeter.enforcer.policy import parse_policy
from tokenmeter.enforcer.replicas.coordination import KEEP_SECONDS, CoordinationUrl, Coordinator, LeaseKey
from tokenmeter.enforcer.replicas.shared_headroom import RECHECK_AFTER_SECONDS, SharedHeadroom

LIMIT = 10_000
POLICY = parse_policy(f"""
timezone: UTC
budgets:
  - {{name: per-user, scope: user, period: day, limit: {{tokens: {LIMIT}}}, action: deny}}
""")
CALL = CheckRequest(user="alice", department="ops", app="kb", model="qwen2.5-7b-instruct", input_tokens=900,
                    max_output_tokens=100)  # fmt: skip

pytest.importorskip("kazoo", reason="the coordination extra (kazoo) is not installed")


class CountingCoordinator(Coordinator):
    def __init__(self, url: str) -> None:
        super().__init__(url, settle_seconds=60)
        self.fresh_reads = 0

    def others(self, key: LeaseKey) -> Usage:
        self.fresh_reads += 1
        return super().others(key)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def replicas(zookeeper: ZooKeeperServer) -> Iterator[tuple[Enforcer, Enforcer, Clock]]:
    url = zookeeper.url(f"headroom-{secrets.token_hex(4)}")
    clock = Clock()
    coordinators = [CountingCoordinator(url), CountingCoordinator(url)]
    for coordinator in coordinators:
        coordinator.start()
    try:
        yield (Enforcer(POLICY, headroom=SharedHeadroom(coordinators[0], clock=clock)),
               Enforcer(POLICY, headroom=SharedHeadroom(coordinators[1], clock=clock)), clock)  # fmt: skip
    finally:
        for coordinator in coordinators:
            coordinator.close()


def admitted(enforcer: Enforcer) -> bool:
    result = enforcer.check(CALL)
    assert result is not None
    return result.decision.action == "allow"


def test_a_spent_budget_costs_one_fresh_read_per_interval_not_one_per_check(
    replicas: tuple[Enforcer, Enforcer, Clock],
) -> None:
    first, second, clock = replicas
    assert admitted(first)  # first leases the call and spare room for more: second counts it as held
    while admitted(second):
        pass
    assert second.headroom is not None
    coordinator = second.headroom.coordinator
    assert isinstance(coordinator, CountingCoordinator)
    reads = coordinator.fresh_reads
    # A script hammering the spent budget: refused without a round trip to the coordination server each time.
    assert not any(admitted(second) for _ in range(50))
    assert coordinator.fresh_reads - reads <= 1
    clock.now += RECHECK_AFTER_SECONDS + 0.1
    assert not admitted(second)
    assert coordinator.fresh_reads - reads <= 2


def test_room_another_replica_gave_back_is_seen_after_the_interval(
    replicas: tuple[Enforcer, Enforcer, Clock],
) -> None:
    first, second, clock = replicas
    first_result = first.check(CALL)  # first holds the call and spare room for more
    assert first_result is not None and first_result.reservation_id is not None
    while admitted(second):
        pass
    # first's call ends and its spare goes back (idle long enough): the room is free on the server
    assert first.release(first_result.reservation_id, unused_tokens=CALL.estimated_tokens)
    clock.now += 3600
    first.give_back_headroom()
    # second last read first's lease moments ago; past the interval a refusal reads again and admits
    clock.now += RECHECK_AFTER_SECONDS + 0.1
    assert admitted(second)


def test_lease_nodes_of_past_periods_and_old_departures_are_removed(zookeeper: ZooKeeperServer) -> None:
    from kazoo.client import KazooClient

    url = CoordinationUrl.parse(zookeeper.url(f"tidy-{secrets.token_hex(4)}"))
    coordinator = Coordinator(url.display(), settle_seconds=60)
    coordinator.start()
    client = KazooClient(hosts=url.hosts)
    client.start(timeout=10)
    try:
        now = time.time()
        old, current = int(now - KEEP_SECONDS - 86400), int(now - 86400)
        for period in (old, current):
            client.create(f"{url.root}/leases/{period}/lease", b"{}", makepath=True)
        client.create(f"{url.root}/departed/gone-long-ago", json.dumps({"at": now - KEEP_SECONDS - 1}).encode())
        client.create(f"{url.root}/departed/gone-lately", json.dumps({"at": now - 100}).encode())
        assert coordinator.tidy() == 2
        assert sorted(client.get_children(f"{url.root}/leases")) == [str(current)]
        assert client.get_children(f"{url.root}/departed") == ["gone-lately"]
        client.create(f"{url.root}/leases/{old}/lease", b"{}", makepath=True)
        assert coordinator.tidy() == 0  # at most once per TIDY_EVERY_SECONDS
    finally:
        client.stop()
        client.close()
        coordinator.close()


MIXED_POLICY = parse_policy("""
timezone: UTC
budgets:
  - {name: per-user, scope: user, period: day, limit: {tokens: 1000000, cost: 100, currency: CNY}, action: deny}
  - {name: org-cost, scope: organisation, period: month, limit: {cost: 5000, currency: CNY}, action: deny}
""")


def priced_call(model: str, amount: str, currency: str) -> CheckRequest:
    return CheckRequest(user="alice", department="ops", app="kb", model=model, input_tokens=900, max_output_tokens=100,
                        estimated_costs={model: (Decimal(amount), currency)})  # fmt: skip


def test_a_lease_holds_only_what_its_budget_limits_so_other_currencies_never_grow_it(
    zookeeper: ZooKeeperServer,
) -> None:
    """A user mixing a model priced in USD, one priced in CNY and an unpriced one: the first call's lease takes
    spare room in every dimension its budget limits (tokens, and CNY at the same share of what is left), so
    the calls after it are admitted without growing a lease again, and no lease holds what no budget counts."""
    coordinator = Coordinator(zookeeper.url(f"mixed-{secrets.token_hex(4)}"), settle_seconds=60)
    coordinator.start()
    try:
        headroom = SharedHeadroom(coordinator)
        enforcer = Enforcer(MIXED_POLICY, headroom=headroom)
        calls = [priced_call("gpt-4o", "0.02", "USD"), priced_call("deepseek-chat", "0.05", "CNY"),
                 CheckRequest(user="alice", department="ops", app="kb", model="local-7b", input_tokens=900,
                              max_output_tokens=100)] * 20  # fmt: skip
        for call in calls:
            result = enforcer.check(call)
            assert result is not None and result.decision.action == "allow"
        # Once each: the per-user lease on the first call, the organisation's on the first call priced in CNY.
        assert headroom.grows == 2
        leases = {key.budget: coordinator.own(key) for key in coordinator.leased_keys()}
        per_user, org = leases["per-user"], leases["org-cost"]
        assert set(per_user.cost) == {"CNY"} and set(org.cost) == {"CNY"} and org.tokens == 0
        # The spare is a share of what was left, alike in tokens and cost: 1/(2 x live replicas) at most.
        assert per_user.tokens <= 1000 + 1_000_000 // 2
        spare_share = Decimal(per_user.tokens - 1000) / (1_000_000 - 1000)
        assert per_user.cost["CNY"] == (spare_share * 100).quantize(Decimal("1e-9"), rounding=ROUND_DOWN) > 0
    finally:
        coordinator.close()
