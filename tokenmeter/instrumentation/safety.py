"""Keep tokenmeter's own failures away from the host application.

The host never sees an internal tokenmeter error: each failure site logs its
first error (with traceback) and later ones at debug level, and the host's
work goes on unchanged. ``with contained(site):`` guards a block,
``@never_raises(site, default)`` a whole function that returns a value.

A quota decision is not an internal error: a
:class:`~tokenmeter.instrumentation.quota.errors.QuotaError` raised on purpose
passes through both, so it reaches the host as intended.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from types import TracebackType
from typing import Final, ParamSpec, TypeVar

from tokenmeter.instrumentation.quota.errors import QuotaError
from tokenmeter.log_once import LogOnce

logger = logging.getLogger("tokenmeter")

_P = ParamSpec("_P")
_R = TypeVar("_R")

_errors = LogOnce(logger)
_warnings = LogOnce(logger)

# Raised on purpose to change what the host does; never contained.
_ON_PURPOSE: Final = (QuotaError,)


def report_internal_error(site: str, exc: BaseException) -> None:
    """Log an internal error: the first one per site as an error, the rest at debug."""
    _errors.log(site, logging.ERROR, "tokenmeter internal error in %s; the application call is unaffected "
                "(further errors here are logged at debug level)", site, exc_info=exc)  # fmt: skip


def warn_once(key: str, message: str, *args: object) -> None:
    """A warning that is worth saying once per process (per key), not per call."""
    _warnings.warning(key, message, *args)


def _is_internal(exc: BaseException) -> bool:
    """An error to contain: any ``Exception`` but a quota decision.

    BaseExceptions that are not Exceptions (KeyboardInterrupt, SystemExit,
    asyncio's CancelledError, GeneratorExit) are the host's business and pass.
    """
    return isinstance(exc, Exception) and not isinstance(exc, _ON_PURPOSE)


class contained:  # noqa: N801 - used like contextlib.suppress: `with contained(site):`
    """Run a block whose failure must not reach the host; the error is reported once per site.

    Code after the block runs either way; a ``return`` inside it returns as usual, so a
    function can fall through to its fallback value after the block. Works in async
    functions too (the block may ``await``).
    """

    __slots__ = ("site",)

    def __init__(self, site: str) -> None:
        self.site = site

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> bool:
        if exc is None or not _is_internal(exc):
            return False
        report_internal_error(self.site, exc)
        return True


def never_raises(site: str, default: _R) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """Decorator form of `contained` for functions that return a value: ``default`` on an internal error.

    For plain functions only: an ``async def`` returns its coroutine before any of its
    code runs, so guard the body of one with ``with contained(site):`` instead.
    """

    def decorate(func: Callable[_P, _R]) -> Callable[_P, _R]:
        if inspect.iscoroutinefunction(func):
            raise TypeError(f"never_raises cannot guard async {func.__qualname__}; use `with contained(site):`")

        @functools.wraps(func)
        def guarded(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            try:
                return func(*args, **kwargs)
            except Exception as exc:
                if not _is_internal(exc):
                    raise
                report_internal_error(site, exc)
                return default

        return guarded

    return decorate
