"""How sharing budget headroom has gone lately, for the log, ``/healthz`` and ``/metrics``.

When the coordination server cannot be used a replica decides on its own numbers rather than
refuse every call; each such failure is counted, the first of a spell is logged, and
``/healthz`` names the last one until a write to the server works again.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


class HeadroomHealth:
    def __init__(self) -> None:
        self.failures = 0
        self.last_failure: str | None = None

    def failed(self, exc: BaseException) -> None:
        self.failures += 1
        message = f"{type(exc).__name__}: {exc}"
        if self.last_failure is None:
            logger.error("tokenmeter: cannot coordinate budget headroom with the other replicas (%s); deciding "
                         "on this replica's numbers until it works again", message)  # fmt: skip
        self.last_failure = message

    def recovered(self) -> None:
        if self.last_failure is not None:
            logger.warning("tokenmeter: coordinating budget headroom works again")
        self.last_failure = None

    def problems(self) -> list[str]:
        """The lately failed coordination, if it has not worked again since; empty when fine."""
        if self.last_failure is None:
            return []
        return [f"coordination failed lately ({self.failures} times; last: {self.last_failure}); "
                "this replica decided on its own numbers"]  # fmt: skip
