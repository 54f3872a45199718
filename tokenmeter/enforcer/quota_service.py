"""The enforcer as a running service: the check API around one replica, and what keeps it current.

:class:`EnforcerService` answers checks and releases with one
:class:`~tokenmeter.enforcer.admission.Enforcer` and composes

- the policy file (:class:`~tokenmeter.enforcer.policy_reloader.PolicyReloader`): reloaded when
  it changes (once the change has settled) or on request (SIGHUP); a broken or empty new file
  keeps the old policy, and the error is logged, counted and shown by ``GET /v1/policy``;
- the refresh loop (:class:`~tokenmeter.enforcer.usage_refresher.UsageRefresher`), on its own
  thread with its own store client: usage snapshot every ``refresh_seconds``, threshold
  crossings and decision changes written to ``quota_events``, budget states to
  ``quota_utilisation``;
- the numbers for ``/metrics`` (:mod:`~tokenmeter.enforcer.enforcer_stats`), ``GET /v1/usage``,
  ``GET /v1/policy`` and the health checks (:mod:`~tokenmeter.enforcer.quota_documents`).

Checks never wait for the store: they use the last snapshot plus the reservation ledger.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from tokenmeter.enforcer import quota_documents
from tokenmeter.enforcer.admission import CheckResult, Enforcer
from tokenmeter.enforcer.call_estimates import CallEstimates, routable
from tokenmeter.enforcer.check_receipts import CheckReceipts
from tokenmeter.enforcer.decision import CheckRequest, Decision
from tokenmeter.enforcer.enforcer_stats import EnforcerStats, enforcer_gauges, utilisation_ratios
from tokenmeter.enforcer.ledger import DEFAULT_SETTLE_SECONDS, DEFAULT_TIMEOUT_SECONDS, ReservationLedger
from tokenmeter.enforcer.policy import Policy
from tokenmeter.enforcer.policy_file import DEFAULT_POLICY_SETTLE_SECONDS
from tokenmeter.enforcer.policy_reloader import PolicyReloader
from tokenmeter.enforcer.quota_events import QuotaEventLog
from tokenmeter.enforcer.quota_utilisation import UtilisationWriter
from tokenmeter.enforcer.replicas.coordination import Coordinator
from tokenmeter.enforcer.replicas.replica_presence import ReplicaPresence, own_replica_id
from tokenmeter.enforcer.replicas.shared_headroom import SharedHeadroom
from tokenmeter.enforcer.usage_refresher import UsageRefresher
from tokenmeter.quota_wire import CheckBody, LeaseTerms

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

    from tokenmeter.catalog import ModelCatalog

logger = logging.getLogger(__name__)

DEFAULT_REFRESH_SECONDS: Final = 5.0
DEFAULT_LEASE_MAX_CALLS: Final = 8
DEFAULT_LEASE_SECONDS: Final = 2.0


class CheckAnswer(NamedTuple):
    decision: Decision
    reservation_id: str | None
    stale: bool  # the usage snapshot is older than stale_after
    lease_calls: int = 1  # > 1: the reservation holds room for this many calls like this one
    lease_tokens: int = 0  # tokens the lease holds in all (lease_calls x this call's estimate)
    default_output_tokens: int = 0  # the output estimate of a call of this model that gives no max_tokens

    def lease_terms(self, seconds: float) -> LeaseTerms | None:
        """What the app needs to decide the lease's calls itself; None without a lease."""
        if self.lease_calls <= 1:
            return None
        return LeaseTerms(calls=self.lease_calls, seconds=seconds, tokens=self.lease_tokens,
                          default_output_tokens=self.default_output_tokens)  # fmt: skip


class PreparedCheck(NamedTuple):
    body: CheckBody
    request: CheckRequest
    arrived: bool  # False: its client gave it up before it arrived; it holds and counts nothing
    started: float  # perf_counter when the request came in


@dataclass(frozen=True)
class EnforcerOptions:
    policy_path: Path | None = None  # None: no budgets, every check is allowed
    refresh_seconds: float = DEFAULT_REFRESH_SECONDS
    settle_seconds: float = DEFAULT_SETTLE_SECONDS
    reservation_timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    # Shifts the enforcer's calendar (periods, resets) by this many seconds: for rollover
    # drills and tests. Logged at start; 0 in production.
    clock_offset_seconds: float = 0.0
    # A snapshot older than this no longer counts as knowing the usage: checks answered
    # with it are counted as fail-open. Default: three refreshes, at least 30 s.
    stale_after_seconds: float | None = None
    # An app may decide this many calls like one it asked about locally (a lease), when every
    # budget is far from its first warning threshold (decision.lease_calls). 1: no leases.
    lease_max_calls: int = DEFAULT_LEASE_MAX_CALLS
    lease_seconds: float = DEFAULT_LEASE_SECONDS  # how long the app may use a lease
    # zk://host:2181/path: replicas share budget headroom through ClickHouse Keeper / ZooKeeper.
    # None: this enforcer is alone on its store (one serve, or one `tokenmeter enforcer`).
    coordination_url: str | None = None
    # A changed policy file is read once it has not changed for this long (a file renamed
    # into place, or SIGHUP: at once); see tokenmeter/enforcer/policy_file.py.
    policy_settle_seconds: float = DEFAULT_POLICY_SETTLE_SECONDS
    # Record wallets' grants and daily charges in the ledger (docs/credits.md). With replicas, one
    # replica charges and the others only read: --no-wallet-charges on them.
    charge_wallets: bool = True

    @property
    def stale_after(self) -> float:
        if self.stale_after_seconds is not None:
            return self.stale_after_seconds
        return max(30.0, 3 * self.refresh_seconds)


def default_replica_name() -> str:
    # Stable across restarts, so a restarted enforcer finds the crossings it already wrote.
    return socket.gethostname()


class EnforcerService:
    """The check facade: checks and releases on this replica, the documents, and the refresh loop's lifecycle."""

    def __init__(
        self,
        open_client: Callable[[], Client],
        options: EnforcerOptions,
        catalog: ModelCatalog | None = None,
        *,
        replica: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.options = options
        self.stats = EnforcerStats()
        # Raises PolicyError: at start there is nothing to fall back to.
        self.policy_file = PolicyReloader(options.policy_path, options.policy_settle_seconds, self.stats)
        # Raises CoordinationError: the server is named in it.
        self.enforcer = _replica_enforcer(options, self.policy_file.loaded.policy, clock)
        self.events = QuotaEventLog(replica or default_replica_name())
        self.presence = _replica_presence(self.enforcer.headroom)
        self.receipts = CheckReceipts(seconds=options.reservation_timeout_seconds, clock=clock)
        self.utilisation = UtilisationWriter(self.enforcer, self.presence, self.events.replica, clock)
        self.refresher = UsageRefresher(open_client, self.enforcer, options.refresh_seconds,
                                        policy_file=self.policy_file, utilisation=self.utilisation,
                                        events=self.events, stats=self.stats,
                                        charge_wallets=options.charge_wallets)  # fmt: skip
        self._estimates = CallEstimates(catalog)

    @property
    def last_policy_error(self) -> str | None:
        return self.policy_file.last_error

    @property
    def last_refresh_error(self) -> str | None:
        return self.refresher.last_error

    # --- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        """Start the refresh loop; returns after the first refresh (or its failure, or 30 s)."""
        self.refresher.start()

    def close(self) -> None:
        self.refresher.stop()
        if self.enforcer.headroom is not None:
            self.enforcer.headroom.coordinator.close()  # gives its leases back

    def request_reload(self) -> None:
        """Reload the policy file on the refresh thread soon (SIGHUP)."""
        self.policy_file.request()
        self.refresher.wake()

    def refresh_now(self) -> None:
        """Run one refresh on the refresh thread soon (tests, and after a reload)."""
        self.refresher.wake()

    def write_utilisation(self, client: Client) -> int:
        """Every budget's state into ``quota_utilisation`` (dashboards read limits and ratios there)."""
        return self.utilisation.write(client)

    # --- requests ----------------------------------------------------------------

    def check(self, body: CheckBody) -> CheckAnswer:
        """The answer for one call, waiting for the coordination server if a lease must grow."""
        answer = self.decide(self.prepare(body))
        assert answer is not None
        return answer

    def prepare(self, body: CheckBody, started: float | None = None) -> PreparedCheck:
        """What a check asks, with its arrival noted once (:meth:`decide` may be called twice for it)."""
        started = time.perf_counter() if started is None else started
        request = self._estimates.request(self.enforcer.policy, body, self.enforcer.now, self.enforcer.shares_used)
        # A check its client gave up on before it arrived: nobody waits for it; hold and count nothing.
        arrived = body.check_id is None or self.receipts.arrive(body.check_id)
        return PreparedCheck(body, request, arrived, started)

    def decide(self, check: PreparedCheck, *, blocking: bool = True) -> CheckAnswer | None:
        """The answer; never touches the store. With replicas a check may need to grow a lease on the
        coordination server: with ``blocking=False`` it then returns None (decide it again on a thread)."""
        body, request, arrived = check.body, check.request, check.arrived
        policy = self.enforcer.policy
        result = self.enforcer.check(request, reserve=arrived and not body.dry_run, check_id=body.check_id,
                                     lease_max_calls=self.options.lease_max_calls if _may_lease(body, policy) else 1,
                                     blocking=blocking)  # fmt: skip
        if result is None:
            return None
        stale = self.enforcer.snapshot_age() > self.options.stale_after
        if stale and policy.budgets:
            self.stats.count_fail_open("enforcer")
        if arrived:
            self.stats.count_fail_open("client", body.client_fail_open)
        if not body.dry_run and arrived:
            self.events.on_decision(request, result.decision, result.decided_at)
        self.stats.count_check(result.decision.action, time.perf_counter() - check.started)
        return _answer(result, check, stale, policy)

    def release(self, reservation_id: str | None = None, *, check_id: str | None = None, unused_tokens: int = 0,
                client_fail_open: int = 0) -> bool:  # fmt: skip
        """A call (or a lease) finished, by reservation id; or, by the client's check id, a check whose
        answer the client never got: its call never ran (dropped at once), and the fail-opens it was
        reporting are counted now unless the check arrived and counted them."""
        if reservation_id is not None:
            return self.enforcer.release(reservation_id, unused_tokens)
        if check_id is None:
            return False
        if self.receipts.give_up(check_id):
            return self.enforcer.release_check(check_id)
        self.stats.count_fail_open("client", client_fail_open)
        return False

    # --- reading -----------------------------------------------------------------

    def usage_document(self, budget: str | None = None, subject: str | None = None) -> dict[str, Any]:
        return quota_documents.usage_document(self.enforcer, self.options.stale_after, budget, subject)

    def policy_document(self) -> dict[str, Any]:
        return quota_documents.policy_document(self.policy_file.loaded, self.policy_file.last_error)

    def health(self) -> dict[str, Any]:
        return quota_documents.health_document(self.policy_file.loaded, self.policy_file.last_error,
                                               self.refresher.last_error, self.enforcer, self.presence)  # fmt: skip

    def store_problems(self) -> list[str]:
        """Why the enforcer cannot count on the store now (for health checks); empty when it can."""
        return quota_documents.store_problems(self.refresher.last_error, self.enforcer, self.options.stale_after)

    def render_metrics(self) -> str:
        utilisation = utilisation_ratios(self.enforcer)  # the same moment's states as before the gauges
        return self.stats.render(utilisation, enforcer_gauges(self.enforcer, self.events, self.presence))


def _may_lease(body: CheckBody, policy: Policy) -> bool:
    """A lease decides the next calls like this one in the app; a routed call's next question may need
    another tier, so a check that routing rules look at gets none."""
    return body.lease and not routable(policy, body)


def _answer(result: CheckResult, check: PreparedCheck, stale: bool, policy: Policy) -> CheckAnswer:
    """The answer for a decided check; with a lease, what the app needs to decide the lease's calls."""
    if result.lease_calls <= 1 or result.reservation_id is None:
        return CheckAnswer(result.decision, result.reservation_id, stale)
    estimate = check.body.input_tokens + check.request.max_output_tokens
    return CheckAnswer(result.decision, result.reservation_id, stale, result.lease_calls,
                       result.lease_calls * estimate, policy.output_estimate(check.request.model, None))  # fmt: skip


def _replica_enforcer(options: EnforcerOptions, policy: Policy, clock: Callable[[], float]) -> Enforcer:
    """This replica's enforcer, on the (possibly shifted) calendar, sharing headroom when coordinated."""
    offset = timedelta(seconds=options.clock_offset_seconds)
    enforcer = Enforcer(
        policy,
        ReservationLedger(options.settle_seconds, options.reservation_timeout_seconds, clock=clock),
        now=lambda: datetime.now(UTC) + offset,
        clock=clock,
        headroom=_shared_headroom(options),
    )
    if options.clock_offset_seconds:
        logger.warning("enforcer clock shifted by %+.0f s (clock offset): for drills and tests only",
                       options.clock_offset_seconds)  # fmt: skip
    return enforcer


def _shared_headroom(options: EnforcerOptions) -> SharedHeadroom | None:
    if options.coordination_url is None:
        return None
    coordinator = Coordinator(options.coordination_url, options.settle_seconds)
    coordinator.start()
    logger.warning("enforcer: sharing budget headroom as replica %s through %s", coordinator.replica_id,
                   coordinator.url.display())  # fmt: skip
    return SharedHeadroom(coordinator)


def _replica_presence(headroom: SharedHeadroom | None) -> ReplicaPresence:
    """This replica's heartbeat: by its coordination id and server when it has one."""
    if headroom is None:
        return ReplicaPresence(own_replica_id(), None)
    return ReplicaPresence(headroom.coordinator.replica_id, headroom.coordinator.url.display())
