"""The receiver's own counters, rendered in the Prometheus text format for /metrics."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable
from typing import Final

from tokenmeter.prometheus_text import Histogram

WRITE_SECONDS_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ReceiverStats:
    """Thread-safe counters: the event loop counts requests, the writer thread counts writes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[tuple[str, str], int] = defaultdict(int)  # (signal, outcome) -> items
        self._requests: dict[tuple[str, str, str], int] = defaultdict(int)  # (signal, transport, outcome)
        self._write_seconds = Histogram("tokenmeter_receiver_write_seconds", WRITE_SECONDS_BUCKETS)
        self._gauges: dict[str, Callable[[], float]] = {}

    def count_request(self, signal: str, transport: str, outcome: str, items: int) -> None:
        """outcome: written | duplicate | refused | rejected | throttled | unavailable | unauthorized."""
        with self._lock:
            self._requests[(signal, transport, outcome)] += 1
            self._items[(signal, outcome)] += items

    def observe_write(self, seconds: float) -> None:
        self._write_seconds.observe(seconds)

    def add_gauge(self, name: str, read: Callable[[], float]) -> None:
        self._gauges[name] = read

    def render(self) -> str:
        """Prometheus text exposition (version 0.0.4)."""
        with self._lock:
            items = sorted(self._items.items())
            requests = sorted(self._requests.items())
        lines = [
            "# HELP tokenmeter_receiver_items_total Spans, data points and log records by outcome.",
            "# TYPE tokenmeter_receiver_items_total counter",
        ]
        lines += [
            f'tokenmeter_receiver_items_total{{signal="{signal}",outcome="{outcome}"}} {count}'
            for (signal, outcome), count in items
        ]
        lines += [
            "# HELP tokenmeter_receiver_requests_total OTLP export requests by transport and outcome.",
            "# TYPE tokenmeter_receiver_requests_total counter",
        ]
        lines += [
            f'tokenmeter_receiver_requests_total{{signal="{signal}",transport="{transport}",outcome="{outcome}"}} '
            f"{count}"
            for (signal, transport, outcome), count in requests
        ]
        lines += [
            "# HELP tokenmeter_receiver_write_seconds Time of one batch insert into the store.",
            "# TYPE tokenmeter_receiver_write_seconds histogram",
        ]
        lines += self._write_seconds.lines()
        for name, read in sorted(self._gauges.items()):
            lines.append(f"# TYPE {name} gauge")
            lines.append(f"{name} {read()}")
        return "\n".join(lines) + "\n"
