"""Ratings of answers: ``tokenmeter.feedback(score, message_id=...)``, one OTel log record per rating.

A rating travels the same OTLP path as the calls it rates and lands in the store's
``answer_ratings``, joined to those calls by the answer's key: the app's message id (the one
its calls carried through ``attribution(message=...)``, or Chatchat's ``message_id``) or a
call's response id. The record is an event named ``tokenmeter.feedback`` (also as the
attribute ``event.name``) of the instrumentation scope ``tokenmeter``; its attributes are in
docs/instrumentation.md ("Ratings").

Who rated is the current attribution unless given. The reason is kept as a keyed hash (as
prompts are, ``TOKENMETER_HASH_KEY``); its text only with
``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT``.

Bad arguments raise ``ValueError`` (the caller's bug); tokenmeter's own failures never reach
the caller: they are logged once and the rating is dropped.
"""

from __future__ import annotations

import atexit
import math
import numbers
import threading
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

from tokenmeter import semconv
from tokenmeter.instrumentation.attribute_maps import AttributeMap, put
from tokenmeter.instrumentation.attribution import Attribution, current_attribution, sanitize
from tokenmeter.instrumentation.content_hash import ContentHasher
from tokenmeter.instrumentation.safety import contained
from tokenmeter.settings import Settings, capture_message_content, get_settings, hash_key_bytes

if TYPE_CHECKING:  # imported when first needed: `import tokenmeter` stays light
    from tokenmeter.instrumentation.telemetry_outputs import RatingLog

__all__ = ["MAX_SCORE", "RatingSink", "feedback", "rating_attributes", "rating_sink", "use_rating_sink"]

MAX_SCORE: Final = 100  # Chatchat's scale: feedback_score 0 to 100


@dataclass(frozen=True)
class RatingSink:
    """Where ratings go (the rating log) and how their reasons are kept (hasher, content opt-in)."""

    log: RatingLog
    hasher: ContentHasher
    capture_content: bool


def rating_sink(log: RatingLog, settings: Settings) -> RatingSink:
    """A sink on ``log`` that hashes reasons with the settings' TOKENMETER_HASH_KEY, as prompts are."""
    return RatingSink(log, ContentHasher(hash_key_bytes(settings)), capture_message_content())


class _ProcessSinks:
    """The instrumented process's sink (``instrument()`` hands it over), else one made at the first rating."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._instrumented: RatingSink | None = None
        self._standalone: RatingSink | None = None  # for a process that never instrumented

    def use(self, sink: RatingSink | None) -> None:
        with self._lock:
            self._instrumented = sink

    def current(self) -> RatingSink:
        with self._lock:
            if self._instrumented is not None:
                return self._instrumented
            if self._standalone is None:
                from tokenmeter import __version__
                from tokenmeter.instrumentation.telemetry_outputs import RatingLog

                log = RatingLog(None, __version__)
                self._standalone = rating_sink(log, get_settings())
                atexit.register(log.flush)  # no instrumentor's exit hooks to flush it
            return self._standalone


_SINKS: Final = _ProcessSinks()


def use_rating_sink(sink: RatingSink | None) -> None:
    """``instrument()`` hands over its sink (ratings then go where its telemetry goes); ``None`` takes it back."""
    _SINKS.use(sink)


def feedback(
    score: float,
    *,
    message_id: str | None = None,
    response_id: str | None = None,
    reason: str | None = None,
    user: str | None = None,
    department: str | None = None,
    app: str | None = None,
) -> None:
    """Record a rating of one answer: ``score`` from 0 to 100, the answer named by exactly one of
    ``message_id`` (the app's id, as given to ``attribution(message=...)``) or ``response_id``
    (a call's ``gen_ai.response.id``). A later rating of the same answer replaces the earlier.

    ``user``, ``department``, ``app``: who rated; each left out comes from the current attribution.
    Raises ``ValueError`` naming the bad argument; never raises for tokenmeter's own failures.
    """
    value = checked_score(score)
    key_attribute, key = answer_key(message_id, response_id)
    reason_text = checked_reason(reason)
    who = current_attribution().merged(Attribution(user=user, department=department, app=app))
    with contained("rating (tokenmeter.feedback)"):
        sink = _SINKS.current()
        logger = sink.log.logger()
        if logger is None:  # nowhere to send it: said once when the log was chosen
            return
        attributes = rating_attributes(value, (key_attribute, key), who, reason_text, sink)
        logger.emit(_log_record(attributes))


def checked_score(score: object) -> float:
    if isinstance(score, bool) or not isinstance(score, numbers.Real | Decimal):
        raise ValueError(f"score must be a number from 0 to {MAX_SCORE}, not {score!r}")
    value = float(score)
    if not math.isfinite(value) or not 0 <= value <= MAX_SCORE:
        raise ValueError(f"score must be from 0 to {MAX_SCORE} (a finite number), not {score!r}")
    return value


def answer_key(message_id: object, response_id: object) -> tuple[str, str]:
    """The attribute that names the rated answer and its value, from exactly one of the two ids."""
    if (message_id is None) == (response_id is None):
        raise ValueError(
            "give exactly one of message_id (the app's id of the answer, as in attribution(message=...)) "
            "or response_id (a call's gen_ai.response.id)"
        )
    name, attribute, value = (
        ("message_id", semconv.TM_MESSAGE_ID, message_id)
        if message_id is not None
        else ("response_id", semconv.GEN_AI_RESPONSE_ID, response_id)
    )
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"{name} must be a string, not {type(value).__name__}")
    # A message id is cleaned as attribution(message=...) cleans it, so the two still match;
    # a response id is compared with the span's as the server sent it.
    clean = sanitize(value) if name == "message_id" else (str(value) if str(value).strip() else None)
    if clean is None:
        raise ValueError(f"{name} is empty")
    return attribute, clean


def checked_reason(reason: object) -> str | None:
    if reason is None:
        return None
    if not isinstance(reason, str):
        raise ValueError(f"reason must be a string, not {type(reason).__name__}")
    return reason if reason.strip() else None


def rating_attributes(
    score: float, answer: tuple[str, str], who: Attribution, reason: str | None, sink: RatingSink
) -> AttributeMap:
    """The record's attributes: what it is, score, answer, who rated, the reason's hash (its text if opted in)."""
    key_attribute, key = answer
    attributes: AttributeMap = {
        semconv.EVENT_NAME: semconv.EVENT_FEEDBACK,
        semconv.TM_FEEDBACK_SCORE: score,
        key_attribute: key,
    }
    put(attributes, semconv.ENDUSER_ID, who.user)
    put(attributes, semconv.TM_DEPARTMENT, who.department)
    put(attributes, semconv.TM_APP, who.app)
    if reason is not None:
        attributes[semconv.TM_FEEDBACK_REASON_HASH] = sink.hasher.hash_text(reason)
        if sink.capture_content:
            attributes[semconv.TM_FEEDBACK_REASON] = reason
    return attributes


def _log_record(attributes: AttributeMap) -> Any:
    """The rating as an API log record, timestamped now (a later rating of an answer replaces an earlier one)."""
    from opentelemetry._logs import LogRecord, SeverityNumber

    now = time.time_ns()
    fields: dict[str, Any] = {"timestamp": now, "observed_timestamp": now, "severity_number": SeverityNumber.INFO,
                              "severity_text": "INFO", "attributes": attributes}  # fmt: skip
    try:
        return LogRecord(**fields, event_name=semconv.EVENT_FEEDBACK)
    except TypeError:  # an OTel API without event names: the event.name attribute still says what it is
        return LogRecord(**fields)
