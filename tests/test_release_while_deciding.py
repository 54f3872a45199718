"""A client gives up on a check while the enforcer is still deciding it on a worker thread.

With replicas, a check whose lease must grow is decided again on a worker thread once the
coordination server answered. If the client's release by ``check_id`` arrives in between, the
check has arrived but reserved nothing yet; when it then reserves, nobody will release that
reservation, and the user is refused for room held by a call that never ran, until
``timeout_seconds``. The grow is held up for real: the session's ZooKeeper server is stopped with
SIGSTOP (its connections stay open; requests wait) while the release arrives.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from zookeeper_server import ZooKeeperServer

from tokenmeter.enforcer.decision import Usage
from tokenmeter.enforcer.ledger import ReservationLedger
from tokenmeter.enforcer.quota_service import CheckAnswer, EnforcerOptions, EnforcerService
from tokenmeter.quota_wire import CheckBody

pytest.importorskip("kazoo", reason="the coordination extra (kazoo) is not installed")

POLICY = """
timezone: UTC
budgets:
  - {name: per-user, scope: user, period: day, limit: {tokens: 100000}, action: deny}
"""


def _no_store() -> None:
    raise AssertionError("a check never touches the store")


@pytest.fixture
def service(zookeeper: ZooKeeperServer, tmp_path: Path) -> Iterator[EnforcerService]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY, encoding="utf-8")
    options = EnforcerOptions(policy_path=policy, coordination_url=zookeeper.url(f"race-{secrets.token_hex(4)}"))
    service = EnforcerService(_no_store, options)  # type: ignore[arg-type]  # never started: no refresh
    try:
        yield service
    finally:
        service.close()


def test_a_check_given_up_while_its_lease_grows_holds_nothing(service: EnforcerService,
                                                             zookeeper: ZooKeeperServer) -> None:  # fmt: skip
    body = CheckBody(user="alice", model="qwen2.5-7b-instruct", input_tokens=900, max_output_tokens=100,
                     check_id="check-1")  # fmt: skip
    prepared = service.prepare(body)
    # No lease yet: the event loop's non-blocking attempt hands the check to a worker thread.
    assert service.decide(prepared, blocking=False) is None
    answers: list[CheckAnswer | None] = []
    with zookeeper.paused():
        worker = threading.Thread(target=lambda: answers.append(service.decide(prepared)))
        worker.start()
        # The client's deadline passed: it releases by its id. The check arrived, but holds nothing yet.
        assert service.release(check_id="check-1") is False
        assert worker.is_alive(), "the check was decided while the coordination server was stopped"
    worker.join(30)
    assert not worker.is_alive()
    [answer] = answers
    assert answer is not None and answer.decision.action == "allow"
    assert answer.reservation_id is None  # nobody waits for this answer: it must hold nothing
    [state] = service.enforcer.budget_states()
    assert state.reserved.tokens == 0


def test_a_check_id_released_before_its_reservation_reserves_nothing_in_the_ledger() -> None:
    ledger = ReservationLedger()
    amounts = {("per-user", "alice"): Usage(1000)}
    assert ledger.release_check("late") is False
    assert ledger.reserve(amounts, "late") is None and len(ledger) == 0
    # Once only: the same id used again later is a new check.
    assert ledger.reserve(amounts, "late") is not None and len(ledger) == 1
    # The usual order: reserved, then released by its id, dropped at once.
    assert ledger.reserve(amounts, "early") is not None
    assert ledger.release_check("early") is True and len(ledger) == 1
