"""Top-up requests in a real store (chDB): events recorded once and read back exactly; approving records the
top-up in the credits ledger once, however often the approval is sent; refused actions record nothing."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tokenmeter.credits.approvals import Action, ApprovalError, TopUpRequest, action_event, requested_event
from tokenmeter.enforcer.wallet_policy import Approvals
from tokenmeter.store.credit_ledger import wallet_entries
from tokenmeter.store.credit_requests import (
    UnknownRequestError,
    act_on,
    events_by_request,
    open_request,
    record_event,
    request_events,
)

RULES = Approvals(approvers=("dept-heads-{subject}",), second_level_above=Decimal(50000),
                  second_level_approvers=("finance",))  # fmt: skip
SHANGHAI = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 11, 3, 9, 30, 0, 123456, tzinfo=UTC)
ACCOUNT = "dept-credits/研发部"


def _request(request_id: str = "r-1", amount: str = "60000.5", subject: str = "研发部") -> TopUpRequest:
    return TopUpRequest(request_id, f"dept-credits/{subject}", "dept-credits", subject, Decimal(amount),
                        "quarter-end reports; it's \"urgent\"", "alice", NOW, NOW + timedelta(days=7))  # fmt: skip


def _act(store: Any, action: Action, minutes: int, request_id: str = "r-1") -> Any:
    return act_on(store, request_id, action, RULES, zone=SHANGHAI, now=NOW + timedelta(minutes=minutes))


HEAD = Action("approved", "dora", ("dept-heads-研发部",), "fine by me")
FINANCE = Action("approved", "fiona", ("finance",))


def test_two_levels_then_one_top_up_however_often_the_last_approval_is_sent(migrated_store: Any) -> None:
    assert open_request(migrated_store, requested_event(_request()), RULES, NOW).recorded is True
    first = _act(migrated_store, HEAD, 1)
    assert (first.recorded, first.state.status, first.top_up_recorded) == (True, "pending", False)
    final = _act(migrated_store, FINANCE, 2)
    assert (final.recorded, final.state.status, final.top_up_recorded) == (True, "approved", True)
    again = _act(migrated_store, FINANCE, 3)  # the button clicked twice
    assert (again.recorded, again.state.status, again.top_up_recorded) == (False, "approved", False)
    (entry,) = wallet_entries(migrated_store, ACCOUNT)
    assert (entry.entry_id, entry.kind, entry.amount, entry.actor) == (
        "top_up:r-1",
        "top_up",
        Decimal("60000.5"),
        "fiona",
    )
    assert entry.at == NOW + timedelta(minutes=2) and entry.valid_until == datetime(2027, 1, 1, tzinfo=SHANGHAI)
    assert "dora (level 1), fiona (level 2)" in entry.reason and 'it\'s "urgent"' in entry.reason
    stored = request_events(migrated_store, "r-1")
    assert [event.event_id for event in stored] == ["r-1:requested", "r-1:approved:dora", "r-1:approved:fiona"]
    assert stored[1] == action_event(_request(), HEAD, NOW + timedelta(minutes=1))  # read back exactly


def test_a_request_sent_again_is_one_request_and_its_id_cannot_name_another(migrated_store: Any) -> None:
    open_request(migrated_store, requested_event(_request()), RULES, NOW)
    later = replace(_request(), created_at=NOW + timedelta(minutes=5), expires_at=NOW + timedelta(days=8))
    repeat = open_request(migrated_store, requested_event(later), RULES, NOW + timedelta(minutes=5))
    assert repeat.recorded is False and repeat.state.request == _request()
    with pytest.raises(ApprovalError, match="'r-1': this id names another request already") as error:
        open_request(migrated_store, requested_event(_request(amount="7")), RULES, NOW)
    assert error.value.problem == "conflict"
    with pytest.raises(ApprovalError, match="recorded before with other content"):
        record_event(migrated_store, replace(requested_event(_request()), actor_groups=("x",)))
    assert migrated_store.query("SELECT count() FROM credit_request_events").result_rows[0][0] == 1


def test_refused_actions_record_nothing(migrated_store: Any) -> None:
    with pytest.raises(UnknownRequestError, match="no top-up request 'nope'"):
        _act(migrated_store, HEAD, 1, "nope")
    open_request(migrated_store, requested_event(_request()), RULES, NOW)
    with pytest.raises(ApprovalError, match="alice asked for it and may not approve it"):
        _act(migrated_store, Action("approved", "alice", ("dept-heads-研发部",)), 1)
    with pytest.raises(ApprovalError, match="that takes a member of dept-heads-研发部"):
        _act(migrated_store, FINANCE, 1)
    with pytest.raises(ApprovalError, match="it is expired already") as error:
        _act(migrated_store, HEAD, 7 * 24 * 60)
    assert error.value.problem == "expired"
    assert [event.kind for event in request_events(migrated_store, "r-1")] == ["requested"]
    assert wallet_entries(migrated_store, ACCOUNT) == []


def test_an_approval_recorded_before_a_crash_gets_its_top_up_on_the_retry(migrated_store: Any) -> None:
    request = _request(amount="100")
    open_request(migrated_store, requested_event(request), RULES, NOW)
    record_event(migrated_store, action_event(request, HEAD, NOW + timedelta(minutes=1)))  # the ledger write never ran
    assert wallet_entries(migrated_store, ACCOUNT) == []
    retry = _act(migrated_store, HEAD, 2)
    assert (retry.recorded, retry.top_up_recorded, retry.state.status) == (False, True, "approved")
    assert [entry.amount for entry in wallet_entries(migrated_store, ACCOUNT)] == [Decimal(100)]


def test_requests_are_listed_by_wallet_or_subject(migrated_store: Any) -> None:
    for request in (_request("r-1"), _request("r-2", subject="销售部"), _request("r-3")):
        open_request(migrated_store, requested_event(request), RULES, NOW)
    assert sorted(events_by_request(migrated_store)) == ["r-1", "r-2", "r-3"]
    assert sorted(events_by_request(migrated_store, account=ACCOUNT)) == ["r-1", "r-3"]
    assert sorted(events_by_request(migrated_store, wallet="dept-credits")) == ["r-1", "r-2", "r-3"]
    assert events_by_request(migrated_store, wallet="other") == {}
