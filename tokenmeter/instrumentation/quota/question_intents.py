"""The enforcer's routing document, held by the quota client: what the app classifies its questions with.

The policy's intents and trained classifier come from ``GET /v1/routing`` (docs/routing.md); the
question's text never leaves the app, only the intent's name goes with the check. The document is
fetched before the first chat check, and again when a check's answer names another
``routing_version`` than the one held (the policy changed). A fetch shares the check's deadline; one
that fails leaves the intent unknown (None) and is tried again after ``cache_seconds``. Nothing here
raises into a call.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from tokenmeter.instrumentation.quota.connection import EnforcerConnection
from tokenmeter.log_once import LogOnce
from tokenmeter.quota_wire import RouteFeatures

if TYPE_CHECKING:
    from tokenmeter.instrumentation.question_features import AskedQuestion
    from tokenmeter.routing.intents import IntentClassifier

ROUTING_PATH: Final = "/v1/routing"


class QuestionIntents:
    """The routing document held (by version) and its classifier. Thread-safe; one fetch at a time."""

    def __init__(self, connection: EnforcerConnection, cache_seconds: float, clock: Callable[[], float],
                 problems: LogOnce) -> None:  # fmt: skip
        self._connection = connection
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._problems = problems
        self._lock = threading.Lock()
        self._classifier: IntentClassifier | None = None
        self._version: str | None = None
        self._held = False  # a document was fetched (its version may be None: the policy has no routing)
        self._stale = True  # fetch before the next chat check
        self._next_try = float("-inf")
        self._fetching = False

    @property
    def version(self) -> str | None:
        return self._version

    def route_features(self, asked: AskedQuestion, deadline: float) -> RouteFeatures:
        """What a chat call's check carries of its question; the document is fetched first if one is due."""
        if self.should_fetch():
            try:
                answer = self._connection.get(ROUTING_PATH, deadline)
            except BaseException as exc:  # unreachable, slow, broken: the check goes on without an intent
                self.failed(exc)
                if not isinstance(exc, Exception):
                    raise
            else:
                self.fetched(*answer)
        return asked.route_features(self.classify(asked.features.question))

    async def route_features_async(self, asked: AskedQuestion, deadline: float) -> RouteFeatures:
        if self.should_fetch():
            try:
                answer = await self._connection.get_async(ROUTING_PATH, deadline)
            except BaseException as exc:  # (a cancelled task too: the next check fetches)
                self.failed(exc)
                if not isinstance(exc, Exception):
                    raise
            else:
                self.fetched(*answer)
        return asked.route_features(self.classify(asked.features.question))

    def should_fetch(self) -> bool:
        """Whether this caller should fetch the document now (it then must call ``fetched`` or ``failed``)."""
        with self._lock:
            if not self._stale or self._fetching or self._clock() < self._next_try:
                return False
            self._fetching = True
            return True

    def fetched(self, status: int, content: bytes) -> None:
        """The enforcer's answer to ``GET /v1/routing``."""
        try:
            if status != 200:
                raise ValueError(f"HTTP {status}: {content[:200].decode('utf-8', 'replace')}")
            document = json.loads(content)
            if not isinstance(document, dict):
                raise ValueError("not a routing document")
            classifier = _classifier_of(document)
        except Exception as exc:  # not JSON, not a routing document, a classifier that does not load
            self.failed(exc)
            return
        with self._lock:
            self._classifier, self._version = classifier, document.get("version")
            self._held, self._stale, self._fetching = True, False, False

    def failed(self, error: BaseException) -> None:
        """The fetch got no document: intents stay as they were (None before any) until a later try."""
        with self._lock:
            self._fetching = False
            self._next_try = self._clock() + self._cache_seconds
        self._problems.warning(("routing", type(error).__name__), "tokenmeter: the routing document (GET %s) could "
                               "not be had: %s: %s; questions are sent without an intent while it lasts (logged "
                               "once)", ROUTING_PATH, type(error).__name__, error)  # fmt: skip

    def answered(self, routing_version: str | None) -> bool:
        """A check's answer named ``routing_version``; True when it differs from the held document's (fetch again)."""
        with self._lock:
            if not self._held or routing_version == self._version:
                return False
            self._stale = True
            self._next_try = float("-inf")
            return True

    def classify(self, question: str) -> str | None:
        """The question's intent by the held document, or None (none held, or no intent matches)."""
        classifier = self._classifier
        if classifier is None or not question:
            return None
        return classifier.classify(question)


def _classifier_of(document: dict[str, Any]) -> IntentClassifier | None:
    """The classifier of a routing document; None when it has neither intents nor a trained classifier."""
    if not document.get("intents") and not document.get("classifier"):
        return None
    from tokenmeter.routing.intents import IntentClassifier  # only where a policy routes: not at instrument()

    return IntentClassifier.from_routing_document(document)
