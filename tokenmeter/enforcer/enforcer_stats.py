"""The enforcer's own metrics in the Prometheus text format (``/metrics``).

Counters and the latency histogram are kept here; quota utilisation per (budget, subject)
and the gauges (:func:`enforcer_gauges`) are read from the enforcer when scraped, so they are
never older than the last snapshot.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

from tokenmeter.server.prometheus_text import Histogram, label_value

if TYPE_CHECKING:
    from tokenmeter.enforcer.admission import Enforcer
    from tokenmeter.enforcer.quota_events import QuotaEventLog
    from tokenmeter.enforcer.replicas.replica_presence import ReplicaPresence
    from tokenmeter.enforcer.replicas.shared_headroom import SharedHeadroom

CHECK_SECONDS_BUCKETS: Final = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05)


class EnforcerStats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._decisions: dict[str, int] = defaultdict(int)
        self._fail_open: dict[str, int] = defaultdict(int)  # where: enforcer | client
        self._policy_loads: dict[str, int] = defaultdict(int)  # outcome: loaded | rejected
        self._refresh_errors = 0
        self._check_seconds = Histogram("tokenmeter_enforcer_check_seconds", CHECK_SECONDS_BUCKETS)

    def count_check(self, action: str, seconds: float) -> None:
        with self._lock:
            self._decisions[action] += 1
        self._check_seconds.observe(seconds)

    def count_fail_open(self, where: str, calls: int = 1) -> None:
        if calls:
            with self._lock:
                self._fail_open[where] += calls

    def fail_open_totals(self) -> dict[str, int]:
        """Calls let through unchecked since start, by where: enforcer | client."""
        with self._lock:
            return {"enforcer": self._fail_open["enforcer"], "client": self._fail_open["client"]}

    def count_policy_load(self, outcome: str) -> None:
        with self._lock:
            self._policy_loads[outcome] += 1

    def count_refresh_error(self) -> None:
        with self._lock:
            self._refresh_errors += 1

    def render(
        self,
        utilisation: Iterable[tuple[str, str, str, float]],
        gauges: dict[str, tuple[str, float]],
    ) -> str:
        """``utilisation``: (budget, scope, subject, ratio); ``gauges``: name -> (help, value)."""
        with self._lock:
            decisions = sorted(self._decisions.items())
            fail_open = sorted(self._fail_open.items())
            loads = sorted(self._policy_loads.items())
            refresh_errors = self._refresh_errors
        lines: list[str] = []

        def family(name: str, kind: str, help_text: str, samples: Iterable[str]) -> None:
            lines.extend((f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples))

        family("tokenmeter_enforcer_checks_total", "counter", "Checks answered, by decision.",
               (f'tokenmeter_enforcer_checks_total{{decision="{action}"}} {n}' for action, n in decisions))  # fmt: skip
        family(
            "tokenmeter_enforcer_fail_open_total", "counter",
            "Calls let through without a usable answer: where=enforcer (no recent usage from the store), "
            "where=client (the app could not reach the enforcer; reported with its next check).",
            (f'tokenmeter_enforcer_fail_open_total{{where="{where}"}} {n}' for where, n in fail_open),
        )  # fmt: skip
        family("tokenmeter_enforcer_policy_loads_total", "counter", "Policy file loads, by outcome.",
               (f'tokenmeter_enforcer_policy_loads_total{{outcome="{o}"}} {n}' for o, n in loads))  # fmt: skip
        family("tokenmeter_enforcer_refresh_errors_total", "counter", "Usage refreshes that failed.",
               (f"tokenmeter_enforcer_refresh_errors_total {refresh_errors}",))  # fmt: skip
        family("tokenmeter_enforcer_check_seconds", "histogram", "Time to answer one check.",
               self._check_seconds.lines())  # fmt: skip
        family(
            "tokenmeter_quota_utilisation_ratio", "gauge",
            "Used plus reserved, as a ratio of the limit, per budget and subject in the current period.",
            (
                f'tokenmeter_quota_utilisation_ratio{{budget="{label_value(budget)}",scope="{scope}",'
                f'subject="{label_value(subject)}"}} {ratio:.6g}'
                for budget, scope, subject, ratio in utilisation
            ),
        )  # fmt: skip
        for name, (help_text, value) in sorted(gauges.items()):
            family(name, "gauge", help_text, (f"{name} {value:.6g}",))
        return "\n".join(lines) + "\n"


def utilisation_ratios(enforcer: Enforcer) -> list[tuple[str, str, str, float]]:
    """(budget, scope, subject, ratio) per budget and subject now, for :meth:`EnforcerStats.render`."""
    return [(state.budget.name, state.budget.scope, state.subject, state.ratio) for state in enforcer.budget_states()]


def enforcer_gauges(
    enforcer: Enforcer, events: QuotaEventLog, presence: ReplicaPresence
) -> dict[str, tuple[str, float]]:
    """The enforcer's gauges now, for :meth:`EnforcerStats.render`: name -> (help, value)."""
    age = enforcer.snapshot_age()
    return {
        "tokenmeter_enforcer_reservations": ("Reservations in flight.", float(enforcer.reservations())),
        "tokenmeter_enforcer_snapshot_age_seconds": (
            "Age of the usage snapshot checks use (-1: none yet).", age if age != float("inf") else -1.0),
        "tokenmeter_enforcer_events_pending": ("Quota events not yet written.", float(events.pending())),
        "tokenmeter_enforcer_events_dropped": ("Quota events dropped (store down, buffer full).",
                                               float(events.dropped)),
        **_headroom_gauges(enforcer.headroom),
        "tokenmeter_enforcer_uncoordinated_replicas": (
            "Other enforcers on this store that do not share budget headroom with this one.",
            float(len(presence.warnings))),
    }  # fmt: skip


def _headroom_gauges(headroom: SharedHeadroom | None) -> dict[str, tuple[str, float]]:
    """How the leases shared with other replicas are doing (none without replicas)."""
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
