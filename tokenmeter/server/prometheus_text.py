"""Pieces of the Prometheus text exposition format shared by serve's and the enforcer's /metrics."""

from __future__ import annotations

import threading
from collections.abc import Sequence


def label_value(text: str) -> str:
    """A label value: backslash, double quote and newline escaped."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Histogram:
    """A thread-safe histogram with fixed bucket bounds, rendered as ``name_bucket``/``_sum``/``_count``."""

    def __init__(self, name: str, bounds: Sequence[float]) -> None:
        self.name = name
        self._bounds = tuple(bounds)
        self._lock = threading.Lock()
        self._counts = [0] * (len(self._bounds) + 1)  # the last one is +Inf
        self._sum = 0.0
        self._count = 0

    def observe(self, value: float) -> None:
        with self._lock:
            self._sum += value
            self._count += 1
            for index, bound in enumerate(self._bounds):
                if value <= bound:
                    self._counts[index] += 1
                    return
            self._counts[-1] += 1

    def lines(self) -> list[str]:
        with self._lock:
            counts, total, count = list(self._counts), self._sum, self._count
        lines = []
        cumulative = 0
        for bound, bucket in zip((*self._bounds, float("inf")), counts, strict=True):
            cumulative += bucket
            label = "+Inf" if bound == float("inf") else repr(bound)
            lines.append(f'{self.name}_bucket{{le="{label}"}} {cumulative}')
        return [*lines, f"{self.name}_sum {total}", f"{self.name}_count {count}"]
