"""The policy in force and its file: reloaded when the file changes, or on request (SIGHUP).

A changed file is read once it has settled (:mod:`tokenmeter.enforcer.policy_file`); a broken
or empty new file keeps the old policy, and the error is logged, counted and shown by
``GET /v1/policy``. The usage for a new policy is read before it is used, so no check sees a
budget without its usage. Reloads run on the refresh thread
(:class:`~tokenmeter.enforcer.usage_refresher.UsageRefresher`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from tokenmeter.enforcer.admission import Enforcer
from tokenmeter.enforcer.enforcer_stats import EnforcerStats
from tokenmeter.enforcer.policy import PolicyError
from tokenmeter.enforcer.policy_file import (
    DEFAULT_POLICY_SETTLE_SECONDS,
    LoadedPolicy,
    PolicyFileWatch,
    no_policy,
    read_policy_at_start,
)

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

logger = logging.getLogger(__name__)


def read_policy_file(path: Path | None, settle_seconds: float = DEFAULT_POLICY_SETTLE_SECONDS) -> LoadedPolicy:
    """The policy to start with (PolicyError when it cannot be used); no path: the empty policy."""
    return no_policy() if path is None else read_policy_at_start(path, settle_seconds)


class PolicyReloader:
    """The policy file as loaded, the last reload error, and reloading (no file: nothing to reload)."""

    def __init__(self, path: Path | None, settle_seconds: float, stats: EnforcerStats) -> None:
        """Reads the policy to start with; raises PolicyError: at start there is nothing to fall back to."""
        self.loaded = read_policy_file(path, settle_seconds)
        self.last_error: str | None = None  # why the last changed file was refused; None once one loads
        self._stats = stats
        self._watch = PolicyFileWatch(path, settle_seconds, self.loaded.file_state) if path is not None else None
        self._requested = False
        stats.count_policy_load("loaded")

    def request(self) -> None:
        """Read the file at the next refresh, settled or not (SIGHUP: the operator says it is ready)."""
        self._requested = True

    def seconds_until_due(self) -> float | None:
        """How long until a changed file has settled; None when no change waits."""
        return self._watch.seconds_until_due() if self._watch is not None else None

    def reload_if_changed(self, client: Client, enforcer: Enforcer, store_failed: Callable[[Exception], None]) -> None:
        """Give ``enforcer`` the changed file's policy, with its usage read from the store first.

        When that usage cannot be read (``store_failed`` is told), the policy is used at once all the
        same: budgets kept by name keep their usage, new ones count reservations until the next refresh.
        """
        if self._watch is None:
            return
        forced, self._requested = self._requested, False
        outcome = self._watch.poll(force=forced)
        if outcome is None:
            return
        if isinstance(outcome, PolicyError):
            self._stats.count_policy_load("rejected")
            self.last_error = str(outcome)
            logger.error("policy not reloaded, the previous one stays in force: %s", outcome)
            return
        try:
            snapshot, started_at = enforcer.read_snapshot(client, outcome.policy)
        except Exception as exc:
            enforcer.set_policy(outcome.policy)
            store_failed(exc)
        else:
            enforcer.set_policy(outcome.policy, snapshot, started_at)
        self.loaded = outcome
        self.last_error = None
        self._stats.count_policy_load("loaded")
        logger.warning("policy reloaded from %s (%d budgets)", outcome.source, len(outcome.policy.budgets))
