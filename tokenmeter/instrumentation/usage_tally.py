"""Usage counter increments summed in memory, handed to the SDK counters when a reader collects.

Recording one measurement in the OpenTelemetry SDK costs ~13 µs of Python (the
attributes are cleaned, hashed and sorted each time), and a metered call adds four
to the usage counters. The counters are cumulative sums, so the increments of one
series can be added up here at the cost of a dict update and given to the SDK once
per collection: a callback of an observable instrument on the same meter runs at the
start of every collection, before the reader's storage is read, and pushes what is
pending. Every reader of the provider then sees the same totals as if each call had
been added directly; nothing is exported for the hook instrument itself (it observes
nothing).

Only for an SDK meter: a no-op or foreign meter never collects, so its counters are
added directly. A tally that grows past the cardinality limit pushes on the spot
rather than hold more series than the SDK would.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable, Mapping
from typing import Any, Final

from opentelemetry.metrics import CallbackOptions, Counter, Meter, Observation

from tokenmeter.instrumentation.safety import contained

# The hook's name; it never has a data point, so no exporter shows it.
HOOK_INSTRUMENT: Final = "tokenmeter.internal.usage_tally"


class UsageTally:
    def __init__(self, max_series: int) -> None:
        self._max_series = max_series
        self._lock = threading.Lock()
        # (counter, id of the attribute map) -> [sum, the map]. usage_points reuses one map object
        # per series, so a series has one key (a second object of the same series would only split
        # its sum in two adds). Holding the map keeps its id from being reused while pending.
        self._pending: dict[tuple[Counter, int], list[Any]] = {}

    def add(self, counter: Counter, value: int | float, attributes: Mapping[str, Any]) -> None:
        key = (counter, id(attributes))
        with self._lock:
            entry = self._pending.get(key)
            if entry is not None:
                entry[0] += value
                return
            self._pending[key] = [value, attributes]
            full = len(self._pending) >= self._max_series
        if full:
            self.push()

    def push(self) -> None:
        """Add what is pending to the SDK counters (at collection, at a flush, when full)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        for (counter, _), (value, attributes) in pending.items():
            counter.add(value, attributes)

    def on_collect(self, options: CallbackOptions) -> Iterable[Observation]:
        with contained("usage tally push"):
            self.push()
        return ()


# One tally per meter: the SDK hands a second registration of the hook the first one's callback,
# so instrumenting again on the same provider must reuse the tally that callback pushes.
_TALLIES: weakref.WeakKeyDictionary[Meter, UsageTally] = weakref.WeakKeyDictionary()
_TALLIES_LOCK = threading.Lock()


def tally_for(meter: Meter, max_series: int) -> UsageTally | None:
    """The tally pushed at every collection of ``meter``'s provider; None when the meter is not the SDK's."""
    try:
        from opentelemetry.sdk.metrics import Meter as SdkMeter
    except ImportError:  # pragma: no cover - the SDK is a dependency
        return None
    if not isinstance(meter, SdkMeter):
        return None
    with _TALLIES_LOCK:
        tally = _TALLIES.get(meter)
        if tally is None:
            tally = _TALLIES[meter] = UsageTally(max_series)
            meter.create_observable_gauge(
                HOOK_INSTRUMENT,
                callbacks=[tally.on_collect],
                description="Not exported: hands tokenmeter's summed usage increments to the counters at collection.",
            )
    return tally
