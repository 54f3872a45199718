"""Who an LLM call is for: user, department, app and session, and the answer it helps produce.

The attribution lives in a context variable, so it follows the code that runs a
request: nested ``with attribution(...)`` blocks, asyncio tasks created inside
them, and nothing else (a new thread starts empty, like any context variable).

Entering :func:`attribution` also puts the same fields into the OpenTelemetry
context's W3C baggage (keys from :mod:`tokenmeter.semconv`), so a process that
the call reaches over HTTP, such as Chatchat's own loopback ``/v1`` routes,
receives them in the ``baggage`` header. :func:`current_attribution` reads the
context variable first, then the current baggage for fields still missing,
then the resource's ``service.name`` for the app.

``message`` names the answer a call helps produce (Chatchat's ``message_id``, or the app's
own id): ratings of that answer are joined to the call by it. It is on every call's span
but, like ``session``, never a dimension of the usage counters or of quota checks (one
series per answer would be far too many).
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
from collections.abc import Callable, Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, Final, ParamSpec, TypeVar, cast

from opentelemetry import baggage as otel_baggage
from opentelemetry import context as otel_context

from tokenmeter import semconv

__all__ = [
    "MAX_VALUE_LENGTH",
    "Attribution",
    "AttributionScope",
    "attribution",
    "bind_message",
    "current_attribution",
    "default_app",
    "sanitize",
]

logger = logging.getLogger(__name__)

# Longest value kept, in characters. Five values of this length still fit the
# 8192-byte W3C baggage header unless many of their characters are non-ASCII.
MAX_VALUE_LENGTH: Final = 256

# C0 and C1 control characters, and lone surrogates (which cannot be encoded as
# UTF-8, so could not be sent in a header or exported).
_UNWANTED = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def sanitize(value: object) -> str | None:
    """``value`` as an attribution value: control characters dropped, stripped, at most 256 characters.

    Everything else (quotes, commas, ``;``, ``=``, spaces inside, any script, emoji)
    is kept verbatim. ``None`` and values that end up empty give ``None``.
    """
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    text = _UNWANTED.sub("", text).strip()
    if len(text) > MAX_VALUE_LENGTH:
        text = text[:MAX_VALUE_LENGTH].rstrip()
    return text or None


@dataclass(frozen=True, slots=True)
class Attribution:
    """Who a call is for, and for which answer. Every field is optional; values are sanitised on construction."""

    user: str | None = None
    department: str | None = None
    app: str | None = None
    session: str | None = None
    message: str | None = None

    def __post_init__(self) -> None:
        for name, _ in _BAGGAGE_KEYS:
            raw = getattr(self, name)
            clean = sanitize(raw)
            if clean != raw:
                object.__setattr__(self, name, clean)

    def merged(self, inner: Attribution) -> Attribution:
        """This attribution with ``inner``'s non-``None`` fields laid over it."""
        return Attribution(
            user=self.user if inner.user is None else inner.user,
            department=self.department if inner.department is None else inner.department,
            app=self.app if inner.app is None else inner.app,
            session=self.session if inner.session is None else inner.session,
            message=self.message if inner.message is None else inner.message,
        )

    def baggage_items(self) -> dict[str, str]:
        """The non-``None`` fields under their W3C baggage keys."""
        items: dict[str, str] = {}
        for name, key in _BAGGAGE_KEYS:
            value = getattr(self, name)
            if value is not None:
                items[key] = value
        return items

    @classmethod
    def from_baggage(cls, entries: Mapping[str, object]) -> Attribution:
        """The attribution carried by W3C baggage entries (other keys are ignored)."""
        return cls(**{name: entries.get(key) for name, key in _BAGGAGE_KEYS})


# Attribution field -> baggage key. The only place the two are paired.
_BAGGAGE_KEYS: Final = (
    ("user", semconv.BAGGAGE_USER),
    ("department", semconv.BAGGAGE_DEPARTMENT),
    ("app", semconv.BAGGAGE_APP),
    ("session", semconv.BAGGAGE_SESSION),
    ("message", semconv.BAGGAGE_MESSAGE),
)

_EMPTY: Final = Attribution()
_CURRENT: ContextVar[Attribution] = ContextVar("tokenmeter_attribution", default=_EMPTY)
# True inside an authoritative scope: incoming baggage is no longer believed.
_AUTHORITATIVE: ContextVar[bool] = ContextVar("tokenmeter_attribution_authoritative", default=False)


@functools.cache
def default_app() -> str | None:
    """The resource's ``service.name``, read once from the environment.

    ``OTEL_SERVICE_NAME`` wins over ``service.name`` in ``OTEL_RESOURCE_ATTRIBUTES``,
    as in the OTel SDK. ``None`` when neither sets it.
    """
    # Imported here: the SDK's resources module is slow to import and only needed once.
    from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector

    try:
        name = OTELResourceDetector().detect().attributes.get(SERVICE_NAME)
    except Exception:  # a malformed OTEL_RESOURCE_ATTRIBUTES must not break metering
        logger.warning("tokenmeter: could not read service.name from the OTel resource", exc_info=True)
        return None
    return sanitize(name)


def current_attribution() -> Attribution:
    """Who the code running now works for.

    The innermost :func:`attribution` values; fields they leave unset come from the
    current OTel baggage (attribution sent by an upstream process), unless an
    authoritative scope (the identity middleware) said not to believe it; a still
    missing app is the resource's ``service.name``.
    """
    found = _CURRENT.get()
    if not _AUTHORITATIVE.get() and None in (found.user, found.department, found.app, found.session, found.message):
        found = Attribution.from_baggage(otel_baggage.get_all()).merged(found)
    if found.app is None:
        app = default_app()
        if app is not None:
            found = replace(found, app=app)
    return found


P = ParamSpec("P")
R = TypeVar("R")


class AttributionScope:
    """The context manager (and decorator) that :func:`attribution` returns.

    One scope object may be entered once at a time; call :func:`attribution`
    again for another block. As a decorator it opens a fresh scope per call and
    works on plain and ``async def`` functions.
    """

    __slots__ = ("_authoritative", "_fields", "_tokens")

    def __init__(self, fields: Attribution, *, authoritative: bool = False) -> None:
        self._fields = fields
        self._authoritative = authoritative
        self._tokens: tuple[object, Token[Attribution], Token[bool] | None] | None = None

    def __enter__(self) -> Attribution:
        if self._tokens is not None:
            raise RuntimeError("this attribution scope is already entered; call attribution() again for another block")
        merged = _CURRENT.get().merged(self._fields)
        ctx = otel_context.get_current()
        for key, value in merged.baggage_items().items():
            ctx = otel_baggage.set_baggage(key, value, context=ctx)
        if self._authoritative:
            present = merged.baggage_items()
            for _, key in _BAGGAGE_KEYS:
                if key not in present:
                    ctx = otel_baggage.remove_baggage(key, context=ctx)
        otel_token = otel_context.attach(ctx)
        value_token = _CURRENT.set(merged)
        flag_token = _AUTHORITATIVE.set(True) if self._authoritative else None
        self._tokens = (otel_token, value_token, flag_token)
        return current_attribution()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._tokens is None:
            return
        otel_token, value_token, flag_token = self._tokens
        self._tokens = None
        try:
            if flag_token is not None:
                _AUTHORITATIVE.reset(flag_token)
            _CURRENT.reset(value_token)
        except (ValueError, RuntimeError):
            # Exited in another context than the one it was entered in (an async
            # generator finalised elsewhere, say). Nothing to restore there.
            logger.debug("tokenmeter: attribution scope exited in a different context", exc_info=True)
        otel_context.detach(cast(Any, otel_token))

    def __call__(self, func: Callable[P, R]) -> Callable[P, R]:
        fields, authoritative = self._fields, self._authoritative
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def run_async(*args: P.args, **kwargs: P.kwargs) -> Any:
                with AttributionScope(fields, authoritative=authoritative):
                    return await cast(Any, func)(*args, **kwargs)

            return cast(Callable[P, R], run_async)

        @functools.wraps(func)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            with AttributionScope(fields, authoritative=authoritative):
                return func(*args, **kwargs)

        return run


def attribution(
    user: str | None = None,
    department: str | None = None,
    app: str | None = None,
    session: str | None = None,
    *,
    message: str | None = None,
    authoritative: bool = False,
) -> AttributionScope:
    """Attribute the code in a ``with`` block (or a decorated function) to these values.

    Non-``None`` values override those of enclosing blocks; ``None`` keeps them.
    Inside, the OTel context's baggage carries the same fields, so they travel with
    outgoing requests. Both are restored on exit, also after an exception.

    ``authoritative=True`` is for whoever has established the identity of a request
    (the identity middleware): inside it, fields left unset stay unset instead of
    being filled from incoming baggage, and tokenmeter's baggage keys it leaves
    unset are removed from the context, so an untrusted caller's ``baggage`` header
    cannot attribute usage to someone else.

    ``message`` names the answer the block produces (the app's own message id): every call
    inside carries it (``tokenmeter.message.id``), so ``tokenmeter.feedback(score,
    message_id=...)`` joins a rating of that answer to the calls that cost it.

    ``with attribution(...) as who`` binds the effective :func:`current_attribution`.
    """
    return AttributionScope(
        Attribution(user=user, department=department, app=app, session=session, message=message),
        authoritative=authoritative,
    )


def bind_message(message: object) -> None:
    """Attribute the rest of the running context to the answer ``message``, without a ``with`` block.

    For hooks that learn an answer's id in the middle of a request (Chatchat makes it in
    ``add_message_to_db`` before it calls the model): the calls made after this in the same
    context, and in tasks and copied contexts started from it, carry the id. The enclosing
    scope (the identity middleware's, for a request) restores the earlier value when it exits;
    outside any scope the value stays until the context ends, as any context variable set in it.
    """
    value = sanitize(message)
    if value is None:
        return
    _CURRENT.set(_CURRENT.get().merged(Attribution(message=value)))
    # Not detached here: the enclosing scope's detach restores the context from before it.
    otel_context.attach(otel_baggage.set_baggage(semconv.BAGGAGE_MESSAGE, value))
