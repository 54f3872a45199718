"""tokenmeter: token metering, cost accounting and quota enforcement for LLM applications.

App-side API (light imports only):

    import tokenmeter
    tokenmeter.instrument()                       # or run under `opentelemetry-instrument`
    with tokenmeter.attribution(user="alice", department="finance"):
        client.chat.completions.create(...)
    tokenmeter.feedback(80, message_id="m-1")     # a user's rating of an answer (0 to 100)
    with tokenmeter.retrieval(len(docs), top_score=0.82):   # what a RAG app put in the prompt
        client.chat.completions.create(...)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tokenmeter.attribution import Attribution, attribution, current_attribution
from tokenmeter.feedback import feedback
from tokenmeter.instrumentation.retrieval import retrieval
from tokenmeter.quota_errors import QuotaDegraded, QuotaError, QuotaExceeded, QuotaUnavailable

if TYPE_CHECKING:
    from tokenmeter.instrumentation.instrumentor import TokenmeterInstrumentor

__all__ = [
    "Attribution",
    "QuotaDegraded",
    "QuotaError",
    "QuotaExceeded",
    "QuotaUnavailable",
    "attribution",
    "current_attribution",
    "feedback",
    "flush",
    "instrument",
    "retrieval",
    "uninstrument",
]
__version__ = "0.1.0"


def _instrumentor() -> TokenmeterInstrumentor:
    from tokenmeter.instrumentation.instrumentor import TokenmeterInstrumentor

    return TokenmeterInstrumentor()  # a singleton, as every BaseInstrumentor


def instrument(**kwargs: Any) -> None:
    """Meter every OpenAI-SDK call in this process (see TokenmeterInstrumentor for kwargs)."""
    _instrumentor().instrument(**kwargs)


def uninstrument() -> None:
    _instrumentor().uninstrument()


def flush(timeout_s: float = 10.0) -> bool:
    """Finish pending call records and export usage counters now; True if all done in time."""
    return _instrumentor().flush(timeout_s)
