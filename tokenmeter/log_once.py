"""Logging a lasting problem once: the first time at its level, every later time at debug.

A missing package, a bad setting or an unreachable enforcer is worth one warning, not one per
call; the repeats stay visible with debug logging on.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Hashable


class LogOnce:
    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._lock = threading.Lock()
        self._seen: set[Hashable] = set()

    def first(self, key: Hashable) -> bool:
        """True the first time ``key`` is given (thread-safe)."""
        with self._lock:
            if key in self._seen:
                return False
            self._seen.add(key)
            return True

    def log(self, key: Hashable, level: int, message: str, *args: object,
            exc_info: BaseException | bool | None = None) -> None:  # fmt: skip
        """``message`` at ``level`` the first time for ``key``, at debug after that."""
        self._logger.log(level if self.first(key) else logging.DEBUG, message, *args, exc_info=exc_info)

    def warning(self, key: Hashable, message: str, *args: object, exc_info: BaseException | bool | None = None) -> None:
        self.log(key, logging.WARNING, message, *args, exc_info=exc_info)
