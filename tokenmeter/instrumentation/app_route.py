"""The app's HTTP route serving the request that makes a call (``tokenmeter.app.route``), for routing rules.

The identity middleware keeps the request's ASGI scope in a context variable while the request runs;
the route is read from it when a call is made, by then the framework has matched it: the route's
template (``/knowledge_base/{mode}/{id}/chat/completions``, from the ``route`` Starlette and FastAPI put
in the scope) rather than the path with its ids, or the path where no framework names a route.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import Any, Final

MAX_ROUTE_CHARS: Final = 256  # as RouteFeatures.app_route

_SCOPE: ContextVar[Mapping[str, Any] | None] = ContextVar("tokenmeter_request_scope", default=None)


@contextlib.contextmanager
def serving(scope: Mapping[str, Any]) -> Iterator[None]:
    """The calls made inside are made for this ASGI request."""
    token = _SCOPE.set(scope)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):  # left in another context than it was entered in: nothing to undo
            _SCOPE.reset(token)


def current_app_route() -> str | None:
    """The route of the request being served, or None outside one."""
    scope = _SCOPE.get()
    if scope is None:
        return None
    template = getattr(scope.get("route"), "path", None)
    route = template if isinstance(template, str) and template else scope.get("path")
    return route[:MAX_ROUTE_CHARS] if isinstance(route, str) and route else None
