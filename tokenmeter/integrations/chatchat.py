"""Langchain-Chatchat (0.3.x), with no edits to Chatchat: `opentelemetry-instrument chatchat start --api`.

Registered as the ``tokenmeter_chatchat`` OpenTelemetry instrumentor (active only where
``langchain-chatchat`` is installed). When Chatchat's API module is imported it

- adds :class:`~tokenmeter.instrumentation.asgi.IdentityMiddleware` to the FastAPI app:
  users and departments from the SSO proxy's headers or a JWT, the ``X-Tokenmeter-Quota``
  header on warn/downgrade, 429 with the quota message when a call is denied before the
  response starts; and the chat routes' quota pre-check
  (:mod:`tokenmeter.integrations.chatchat_quota`): 429 on deny for streamed answers too,
  retrieval-only knowledge-base and file answers on degrade, and the quota notices in the
  answers the WebUI shows (:mod:`tokenmeter.integrations.chatchat_notices`); and the observer
  of ``POST /chat/feedback`` that records each rating Chatchat accepts
  (:mod:`tokenmeter.integrations.chatchat_feedback`);
- wraps ``add_message_to_db`` in Chatchat's chat routes: the message id Chatchat gives an
  answer goes on the answer's calls (``tokenmeter.message.id``), so its rating joins them;
- makes Chatchat's own API address a hop (:mod:`tokenmeter.instrumentation.hop_servers`):
  agent chat calls Chatchat's ``/v1`` on loopback, which calls the model platform; only
  that second call is billed, attributed through the baggage the first one carries;
- runs the tasks of ``run_in_thread_pool`` (knowledge-base ingestion embeds documents in
  a thread pool) in the caller's context, so their embeddings belong to the request's user;
- reports what knowledge-base chat retrieved (the passages in the prompt and the best relevance
  score) for its model call (:mod:`tokenmeter.integrations.chatchat_retrieval`).

In the ``chatchat start`` launcher it makes stopping graceful: the launcher SIGKILLs its
servers when it is stopped; with :mod:`tokenmeter.integrations.chatchat_launcher` it sends
SIGTERM first and waits, so the API server exports its usage before it ends.

Nothing is imported from Chatchat until Chatchat imports it itself.
"""

from __future__ import annotations

import contextvars
import functools
import logging
from collections.abc import Callable, Collection
from typing import Any, Final

import wrapt
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor

from tokenmeter.instrumentation.hop_servers import PROCESS_HOP_SERVERS
from tokenmeter.instrumentation.safety import contained
from tokenmeter.integrations.chatchat_launcher import STARTUP_MODULE, make_stops_graceful
from tokenmeter.integrations.chatchat_retrieval import KB_CHAT_MODULE, VECTORSTORES_MODULE, on_kb_chat, on_vectorstores

logger = logging.getLogger(__name__)

SERVER_APP_MODULE: Final = "chatchat.server.api_server.server_app"
CHAT_ROUTES_MODULE: Final = "chatchat.server.api_server.chat_routes"
UTILS_MODULE: Final = "chatchat.server.utils"
_MARK: Final = "_tokenmeter_identity_added"
_SITE: Final = "Chatchat integration"


def add_identity_middleware(app: Any) -> None:
    """Add the identity middleware and the routes' quota pre-check to a FastAPI app once (before it starts)."""
    from tokenmeter.instrumentation.asgi import IdentityMiddleware
    from tokenmeter.instrumentation.instrumentor import TokenmeterInstrumentor
    from tokenmeter.integrations.chatchat_feedback import ChatchatFeedbackObserver
    from tokenmeter.integrations.chatchat_quota import ChatchatQuotaPrecheck

    if getattr(app, _MARK, False):
        return
    # add_middleware puts the newest outermost: identity first, then the pre-check and the
    # ratings' observer, which need the user.
    app.add_middleware(ChatchatFeedbackObserver)
    app.add_middleware(ChatchatQuotaPrecheck, client=TokenmeterInstrumentor.quota_client,
                       default_model=_default_llm, notice_languages=_notice_languages())  # fmt: skip
    app.add_middleware(IdentityMiddleware)
    setattr(app, _MARK, True)


def _notice_languages() -> str:
    from tokenmeter.settings import get_settings

    try:
        return get_settings().quota_notice
    except Exception:  # invalid settings: the identity middleware is off and says why
        return "zh+en"


def _default_llm() -> str:
    from chatchat.server.utils import get_default_llm

    return str(get_default_llm())


def register_api_server_as_hop() -> None:
    """Chatchat's own API (basic_settings.API_SERVER) forwards LLM calls: calls to it are hops."""
    from chatchat.settings import Settings  # imported by Chatchat already when this runs

    server = Settings.basic_settings.API_SERVER
    port = int(server.get("port", 7861))
    for host in {str(server.get("host", "127.0.0.1")), str(server.get("public_host", "127.0.0.1"))}:
        PROCESS_HOP_SERVERS.add(host, port)
    public_port = server.get("public_port")
    if public_port:
        PROCESS_HOP_SERVERS.add(str(server.get("public_host", "127.0.0.1")), int(public_port))


def _on_server_app(module: Any) -> None:
    with contained(_SITE):  # on failure Chatchat runs as before, without identity
        register_api_server_as_hop()
        if getattr(module, "app", None) is not None:
            add_identity_middleware(module.app)
        wrapt.wrap_function_wrapper(module, "create_app", _create_app)
        logger.info("tokenmeter: Chatchat API instrumented (identity middleware, hop %s)", SERVER_APP_MODULE)


def _create_app(wrapped: Callable[..., Any], _instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    app = wrapped(*args, **kwargs)
    with contained(_SITE):
        add_identity_middleware(app)
    return app


def _on_chat_routes(module: Any) -> None:
    from tokenmeter.integrations.chatchat_feedback import bind_message_id

    with contained(_SITE):  # on failure answers are metered as before, without their message id
        wrapt.wrap_function_wrapper(module, "add_message_to_db", bind_message_id)


def _on_utils(module: Any) -> None:
    with contained(_SITE):
        wrapt.wrap_function_wrapper(module, "run_in_thread_pool", _run_in_thread_pool)


def _run_in_thread_pool(wrapped: Callable[..., Any], _instance: Any, args: tuple[Any, ...],
                        kwargs: dict[str, Any]) -> Any:  # fmt: skip
    """run_in_thread_pool(func, params): each task runs in a copy of the caller's context."""
    arguments = list(args)
    func = kwargs.pop("func") if "func" in kwargs else arguments.pop(0)
    captured = contextvars.copy_context()

    @functools.wraps(func)
    def in_callers_context(*task_args: Any, **task_kwargs: Any) -> Any:
        return captured.copy().run(func, *task_args, **task_kwargs)  # one copy per task: threads run at once

    return wrapped(in_callers_context, *arguments, **kwargs)


class ChatchatInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Loaded by `opentelemetry-instrument`; tokenmeter's own instrumentor meters the LLM calls."""

    _hooked = False

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("langchain-chatchat >= 0.3",)

    def _instrument(self, **kwargs: Any) -> None:
        if type(self)._hooked:  # post-import hooks cannot be removed; add them once per process
            return
        type(self)._hooked = True
        wrapt.register_post_import_hook(_on_server_app, SERVER_APP_MODULE)
        wrapt.register_post_import_hook(_on_chat_routes, CHAT_ROUTES_MODULE)
        wrapt.register_post_import_hook(_on_utils, UTILS_MODULE)
        wrapt.register_post_import_hook(on_kb_chat, KB_CHAT_MODULE)
        wrapt.register_post_import_hook(on_vectorstores, VECTORSTORES_MODULE)
        wrapt.register_post_import_hook(make_stops_graceful, STARTUP_MODULE)

    def _uninstrument(self, **kwargs: Any) -> None:
        # The hooks stay (wrapt cannot remove them); the middleware stays on an app that exists.
        pass
