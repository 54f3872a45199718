"""What one enforcer replica decides on: the policy, the latest usage snapshot, and the reservations
the snapshot does not show yet (the ledger), behind the one lock checks decide and reserve under.

A new snapshot or policy is swapped in under the lock; reading the snapshot from the store happens
outside it, so a refresh never blocks checks for longer than the swap.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, NamedTuple

from tokenmeter.enforcer.decision import Usage, UsageKey, UsageSnapshot
from tokenmeter.enforcer.ledger import ReservationLedger
from tokenmeter.enforcer.policy import Policy
from tokenmeter.enforcer.snapshot import read_snapshot
from tokenmeter.enforcer.wallet_accounts import WalletAccounts

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client


class UsageView(NamedTuple):
    """What a decision is made on at one moment, read together under the lock."""

    policy: Policy
    snapshot: UsageSnapshot
    local: Mapping[UsageKey, Usage]  # this replica's reservations that the snapshot does not show yet
    now: datetime


class UsageInForce:
    def __init__(self, policy: Policy, ledger: ReservationLedger, now: Callable[[], datetime],
                 clock: Callable[[], float]) -> None:  # fmt: skip
        self.lock = threading.Lock()
        self.ledger = ledger
        self._policy = policy
        self._now = now
        self._clock = clock
        self._snapshot = UsageSnapshot()
        self._snapshot_started_at = float("-inf")  # no snapshot yet: every reservation still counts
        self.wallets = WalletAccounts()  # used on the refresh thread only

    @property
    def policy(self) -> Policy:
        return self._policy

    @property
    def snapshot(self) -> UsageSnapshot:
        return self._snapshot

    def now(self) -> datetime:
        return self._now()

    def snapshot_age(self) -> float:
        """Seconds since the query of the snapshot in use started (inf before the first)."""
        return self._clock() - self._snapshot_started_at

    def view(self, *, copy: bool = False) -> UsageView:
        """With the lock held; ``copy``: the reservations copied, for use after the lock is let go."""
        now = self._now()
        local = self.ledger.totals(self._snapshot_started_at)
        return UsageView(self._policy, self._snapshot, dict(local) if copy else local, now)

    def set_policy(self, policy: Policy, snapshot: UsageSnapshot | None = None, started_at: float = 0.0) -> None:
        """Use ``policy`` from now on, with a snapshot read for it when there is one.

        Without one the old snapshot stays: budgets kept by name keep their usage, new
        budgets count only reservations until the next refresh.
        """
        with self.lock:
            self._policy = policy
            if snapshot is not None:
                self._snapshot, self._snapshot_started_at = snapshot, started_at

    def update_snapshot(self, snapshot: UsageSnapshot, started_at: float, policy: Policy | None = None) -> bool:
        """Use ``snapshot`` unless a newer one or another policy came first; True when used."""
        with self.lock:
            if policy is not None and policy is not self._policy:
                return False  # read for a policy that has since been replaced
            if started_at < self._snapshot_started_at:  # an older, slower refresh never wins
                return False
            self._snapshot, self._snapshot_started_at = snapshot, started_at
            return True

    def read_snapshot(self, client: Client, policy: Policy | None = None) -> tuple[UsageSnapshot, float]:
        """Usage from the store for ``policy`` (default: the current one), and when the query started."""
        started_at = self._clock()
        policy, now = policy or self._policy, self._now()
        snapshot = self.wallets.with_wallets(client, policy, read_snapshot(client, policy, now), now)
        return snapshot, started_at

    def refresh(self, client: Client) -> UsageSnapshot:
        """Read usage from the store (outside the lock) and use it from now on."""
        policy = self._policy
        snapshot, started_at = self.read_snapshot(client, policy)
        self.update_snapshot(snapshot, started_at, policy)
        return snapshot
