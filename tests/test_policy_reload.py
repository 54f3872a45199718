"""A policy file rewritten under a running enforcer: no check is ever decided by an empty or half-written file.

A real EnforcerService on a migrated chDB store, checks answered all the while on other
threads. The writers do what editors, `cat >` and config tools do: truncate and write in
steps with pauses, write a new file and rename it into place, leave the file empty.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tokenmeter.enforcer.policy import PolicyError
from tokenmeter.enforcer.policy_file import LoadedPolicy, PolicyFileWatch, file_state
from tokenmeter.enforcer.quota_service import EnforcerOptions, EnforcerService
from tokenmeter.quota_wire import CheckBody
from tokenmeter.store import open_store
from tokenmeter.store.migrations import RenderOptions, migrate

# In force first: department ops may use 100 tokens; a call holding them all is reserved, so
# every further call of ops is denied while this policy (or the complete new one) is in force.
OLD = """\
budgets:
  - name: team
    scope: department
    subject: ops
    limit: {tokens: 100}
"""
# The new file: sales gets a budget, ops 50 tokens. Cut after sales' budget it is a valid
# policy in which ops has no budget at all: the half-written file that must never be used.
FIRST_HALF = """\
timezone: Asia/Shanghai
budgets:
  - name: sales
    scope: department
    subject: sales
    limit: {tokens: 1000000}
"""
SECOND_HALF = """\
  - name: team
    scope: department
    subject: ops
    limit: {tokens: 50}
"""
FILLING_CALL = CheckBody(department="ops", model="gpt-4o", input_tokens=100, max_output_tokens=0)
NEXT_CALL = CheckBody(department="ops", model="gpt-4o", input_tokens=1, max_output_tokens=0, dry_run=True)
SETTLE_SECONDS = 8.0  # far longer than any pause below: a pause is never taken for the end of a write
PAUSE_SECONDS = 0.5
DEADLINE_SECONDS = 60.0


@pytest.fixture(scope="module")
def store_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"chdb://{tmp_path_factory.mktemp('reload') / 'chdb'}"
    client = open_store(url)
    try:
        migrate(client, RenderOptions())
    finally:
        client.close()
    return url


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(OLD, encoding="utf-8")
    old = time.time() - 3600  # written long ago: settled, so the service starts at once
    os.utime(path, (old, old))
    return path


def _service(store_url: str, policy: Path, settle: float = SETTLE_SECONDS) -> EnforcerService:
    options = EnforcerOptions(policy_path=policy, refresh_seconds=0.05, policy_settle_seconds=settle)
    service = EnforcerService(lambda: open_store(store_url), options)
    service.start()
    return service


@pytest.fixture
def checking(store_url: str, policy: Path) -> Iterator[tuple[EnforcerService, Counter[str]]]:
    """The service with ops' budget full, and the decisions on NEXT_CALL answered on two threads until the end."""
    service = _service(store_url, policy)
    assert service.check(FILLING_CALL)[0].action == "allow"
    decisions: Counter[str] = Counter()
    stop = threading.Event()

    def keep_checking() -> None:
        while not stop.is_set():
            decision = service.check(NEXT_CALL).decision
            decisions[decision.action] += 1

    threads = [threading.Thread(target=keep_checking) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        yield service, decisions
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        service.close()


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never: {what}")
        time.sleep(0.02)


def _budgets(service: EnforcerService) -> list[str]:
    return [budget.name for budget in service.enforcer.policy.budgets]


def test_a_file_rewritten_in_place_with_pauses_is_used_only_when_complete(
    checking: tuple[EnforcerService, Counter[str]], policy: Path
) -> None:
    service, decisions = checking
    _wait_for(lambda: decisions["deny"] > 50, "checks answered under the old policy")
    with policy.open("w", encoding="utf-8") as handle:  # truncated: empty from here
        time.sleep(PAUSE_SECONDS)
        handle.write(FIRST_HALF)
        handle.flush()
        time.sleep(PAUSE_SECONDS)  # a valid policy without ops' budget sits in the file now
        handle.write(SECOND_HALF)
    during = sum(decisions.values())
    _wait_for(lambda: _budgets(service) == ["sales", "team"], "the complete file is loaded")
    assert sum(decisions.values()) > during  # checks went on while it settled
    assert decisions["allow"] == 0, decisions  # never the empty or the half-written policy
    assert service.last_policy_error is None
    assert service.enforcer.policy.budgets[1].limit.tokens == 50


def test_a_file_renamed_into_place_is_used_at_once(
    checking: tuple[EnforcerService, Counter[str]], policy: Path
) -> None:
    service, decisions = checking
    temporary = policy.with_name("policy.yaml.tmp")
    temporary.write_text(FIRST_HALF + SECOND_HALF, encoding="utf-8")
    os.replace(temporary, policy)
    started = time.monotonic()
    _wait_for(lambda: _budgets(service) == ["sales", "team"], "the renamed file is loaded")
    assert time.monotonic() - started < SETTLE_SECONDS  # not waited out: it was complete when it got its name
    assert decisions["allow"] == 0, decisions


def test_an_emptied_file_keeps_the_previous_policy(checking: tuple[EnforcerService, Counter[str]],
                                                    policy: Path) -> None:  # fmt: skip
    service, decisions = checking
    policy.write_text("# budgets come later\n", encoding="utf-8")
    service.request_reload()  # SIGHUP: read now, settled or not
    _wait_for(lambda: service.last_policy_error is not None, "the empty file is refused")
    assert f"{policy} is empty (or only comments)" in service.last_policy_error
    assert "an empty policy would allow every call" in service.last_policy_error
    assert _budgets(service) == ["team"]
    assert service.policy_document()["policy"]["budgets"][0]["limit"]["tokens"] == 100
    assert 'tokenmeter_enforcer_policy_loads_total{outcome="rejected"} 1' in service.render_metrics()
    count = sum(decisions.values())
    _wait_for(lambda: sum(decisions.values()) > count + 50, "more checks")
    assert decisions["allow"] == 0, decisions


def test_sighup_reads_a_changed_file_at_once(store_url: str, policy: Path) -> None:
    service = _service(store_url, policy)
    try:
        policy.write_text(FIRST_HALF + SECOND_HALF, encoding="utf-8")  # in place: would wait SETTLE_SECONDS
        service.request_reload()
        started = time.monotonic()
        _wait_for(lambda: _budgets(service) == ["sales", "team"], "the file is loaded on request")
        assert time.monotonic() - started < SETTLE_SECONDS
    finally:
        service.close()


def test_an_empty_file_at_start_is_an_error_naming_the_file_and_the_fix(store_url: str, policy: Path) -> None:
    for text in ("", "\n# nothing yet\n"):
        policy.write_text(text, encoding="utf-8")
        with pytest.raises(PolicyError) as error:
            EnforcerService(lambda: open_store(store_url), EnforcerOptions(policy_path=policy))
        message = str(error.value)
        assert message.startswith(f"{policy} is empty (or only comments)")
        assert "`budgets: []` to allow every call on purpose" in message
        assert "leave out --policy / TOKENMETER_POLICY" in message


class _Clocks:
    """The watch's two clocks, moved by the test: monotonic seconds and wall-clock nanoseconds."""

    def __init__(self) -> None:
        self.monotonic = 1000.0
        self.wall_ns = time.time_ns()

    def advance(self, seconds: float) -> None:
        self.monotonic += seconds
        self.wall_ns += int(seconds * 1e9)


def _watch(path: Path, clocks: _Clocks, settle: float = 2.0) -> PolicyFileWatch:
    taken = file_state(path)
    return PolicyFileWatch(path, settle, taken, clock=lambda: clocks.monotonic, wall_ns=lambda: clocks.wall_ns)


def _set_mtime(path: Path, wall_ns: int) -> None:
    os.utime(path, ns=(wall_ns, wall_ns))


def test_a_change_is_read_once_its_mtime_is_settle_seconds_old(policy: Path) -> None:
    clocks = _Clocks()
    watch = _watch(policy, clocks)
    assert watch.poll() is None and watch.seconds_until_due() is None  # unchanged
    policy.write_text(FIRST_HALF + SECOND_HALF, encoding="utf-8")
    _set_mtime(policy, clocks.wall_ns)  # written "now"
    assert watch.poll() is None
    assert watch.seconds_until_due() == pytest.approx(2.0)
    clocks.advance(1.9)
    assert watch.poll() is None
    clocks.advance(0.1)
    loaded = watch.poll()
    assert isinstance(loaded, LoadedPolicy) and [b.name for b in loaded.policy.budgets] == ["sales", "team"]
    assert watch.poll() is None  # taken: not read again until it changes


def test_a_file_dated_in_the_future_is_read_once_it_was_seen_unchanged_for_settle_seconds(policy: Path) -> None:
    clocks = _Clocks()
    watch = _watch(policy, clocks)
    policy.write_text(FIRST_HALF + SECOND_HALF, encoding="utf-8")
    _set_mtime(policy, clocks.wall_ns + 3600 * 10**9)  # a clock an hour ahead wrote it
    assert watch.poll() is None
    clocks.advance(1.0)
    assert watch.poll() is None
    clocks.advance(1.0)
    assert isinstance(watch.poll(), LoadedPolicy)


def test_each_new_state_starts_the_wait_again_and_a_broken_settled_file_is_refused_once(policy: Path) -> None:
    clocks = _Clocks()
    watch = _watch(policy, clocks)
    future = clocks.wall_ns + 3600 * 10**9  # the mtime rule out of the way: only watching counts
    policy.write_text(FIRST_HALF, encoding="utf-8")
    _set_mtime(policy, future)
    assert watch.poll() is None
    clocks.advance(1.5)
    with policy.open("a", encoding="utf-8") as handle:
        handle.write("  - name: team\n    scope: nowhere\n")
    _set_mtime(policy, future + 1)
    assert watch.poll() is None  # another state: watched from now
    clocks.advance(1.5)
    assert watch.poll() is None
    clocks.advance(0.5)
    refused = watch.poll()
    assert isinstance(refused, PolicyError) and "line 8, budgets[1].scope" in str(refused)
    clocks.advance(10)
    assert watch.poll() is None  # the same broken file: refused once, not every refresh
    assert isinstance(watch.poll(force=True), PolicyError)  # SIGHUP reads it again
