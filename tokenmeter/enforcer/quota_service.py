"""The enforcer as a running service: policy file, refresh loop, events and metrics.

Around one :class:`~tokenmeter.enforcer.admission.Enforcer` it keeps

- the policy file: reloaded when it changes (checked every refresh, and once a change
  has settled: :mod:`tokenmeter.enforcer.policy_file`) or on request (SIGHUP); a broken
  or empty new file keeps the old policy, and the error is logged, counted and shown by
  ``GET /v1/policy``. The usage for a new policy is read before it is used, so no check
  sees a budget without its usage;
- the refresh loop, on its own thread with its own store client: usage snapshot every
  ``refresh_seconds``, threshold crossings and decision changes written to
  ``quota_events``;
- the numbers for ``/metrics``, ``GET /v1/usage`` and ``GET /v1/policy``.

Checks never wait for the store: they use the last snapshot plus the reservation ledger.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from tokenmeter.enforcer.admission import Enforcer
from tokenmeter.enforcer.check_receipts import CheckReceipts
from tokenmeter.enforcer.coordination import Coordinator
from tokenmeter.enforcer.decision import BudgetUsage, CheckRequest, Decision, Usage
from tokenmeter.enforcer.enforcer_stats import EnforcerStats
from tokenmeter.enforcer.ledger import DEFAULT_SETTLE_SECONDS, DEFAULT_TIMEOUT_SECONDS, ReservationLedger
from tokenmeter.enforcer.policy import Policy, PolicyError
from tokenmeter.enforcer.policy_file import (
    DEFAULT_POLICY_SETTLE_SECONDS,
    LoadedPolicy,
    PolicyFileWatch,
    no_policy,
    read_policy_at_start,
)
from tokenmeter.enforcer.quota_events import QuotaEventLog
from tokenmeter.enforcer.replica_presence import ReplicaPresence, own_replica_id
from tokenmeter.enforcer.shared_headroom import SharedHeadroom
from tokenmeter.enforcer.wire import decimal_text
from tokenmeter.pricing import Price, cost_of
from tokenmeter.quota_wire import CheckBody, LeaseTerms

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

    from tokenmeter.catalog import ModelCatalog

logger = logging.getLogger(__name__)

DEFAULT_REFRESH_SECONDS: Final = 5.0
DEFAULT_LEASE_MAX_CALLS: Final = 8
DEFAULT_LEASE_SECONDS: Final = 2.0
UTILISATION_WRITE_SECONDS: Final = 30.0
UTILISATION_COLUMNS: Final = (
    "updated_at", "budget", "scope", "subject", "period", "period_start", "resets_at", "used_tokens",
    "reserved_tokens", "limit_tokens", "used_cost", "reserved_cost", "limit_cost", "currency", "ratio", "action",
    "replica",
)  # fmt: skip
_FIRST_REFRESH_WAIT_SECONDS: Final = 30.0


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

    @property
    def stale_after(self) -> float:
        if self.stale_after_seconds is not None:
            return self.stale_after_seconds
        return max(30.0, 3 * self.refresh_seconds)


def read_policy_file(path: Path | None, settle_seconds: float = DEFAULT_POLICY_SETTLE_SECONDS) -> LoadedPolicy:
    """The policy to start with (PolicyError when it cannot be used); no path: the empty policy."""
    return no_policy() if path is None else read_policy_at_start(path, settle_seconds)


def default_replica_name() -> str:
    # Stable across restarts, so a restarted enforcer finds the crossings it already wrote.
    return socket.gethostname()


class EnforcerService:
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
        self._open_client = open_client
        self._catalog = catalog
        self._clock = clock
        offset = timedelta(seconds=options.clock_offset_seconds)
        # Raises PolicyError: at start there is nothing to fall back to.
        self._loaded = read_policy_file(options.policy_path, options.policy_settle_seconds)
        self._policy_watch = (
            PolicyFileWatch(options.policy_path, options.policy_settle_seconds, self._loaded.file_state)
            if options.policy_path is not None
            else None
        )
        self.enforcer = Enforcer(
            self._loaded.policy,
            ReservationLedger(options.settle_seconds, options.reservation_timeout_seconds, clock=clock),
            now=lambda: datetime.now(UTC) + offset,
            clock=clock,
            headroom=_shared_headroom(options),  # raises CoordinationError: the server is named in it
        )
        self.stats = EnforcerStats()
        self.stats.count_policy_load("loaded")
        self.events = QuotaEventLog(replica or default_replica_name())
        headroom = self.enforcer.headroom
        self.presence = ReplicaPresence(
            headroom.coordinator.replica_id if headroom is not None else own_replica_id(),
            headroom.coordinator.url.display() if headroom is not None else None,
        )
        self.receipts = CheckReceipts(seconds=options.reservation_timeout_seconds, clock=clock)
        self.last_policy_error: str | None = None
        self.last_refresh_error: str | None = None
        self._prices: dict[str, Price | None] = {}
        self._reload_requested = False
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._first_refresh = threading.Event()
        self._next_utilisation_write = float("-inf")
        self._thread: threading.Thread | None = None
        if options.clock_offset_seconds:
            logger.warning("enforcer clock shifted by %+.0f s (clock offset): for drills and tests only",
                           options.clock_offset_seconds)  # fmt: skip

    # --- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        """Start the refresh loop; returns after the first refresh (or its failure, or 30 s)."""
        self._thread = threading.Thread(target=self._run, name="tokenmeter-enforcer-refresh", daemon=True)
        self._thread.start()
        self._first_refresh.wait(_FIRST_REFRESH_WAIT_SECONDS)

    def close(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self.enforcer.headroom is not None:
            self.enforcer.headroom.coordinator.close()  # gives its leases back

    def request_reload(self) -> None:
        """Reload the policy file on the refresh thread soon (SIGHUP)."""
        self._reload_requested = True
        self._wake.set()

    def refresh_now(self) -> None:
        """Run one refresh on the refresh thread soon (tests, and after a reload)."""
        self._wake.set()

    def _run(self) -> None:
        client: Client | None = None
        first = True
        while not self._stopping.is_set():
            try:
                if client is None:
                    client = self._open_client()
                    self.events.load_levels(client, self.enforcer.now())
                self._tick(client)
            except Exception as exc:
                self._refresh_failed(exc)
            if first:
                first = False
                self._first_refresh.set()
            self._wake.wait(self._next_wait())
            self._wake.clear()
        if client is not None:
            try:
                self.events.flush(client)
                self.write_utilisation(client)
            except Exception as exc:
                logger.warning("quota events or utilisation not written at stop (%d events dropped): %s",
                               self.events.pending(), exc)  # fmt: skip
            finally:
                client.close()  # chDB: a process opens one store path at a time; let the next one open

    def _next_wait(self) -> float:
        """The refresh interval, shorter when a changed policy file settles before it."""
        due = self._policy_watch.seconds_until_due() if self._policy_watch is not None else None
        return self.options.refresh_seconds if due is None else min(self.options.refresh_seconds, due + 0.01)

    def _tick(self, client: Client) -> None:
        if self._policy_watch is not None:
            forced, self._reload_requested = self._reload_requested, False
            outcome = self._policy_watch.poll(force=forced)
            if outcome is not None:
                self._reload(client, outcome)
        snapshot = self.enforcer.refresh(client)
        self.enforcer.give_back_headroom()
        if self._clock() >= self._next_utilisation_write:
            self.write_utilisation(client)
        if self.last_refresh_error is not None:
            logger.warning("enforcer: reading usage from the store works again")
            self.last_refresh_error = None
        self.events.on_snapshot(self.enforcer.policy, snapshot, self.enforcer.now())
        self.events.flush(client)

    def write_utilisation(self, client: Client) -> int:
        """Every budget's state into ``quota_utilisation`` (dashboards read limits and ratios there)."""
        self._next_utilisation_write = self._clock() + UTILISATION_WRITE_SECONDS
        self.presence.beat(client)  # the same cadence: other enforcers on this store are seen within 90 s
        states = self.enforcer.budget_states()
        if not states:
            return 0
        now = datetime.now(UTC).replace(tzinfo=None)
        rows = [
            [now, state.budget.name, state.budget.scope, state.subject, state.budget.period,
             state.period_start.replace(tzinfo=None), state.resets_at.replace(tzinfo=None),
             state.used.tokens, state.reserved.tokens, state.limit.tokens,
             _cost(state.used, state.limit.currency), _cost(state.reserved, state.limit.currency), state.limit.cost,
             state.limit.currency or "", state.ratio, state.budget.action, self.events.replica]
            for state in states
        ]  # fmt: skip
        client.insert("quota_utilisation", rows, column_names=list(UTILISATION_COLUMNS))
        return len(rows)

    def _refresh_failed(self, exc: Exception) -> None:
        self.stats.count_refresh_error()
        message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if self.last_refresh_error is None:  # once per outage, not every few seconds
            logger.warning("enforcer: cannot read usage from the store (%s); deciding on the last "
                           "snapshot and the reservations until it works again", message)  # fmt: skip
        self.last_refresh_error = message

    def _reload(self, client: Client, outcome: LoadedPolicy | PolicyError) -> None:
        if isinstance(outcome, PolicyError):
            self.stats.count_policy_load("rejected")
            self.last_policy_error = str(outcome)
            logger.error("policy not reloaded, the previous one stays in force: %s", outcome)
            return
        loaded = outcome
        try:
            snapshot, started_at = self.enforcer.read_snapshot(client, loaded.policy)
        except Exception as exc:
            self.enforcer.set_policy(loaded.policy)
            self._refresh_failed(exc)
        else:
            self.enforcer.set_policy(loaded.policy, snapshot, started_at)
        self._loaded = loaded
        self.last_policy_error = None
        self.stats.count_policy_load("loaded")
        logger.warning("policy reloaded from %s (%d budgets)", loaded.source, len(loaded.policy.budgets))

    # --- requests ----------------------------------------------------------------

    def check(self, body: CheckBody) -> CheckAnswer:
        """The answer for one call, waiting for the coordination server if a lease must grow."""
        answer = self.decide(self.prepare(body))
        assert answer is not None
        return answer

    def prepare(self, body: CheckBody, started: float | None = None) -> PreparedCheck:
        """What a check asks, with its arrival noted once (:meth:`decide` may be called twice for it)."""
        started = time.perf_counter() if started is None else started
        policy = self.enforcer.policy
        output = policy.output_estimate(body.model, body.max_output_tokens)
        request = CheckRequest(
            user=body.user,
            department=body.department,
            app=body.app,
            model=body.model,
            input_tokens=body.input_tokens,
            max_output_tokens=output,
            estimated_costs=self._estimated_costs(policy, body.model, body.input_tokens, output),
        )
        # A check its client gave up on before it arrived: nobody waits for it; hold and count nothing.
        arrived = body.check_id is None or self.receipts.arrive(body.check_id)
        return PreparedCheck(body, request, arrived, started)

    def decide(self, check: PreparedCheck, *, blocking: bool = True) -> CheckAnswer | None:
        """The answer; never touches the store. With replicas a check may need to grow a lease on the
        coordination server: with ``blocking=False`` it then returns None (decide it again on a thread)."""
        body, request, arrived = check.body, check.request, check.arrived
        policy = self.enforcer.policy
        result = self.enforcer.check(request, reserve=arrived and not body.dry_run, check_id=body.check_id,
                                     lease_max_calls=self.options.lease_max_calls if body.lease else 1,
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
        if result.lease_calls <= 1 or result.reservation_id is None:
            return CheckAnswer(result.decision, result.reservation_id, stale)
        estimate = body.input_tokens + request.max_output_tokens
        return CheckAnswer(result.decision, result.reservation_id, stale, result.lease_calls,
                           result.lease_calls * estimate, policy.output_estimate(body.model, None))  # fmt: skip

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

    def _estimated_costs(self, policy: Policy, model: str, input_tokens: int, output_tokens: int
                         ) -> dict[str, tuple[Decimal, str]]:  # fmt: skip
        """The call's cost on the requested model and on each model a downgrade may route it to."""
        costs: dict[str, tuple[Decimal, str]] = {}
        if not policy.has_cost_limits:  # token limits only: the price does not matter
            return costs
        seen = set()
        current: str | None = model
        while current is not None and current not in seen:
            seen.add(current)
            cost = cost_of(self._price(current), input_tokens, output_tokens)
            if cost.amount is not None and cost.currency is not None:
                costs[current] = (cost.amount, cost.currency)
            current = policy.routes.get(current)
        return costs

    def _price(self, model: str) -> Price | None:
        if model not in self._prices:
            self._prices[model] = self._catalog.price_for(model) if self._catalog is not None else None
        return self._prices[model]

    # --- reading -----------------------------------------------------------------

    def usage_document(self, budget: str | None = None, subject: str | None = None) -> dict[str, Any]:
        rows = [
            _usage_row(state)
            for state in self.enforcer.budget_states()
            if (budget is None or state.budget.name == budget) and (subject is None or state.subject == subject)
        ]
        return {
            "at": self.enforcer.now().isoformat(),
            "snapshot_age_seconds": _seconds(self.enforcer.snapshot_age()),
            "stale": self.enforcer.snapshot_age() > self.options.stale_after,
            "budgets": rows,
        }

    def policy_document(self) -> dict[str, Any]:
        loaded = self._loaded
        return {
            "source": loaded.source,
            "checksum": loaded.checksum,
            "loaded_at": loaded.loaded_at.isoformat(),
            "last_error": self.last_policy_error,
            "policy": loaded.policy.model_dump(mode="json"),
        }

    def health(self) -> dict[str, Any]:
        return {
            "policy_loaded_at": self._loaded.loaded_at.isoformat(),
            "policy_error": self.last_policy_error,
            "store_error": self.last_refresh_error,
            "snapshot_age_seconds": _seconds(self.enforcer.snapshot_age()),
            "replica": self.presence.replica,
            "warnings": list(self.presence.warnings),
        }

    def store_problems(self) -> list[str]:
        """Why the enforcer cannot count on the store now (for health checks); empty when it can."""
        problems = []
        if self.last_refresh_error is not None:
            problems.append(f"the enforcer cannot read usage from the store: {self.last_refresh_error}")
        age = self.enforcer.snapshot_age()
        if age > self.options.stale_after:
            known = "none yet" if age == float("inf") else f"{age:.0f} s old"
            problems.append(f"the enforcer's usage snapshot is stale ({known}; stale after "
                            f"{self.options.stale_after:g} s)")  # fmt: skip
        if self.enforcer.headroom is not None:
            problems += self.enforcer.headroom.problems()
        return problems

    def _headroom_gauges(self) -> dict[str, tuple[str, float]]:
        headroom = self.enforcer.headroom
        if headroom is None:
            return {}
        return {
            "tokenmeter_enforcer_lease_grows": ("Leases grown on the coordination server, since start.",
                                                float(headroom.grows)),
            "tokenmeter_enforcer_lease_lowerings": ("Spare lease room given back, since start.",
                                                    float(headroom.lowerings)),
            "tokenmeter_enforcer_coordination_failures": ("Checks decided on this replica's numbers because the "
                                                          "coordination server could not be used, since start.",
                                                          float(headroom.failures)),
        }  # fmt: skip

    def render_metrics(self) -> str:
        utilisation = [
            (state.budget.name, state.budget.scope, state.subject, state.ratio)
            for state in self.enforcer.budget_states()
        ]
        age = self.enforcer.snapshot_age()
        gauges = {
            "tokenmeter_enforcer_reservations": ("Reservations in flight.", float(self.enforcer.reservations())),
            "tokenmeter_enforcer_snapshot_age_seconds": (
                "Age of the usage snapshot checks use (-1: none yet).", age if age != float("inf") else -1.0),
            "tokenmeter_enforcer_events_pending": ("Quota events not yet written.", float(self.events.pending())),
            "tokenmeter_enforcer_events_dropped": ("Quota events dropped (store down, buffer full).",
                                                   float(self.events.dropped)),
            **self._headroom_gauges(),
            "tokenmeter_enforcer_uncoordinated_replicas": (
                "Other enforcers on this store that do not share budget headroom with this one.",
                float(len(self.presence.warnings))),
        }  # fmt: skip
        return self.stats.render(utilisation, gauges)


def _shared_headroom(options: EnforcerOptions) -> SharedHeadroom | None:
    if options.coordination_url is None:
        return None
    coordinator = Coordinator(options.coordination_url, options.settle_seconds)
    coordinator.start()
    logger.warning("enforcer: sharing budget headroom as replica %s through %s", coordinator.replica_id,
                   coordinator.url.display())  # fmt: skip
    return SharedHeadroom(coordinator)


def _seconds(value: float) -> float | None:
    return None if value == float("inf") else round(value, 3)


def _usage_row(state: BudgetUsage) -> dict[str, Any]:
    limit, currency = state.limit, state.limit.currency
    return {
        "budget": state.budget.name,
        "scope": state.budget.scope,
        "subject": state.subject,
        "period": state.budget.period,
        "period_start": state.period_start.isoformat(),
        "resets_at": state.resets_at.isoformat(),
        "used_tokens": state.used.tokens,
        "reserved_tokens": state.reserved.tokens,
        "limit_tokens": limit.tokens,
        "used_cost": decimal_text(_cost(state.used, currency)),
        "reserved_cost": decimal_text(_cost(state.reserved, currency)),
        "limit_cost": decimal_text(limit.cost),
        "currency": currency,
        "ratio": round(state.ratio, 6),
        "action": state.budget.action,
    }


def _cost(usage: Usage, currency: str | None) -> Decimal | None:
    return usage.cost.get(currency, Decimal(0)) if currency else None
