"""The receiver's own counters, rendered in the Prometheus text format for /metrics."""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Mapping
from typing import Final

from tokenmeter.server.prometheus_text import Histogram

WRITE_SECONDS_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
RATE_WINDOW_SECONDS: Final = 60
STORED_OUTCOMES: Final = frozenset({"written", "duplicate"})  # accepted: in the store (once)


class ReceiverStats:
    """Thread-safe counters: the event loop counts requests, the writer thread counts writes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[tuple[str, str], int] = defaultdict(int)  # (signal, outcome) -> items
        self._requests: dict[tuple[str, str, str], int] = defaultdict(int)  # (signal, transport, outcome)
        self._rejected_points: dict[tuple[str, str], int] = defaultdict(int)  # (metric, reason)
        self._write_seconds = Histogram("tokenmeter_receiver_write_seconds", WRITE_SECONDS_BUCKETS)
        self._gauges: dict[str, Callable[[], float]] = {}
        # Items accepted per wall-clock second, for the last minute (the web page's ingest rate).
        self._recent: deque[list[int]] = deque()
        self._last_accepted_at: float | None = None

    def count_request(self, signal: str, transport: str, outcome: str, items: int) -> None:
        """outcome: written | duplicate | refused | rejected | throttled | unavailable | unauthorized."""
        with self._lock:
            self._requests[(signal, transport, outcome)] += 1
            self._items[(signal, outcome)] += items
            if outcome in STORED_OUTCOMES and items:
                now = time.time()
                self._last_accepted_at = now
                second = int(now)
                if self._recent and self._recent[-1][0] == second:
                    self._recent[-1][1] += items
                else:
                    self._recent.append([second, items])
                while self._recent[0][0] <= second - RATE_WINDOW_SECONDS:
                    self._recent.popleft()

    def count_rejected_points(self, rejected: Mapping[tuple[str, str], int]) -> None:
        """Points of tokenmeter's counters the guard refused, by (metric, reason)."""
        with self._lock:
            for key, points in rejected.items():
                self._rejected_points[key] += points

    def activity(self) -> dict[str, float | int | None]:
        """When data last arrived (Unix seconds), items per second over the last minute, items accepted in all."""
        now = int(time.time())
        with self._lock:
            recent = sum(items for second, items in self._recent if second > now - RATE_WINDOW_SECONDS)
            accepted = sum(count for (_signal, outcome), count in self._items.items() if outcome in STORED_OUTCOMES)
            return {"last_accepted_at": self._last_accepted_at, "items_per_second": recent / RATE_WINDOW_SECONDS,
                    "items_accepted": accepted}  # fmt: skip

    def observe_write(self, seconds: float) -> None:
        self._write_seconds.observe(seconds)

    def add_gauge(self, name: str, read: Callable[[], float]) -> None:
        self._gauges[name] = read

    def render(self) -> str:
        """Prometheus text exposition (version 0.0.4)."""
        with self._lock:
            items = sorted(self._items.items())
            requests = sorted(self._requests.items())
            rejected = sorted(self._rejected_points.items())
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
            "# HELP tokenmeter_receiver_rejected_points_total Points of tokenmeter's counters refused as not usage.",
            "# TYPE tokenmeter_receiver_rejected_points_total counter",
        ]
        lines += [
            f'tokenmeter_receiver_rejected_points_total{{metric="{metric}",reason="{reason}"}} {count}'
            for (metric, reason), count in rejected
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
