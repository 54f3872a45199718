"""Top-up requests' pure core: who may approve or reject, the levels, expiry, repeats and replays."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenmeter.credits.approvals import (
    ApprovalError,
    RequestEvent,
    RequestState,
    TopUpRequest,
    apply_event,
    fold,
    opened,
    top_up_entry,
)
from tokenmeter.credits.ledger import check_entry
from tokenmeter.enforcer.wallet_policy import Approvals

RULES = Approvals(approvers=("dept-heads-{subject}",), second_level_above=Decimal(50000),
                  second_level_approvers=("finance",))  # fmt: skip
START = datetime(2026, 12, 30, 10, tzinfo=UTC)
HEADS = "dept-heads-研发部"
SHANGHAI = ZoneInfo("Asia/Shanghai")


def _request(amount: str = "1000", request_id: str = "r-1") -> TopUpRequest:
    return TopUpRequest(request_id, "dept-credits/研发部", "dept-credits", "研发部", Decimal(amount),
                        "quarter-end reports", "alice", START, START + timedelta(days=7))  # fmt: skip


def _event(request: TopUpRequest, kind: str, actor: str, hours: float, *groups: str, comment: str = "") -> RequestEvent:
    return RequestEvent(f"{request.request_id}:{kind}:{actor}", request, kind, actor,  # type: ignore[arg-type]
                        START + timedelta(hours=hours), tuple(groups), comment)  # fmt: skip


def _open(request: TopUpRequest) -> RequestState:
    return opened(_event(request, "requested", request.requester, 0), RULES)


def test_one_head_approves_a_small_request_and_its_top_up_lasts_to_the_end_of_the_local_year() -> None:
    request = _request()
    state = apply_event(_open(request), _event(request, "approved", "bob", 2, HEADS, comment="ok"), RULES)
    assert (state.status, state.levels_needed, [(a.level, a.by) for a in state.approvals]) == (
        "approved",
        1,
        [(1, "bob")],
    )
    # Approved at 2026-12-30 12:00 UTC = 20:00 in Shanghai: the year's end there, not in UTC.
    entry = check_entry(top_up_entry(state, SHANGHAI))
    assert (entry.entry_id, entry.kind, entry.amount, entry.actor) == ("top_up:r-1", "top_up", Decimal(1000), "bob")
    assert entry.valid_until == datetime(2027, 1, 1, tzinfo=SHANGHAI)
    assert "quarter-end reports" in entry.reason and "bob (level 1)" in entry.reason
    late = apply_event(_open(request), _event(request, "approved", "bob", 30, HEADS), RULES)  # 2027-01-01 00:00 there
    assert top_up_entry(late, SHANGHAI).valid_until == datetime(2028, 1, 1, tzinfo=SHANGHAI)


def test_above_the_second_level_a_head_then_finance_approve_as_two_people() -> None:
    request = _request("50000.01")
    state = _open(request)
    assert state.levels_needed == 2
    with pytest.raises(
        ApprovalError, match="may not approve it at level 1 of 2: that takes a member of dept-heads-研发部"
    ):
        apply_event(state, _event(request, "approved", "fiona", 1, "finance"), RULES)
    state = apply_event(state, _event(request, "approved", "dora", 1, HEADS, "finance"), RULES)
    assert (state.status, state.next_level) == ("pending", 2)
    with pytest.raises(ApprovalError, match="dora gave level 1 already; level 2 takes another person") as error:
        apply_event(state, replace(_event(request, "approved", "dora", 2, HEADS, "finance"), event_id="another"), RULES)
    assert error.value.problem == "forbidden"
    with pytest.raises(ApprovalError, match="that takes a member of finance"):
        apply_event(state, _event(request, "approved", "bob", 2, HEADS), RULES)
    state = apply_event(state, _event(request, "approved", "fiona", 3, "finance"), RULES)
    assert state.status == "approved" and [(a.level, a.by) for a in state.approvals] == [(1, "dora"), (2, "fiona")]
    assert top_up_entry(state, UTC).actor == "fiona"


def test_the_requester_never_approves_or_rejects_but_may_cancel() -> None:
    request = _request()
    state = _open(request)
    for kind in ("approved", "rejected"):
        with pytest.raises(ApprovalError, match="'r-1': alice asked for it and may not") as error:
            apply_event(state, _event(request, kind, "alice", 1, HEADS, comment="mine"), RULES)
        assert error.value.problem == "forbidden"
    with pytest.raises(ApprovalError, match="only its requester"):
        apply_event(state, _event(request, "cancelled", "bob", 1, HEADS), RULES)
    assert apply_event(state, _event(request, "cancelled", "alice", 1), RULES).status == "cancelled"


def test_a_reject_ends_it_and_a_decided_request_refuses_more() -> None:
    request = _request("60000")
    state = apply_event(_open(request), _event(request, "approved", "bob", 1, HEADS), RULES)
    with pytest.raises(ApprovalError, match="a reject needs a comment"):
        apply_event(state, _event(request, "rejected", "fiona", 2, "finance"), RULES)
    state = apply_event(state, _event(request, "rejected", "fiona", 2, "finance", comment="not this year"), RULES)
    assert state.status == "rejected" and state.ended_by is not None and state.ended_by.comment == "not this year"
    with pytest.raises(ApprovalError, match="it is rejected already") as error:
        apply_event(state, _event(request, "approved", "carol", 3, "finance"), RULES)
    assert error.value.problem == "decided"
    with pytest.raises(ApprovalError, match="rejected, not approved: no top-up"):
        top_up_entry(state, UTC)


def test_nothing_counts_after_expiry_and_a_pending_request_expires() -> None:
    request = _request()
    state = _open(request)
    with pytest.raises(ApprovalError, match="expired at 2027-01-06T10:00:00\\+00:00 without a decision") as error:
        apply_event(state, _event(request, "approved", "bob", 7 * 24, HEADS), RULES)
    assert error.value.problem == "expired"
    events = [_event(request, "requested", "alice", 0), _event(request, "approved", "bob", 7 * 24, HEADS)]
    assert fold(events, RULES, request.expires_at - timedelta(seconds=1)).status == "pending"
    assert fold(events, RULES, request.expires_at).status == "expired"


def test_an_event_id_sent_twice_counts_once_and_with_other_content_is_refused() -> None:
    request = _request("60000")
    approval = _event(request, "approved", "bob", 1, HEADS)
    state = apply_event(_open(request), approval, RULES)
    assert apply_event(state, approval, RULES) is state
    with pytest.raises(ApprovalError, match="recorded before with other content") as error:
        apply_event(state, replace(approval, comment="changed"), RULES)
    assert error.value.problem == "conflict"


def test_a_request_with_a_bad_amount_or_no_reason_is_refused() -> None:
    for amount in ("0", "-5", "NaN"):
        with pytest.raises(ApprovalError, match="the amount must be a number above 0") as error:
            _open(_request(amount))
        assert error.value.problem == "invalid"
    with pytest.raises(ApprovalError, match="a reason is required"):
        _open(replace(_request(), reason=" "))
    with pytest.raises(ApprovalError, match="no requested event"):
        fold([_event(_request(), "approved", "bob", 1, HEADS)], RULES, START)


# --- properties over random histories

GROUPS = (HEADS, "finance", "dept-heads-销售部", "staff")
# Each person's usual groups (alice, the requester, is a head too); a history may also give them others.
MEMBERS = {"alice": (HEADS,), "bob": (HEADS,), "dora": (HEADS, "finance"), "fiona": ("finance",), "eve": ("staff",)}


@st.composite
def histories(draw: st.DrawFn) -> list[RequestEvent]:
    request = _request(draw(st.sampled_from(("100", "50000", "50001", "90000"))))
    events = [_event(request, "requested", "alice", 0)]
    for number in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(("approved", "approved", "approved", "rejected", "cancelled")))
        actor = draw(st.sampled_from(sorted(MEMBERS)))
        groups = draw(st.one_of(st.just(MEMBERS[actor]), st.lists(st.sampled_from(GROUPS), max_size=2).map(tuple)))
        hours = draw(st.floats(0, 9 * 24, allow_nan=False))
        event = _event(request, kind, actor, hours, *groups, comment=draw(st.sampled_from(("", "why"))))
        events.append(replace(event, event_id=f"e{number}"))
    return events


def _counted_approvals(state: RequestState) -> list[RequestEvent]:
    return [event for event in state.counted if event.kind == "approved"]


@settings(max_examples=300, deadline=None)
@given(histories(), st.floats(0, 10 * 24))
def test_no_history_ever_counts_a_self_approval(events: list[RequestEvent], hours: float) -> None:
    state = fold(events, RULES, START + timedelta(hours=hours))
    assert all(approval.by != "alice" for approval in state.approvals)
    assert state.status != "rejected" or (state.ended_by is not None and state.ended_by.actor != "alice")


@settings(max_examples=300, deadline=None)
@given(histories())
def test_approved_only_after_every_level_by_distinct_members_before_expiry(events: list[RequestEvent]) -> None:
    state = fold(events, RULES, START + timedelta(days=30))
    levels = [approval.level for approval in state.approvals]
    assert levels == list(range(1, len(levels) + 1))  # in order, none skipped
    assert len({approval.by for approval in state.approvals}) == len(levels)  # distinct people
    for approval, event in zip(state.approvals, _counted_approvals(state), strict=True):
        assert set(event.actor_groups) & set(RULES.groups_for("研发部", second_level=approval.level > 1))
        assert approval.at < state.request.expires_at
    if state.status == "approved":
        assert len(levels) == state.levels_needed == RULES.levels_for(state.request.amount)
    else:
        assert len(levels) < state.levels_needed or state.status in {"rejected", "cancelled"}


@settings(max_examples=300, deadline=None)
@given(histories(), st.randoms(use_true_random=False), st.floats(0, 10 * 24))
def test_a_replay_in_any_order_with_repeats_gives_the_same_state(
    events: list[RequestEvent], shuffler: random.Random, hours: float
) -> None:
    now = START + timedelta(hours=hours)
    replayed = events + [shuffler.choice(events) for _ in range(shuffler.randint(0, 6))]
    shuffler.shuffle(replayed)
    assert fold(replayed, RULES, now) == fold(events, RULES, now)
