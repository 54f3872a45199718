"""tokenmeter's own failures stay inside: `contained` and `never_raises` log them once and go on.

Quota decisions are raised on purpose and pass through, and so do the host's interrupts.
Each test uses its own site names: a site logs at error level once per process.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from tokenmeter.instrumentation.quota.errors import QuotaDegraded, QuotaExceeded, QuotaVerdict
from tokenmeter.instrumentation.safety import contained, never_raises

DENY = QuotaVerdict("deny", "gpt-4o", "gpt-4o", budget="team", scope="department", subject="rd", period="month",
                    used_tokens=1_000, limit_tokens=1_000)  # fmt: skip


def tokenmeter_records(caplog: pytest.LogCaptureFixture, site: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "tokenmeter" and site in r.getMessage()]


def test_an_internal_error_is_swallowed_and_logged_as_an_error_once(caplog: pytest.LogCaptureFixture) -> None:
    went_on = []
    with caplog.at_level(logging.DEBUG, logger="tokenmeter"):
        for attempt in range(3):
            with contained("safety test block"):
                raise ZeroDivisionError(f"attempt {attempt}")
            went_on.append(attempt)
    assert went_on == [0, 1, 2]
    records = tokenmeter_records(caplog, "safety test block")
    assert [r.levelno for r in records] == [logging.ERROR, logging.DEBUG, logging.DEBUG]
    assert "the application call is unaffected" in records[0].getMessage()
    assert records[0].exc_info is not None and isinstance(records[0].exc_info[1], ZeroDivisionError)


def test_a_block_without_error_runs_whole_and_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    def first_word(text: str) -> str:
        with contained("safety test return"):
            return text.split(maxsplit=1)[0]
        return "fallback"

    with caplog.at_level(logging.DEBUG, logger="tokenmeter"):
        assert first_word("hello world") == "hello"
        assert first_word("") == "fallback"  # IndexError: contained, the function falls through
    assert len(tokenmeter_records(caplog, "safety test return")) == 1


@pytest.mark.parametrize("error", [QuotaExceeded(DENY), QuotaDegraded(DENY)], ids=type)
def test_a_quota_decision_passes_through_contained(error: Exception, caplog: pytest.LogCaptureFixture) -> None:
    with (
        caplog.at_level(logging.DEBUG, logger="tokenmeter"),
        pytest.raises(type(error)) as raised,
        contained("safety test quota"),
    ):
        raise error
    assert raised.value is error
    assert tokenmeter_records(caplog, "safety test quota") == []


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit, asyncio.CancelledError])
def test_the_hosts_interrupts_pass_through(interrupt: type[BaseException], caplog: pytest.LogCaptureFixture) -> None:
    @never_raises("safety test interrupt function", None)
    def interrupted() -> None:
        raise interrupt

    with caplog.at_level(logging.DEBUG, logger="tokenmeter"):
        with pytest.raises(interrupt), contained("safety test interrupt block"):
            raise interrupt
        with pytest.raises(interrupt):
            interrupted()
    assert tokenmeter_records(caplog, "safety test interrupt") == []


def test_never_raises_returns_its_default_on_an_internal_error(caplog: pytest.LogCaptureFixture) -> None:
    @never_raises("safety test function", -1)
    def parsed(text: str) -> int:
        """The number in ``text``."""
        return int(text)

    with caplog.at_level(logging.DEBUG, logger="tokenmeter"):
        assert parsed("42") == 42
        assert parsed("forty-two") == -1
        assert parsed("x") == -1
    assert [r.levelno for r in tokenmeter_records(caplog, "safety test function")] == [logging.ERROR, logging.DEBUG]
    assert parsed.__name__ == "parsed" and parsed.__doc__ == "The number in ``text``."


def test_never_raises_lets_a_quota_decision_through(caplog: pytest.LogCaptureFixture) -> None:
    @never_raises("safety test function quota", "default")
    def checked() -> str:
        raise QuotaExceeded(DENY)

    with caplog.at_level(logging.DEBUG, logger="tokenmeter"), pytest.raises(QuotaExceeded):
        checked()
    assert tokenmeter_records(caplog, "safety test function quota") == []


def test_never_raises_refuses_an_async_function() -> None:
    async def check() -> None:
        pass

    with pytest.raises(TypeError, match="contained"):
        never_raises("safety test async", None)(check)


async def test_contained_guards_a_block_that_awaits(caplog: pytest.LogCaptureFixture) -> None:
    async def failing() -> None:
        await asyncio.sleep(0)
        raise ConnectionResetError("enforcer went away")

    with caplog.at_level(logging.DEBUG, logger="tokenmeter"), contained("safety test await"):
        await failing()
    [record] = tokenmeter_records(caplog, "safety test await")
    assert record.levelno == logging.ERROR
