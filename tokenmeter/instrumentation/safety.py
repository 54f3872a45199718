"""Keep tokenmeter's own failures away from the host application.

The host never sees an internal tokenmeter error: each failure site logs its
first error (with traceback) and later ones at debug level, and the host's
work goes on unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

from tokenmeter.log_once import LogOnce

logger = logging.getLogger("tokenmeter")

_P = ParamSpec("_P")
_R = TypeVar("_R")

_errors = LogOnce(logger)
_warnings = LogOnce(logger)


def report_internal_error(site: str, exc: BaseException) -> None:
    """Log an internal error: the first one per site as an error, the rest at debug."""
    _errors.log(site, logging.ERROR, "tokenmeter internal error in %s; the application call is unaffected "
                "(further errors here are logged at debug level)", site, exc_info=exc)  # fmt: skip


def warn_once(key: str, message: str, *args: object) -> None:
    """A warning that is worth saying once per process (per key), not per call."""
    _warnings.warning(key, message, *args)


@contextmanager
def contained(site: str) -> Iterator[None]:
    """Run a block whose failure must not reach the host; the error is reported once."""
    try:
        yield
    except Exception as exc:
        report_internal_error(site, exc)


def never_raises(site: str, default: _R) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """Decorator form of `contained` for functions that return a value."""

    def decorate(func: Callable[_P, _R]) -> Callable[_P, _R]:
        def guarded(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            try:
                return func(*args, **kwargs)
            except Exception as exc:
                report_internal_error(site, exc)
                return default

        guarded.__name__ = func.__name__
        guarded.__doc__ = func.__doc__
        return guarded

    return decorate
