"""Experiments in the policy file: the section, the files it refuses, and the sticky assignment of users to arms."""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from tokenmeter import semconv
from tokenmeter.enforcer.experiment_policy import in_candidate_arm
from tokenmeter.enforcer.policy import PolicyError, parse_policy

EXPERIMENTS = """\
timezone: Asia/Shanghai
budgets: []
experiments:
  - name: kb-qwen-vs-baichuan
    app: kb-assistant
    model: qwen2.5-7b-instruct
    candidate: baichuan2-7b-chat
    share: 0.5
    departments: [legal]
    starts: 2026-12-01
    ends: 2027-01-01
  - name: kb-qwen-vs-baichuan-rest
    app: kb-assistant
    model: qwen2.5-7b-instruct
    candidate: baichuan2-7b-chat
    share: 0.2
    exclude_departments: [legal, executive]
"""
DECEMBER = datetime(2026, 12, 15, 4, 0, tzinfo=UTC)


def test_the_section_loads_and_the_index_finds_a_call_s_experiment() -> None:
    policy = parse_policy(EXPERIMENTS)
    legal, rest = policy.experiments
    assert (legal.share, legal.departments, legal.starts, legal.ends) == (0.5, ("legal",), date(2026, 12, 1),
                                                                         date(2027, 1, 1))  # fmt: skip
    assert (rest.departments, rest.exclude_departments) == (None, ("legal", "executive"))
    index = policy.experiment_index
    arm = index.arm_for("alice", "legal", "kb-assistant", "qwen2.5-7b-instruct", lambda: DECEMBER)
    assert arm is not None and arm.name == "kb-qwen-vs-baichuan"
    assert arm.requested_model == "qwen2.5-7b-instruct"
    assert arm.model == ("baichuan2-7b-chat" if arm.arm == semconv.ARM_CANDIDATE else "qwen2.5-7b-instruct")
    other = index.arm_for("alice", "sales", "kb-assistant", "qwen2.5-7b-instruct", lambda: DECEMBER)
    assert other is not None and other.name == "kb-qwen-vs-baichuan-rest"
    # the executive department is in neither; another app, another model, no user: in none
    assert index.arm_for("alice", "executive", "kb-assistant", "qwen2.5-7b-instruct", lambda: DECEMBER) is None
    assert index.arm_for("alice", "legal", "other-app", "qwen2.5-7b-instruct", lambda: DECEMBER) is None
    assert index.arm_for("alice", "legal", "kb-assistant", "baichuan2-7b-chat", lambda: DECEMBER) is None
    assert index.arm_for("", "legal", "kb-assistant", "qwen2.5-7b-instruct", lambda: DECEMBER) is None


@pytest.mark.parametrize(
    ("moment", "runs"),
    [
        (datetime(2026, 11, 30, 15, 59, tzinfo=UTC), False),  # 23:59 on Nov 30 in Shanghai
        (datetime(2026, 11, 30, 16, 0, tzinfo=UTC), True),  # 00:00 on Dec 1 in Shanghai
        (datetime(2026, 12, 31, 15, 59, tzinfo=UTC), True),
        (datetime(2026, 12, 31, 16, 0, tzinfo=UTC), False),  # Jan 1: ends is the first day without it
    ],
)
def test_the_days_are_the_policy_s_local_days_and_ends_is_the_first_day_without_it(moment: datetime,
                                                                                   runs: bool) -> None:  # fmt: skip
    index = parse_policy(EXPERIMENTS).experiment_index
    arm = index.arm_for("alice", "legal", "kb-assistant", "qwen2.5-7b-instruct", lambda: moment)
    assert (arm is not None) == runs


def test_only_a_call_of_an_experiment_with_days_asks_the_clock() -> None:
    def no_clock() -> datetime:
        raise AssertionError("the clock was asked for a call in no experiment")

    index = parse_policy(EXPERIMENTS).experiment_index
    assert index.arm_for("alice", "legal", "other-app", "qwen2.5-7b-instruct", no_clock) is None
    assert parse_policy("budgets: []\n").experiment_index.arm_for("alice", "legal", "kb", "m", no_clock) is None
    # an experiment without days needs no clock either (the arm is drawn once per user, then remembered)
    undated = parse_policy("budgets: []\nexperiments:\n" + _experiment()).experiment_index
    arms = {undated.arm_for(f"user-{n % 7}", "legal", "kb", "qwen", no_clock) for n in range(50)}
    assert {arm.name for arm in arms if arm is not None} == {"e"} and None not in arms and len(arms) == 2


def _experiment(**fields: object) -> str:
    given = {"name": "e", "app": "kb", "model": "qwen", "candidate": "baichuan", "share": 0.5, **fields}
    lines = [f"    {key}: {value}" for key, value in given.items() if value is not None]
    return "  - " + "\n".join(lines)[4:] + "\n"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"share": 0}, "line 7, experiments[0].share: Input should be greater than 0"),
        ({"share": 1.5}, "line 7, experiments[0].share: Input should be less than or equal to 1"),
        ({"share": -0.1}, "experiments[0].share: Input should be greater than 0"),
        ({"candidate": "qwen"}, "experiments[0]: the candidate must differ from the model it is compared with"),
        ({"app": None}, "experiments[0].app: Field required"),
        ({"candidate": None}, "experiments[0].candidate: Field required"),
        ({"departments": "[legal]", "exclude_departments": "[sales]"},
         "give departments: or exclude_departments:, not both"),
        ({"departments": "[]"}, "experiments[0].departments: Tuple should have at least 1 item"),
        ({"starts": "2026-12-01", "ends": "2026-12-01"}, "ends (2026-12-01) must be after starts (2026-12-01)"),
        ({"name": "'kb qwen'"}, "experiments[0].name: String should match pattern"),
        ({"colour": "blue"}, "line 8, experiments[0].colour: Extra inputs are not permitted"),
    ],
)  # fmt: skip
def test_a_broken_experiment_is_refused_with_its_line_and_field(fields: dict[str, object], message: str) -> None:
    text = "budgets: []\nexperiments:\n" + _experiment(**fields)
    with pytest.raises(PolicyError) as error:
        parse_policy(text, "policy.yaml")
    assert message in str(error.value)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({}, {"name": "f"}),  # every department, always: both
        ({"departments": "[legal, hr]"}, {"name": "f", "departments": "[hr]"}),
        ({"departments": "[legal]"}, {"name": "f", "exclude_departments": "[hr]"}),
        ({"exclude_departments": "[legal]"}, {"name": "f", "exclude_departments": "[hr]"}),
        ({"starts": "2026-12-01", "ends": "2027-01-01"}, {"name": "f", "starts": "2026-12-31"}),
        ({"ends": "2026-12-02"}, {"name": "f", "starts": "2026-12-01", "ends": "2026-12-05"}),
    ],
)
def test_two_experiments_that_could_both_apply_to_one_call_are_refused(first: dict[str, object],
                                                                       second: dict[str, object]) -> None:  # fmt: skip
    text = "budgets: []\nexperiments:\n" + _experiment(**first) + _experiment(**second)
    with pytest.raises(PolicyError) as error:
        parse_policy(text, "policy.yaml")
    assert "experiments[1].model: experiments 'e' and 'f' both split app 'kb''s calls to 'qwen'" in str(error.value)
    assert "at most one experiment may apply to a call" in str(error.value)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"departments": "[legal]"}, {"name": "f", "departments": "[hr]"}),
        ({"departments": "[legal]"}, {"name": "f", "exclude_departments": "[legal]"}),
        ({"ends": "2026-12-01"}, {"name": "f", "starts": "2026-12-01"}),  # one after the other
        ({}, {"name": "f", "app": "other"}),
        ({}, {"name": "f", "model": "gpt-4o"}),
    ],
)
def test_experiments_that_never_meet_on_one_call_are_allowed(first: dict[str, object],
                                                             second: dict[str, object]) -> None:  # fmt: skip
    policy = parse_policy("budgets: []\nexperiments:\n" + _experiment(**first) + _experiment(**second))
    assert [experiment.name for experiment in policy.experiments] == ["e", "f"]


def test_an_experiment_name_is_used_once() -> None:
    with pytest.raises(PolicyError, match=r"line 8, experiments\[1\].name: experiment names must be unique; 'e'"):
        parse_policy("budgets: []\nexperiments:\n" + _experiment() + _experiment(app="other"), "policy.yaml")


def test_the_arm_is_the_documented_hash_of_the_name_and_the_user() -> None:
    """first 8 bytes of sha256(name + NUL + user), big-endian, / 2**64 < share: others can reproduce it."""
    for user in ("alice", "张伟", "user-17"):
        fraction = int(hashlib.sha256(f"kb-exp\0{user}".encode()).hexdigest()[:16], 16) / 2**64
        assert in_candidate_arm("kb-exp", user, fraction + 1e-9)
        assert not in_candidate_arm("kb-exp", user, fraction)
    assert not in_candidate_arm("kb-exp", "alice", 0.0) and in_candidate_arm("kb-exp", "alice", 1.0)


@pytest.mark.parametrize("share", [0.05, 0.2, 0.5, 0.9])
def test_the_candidate_arm_holds_close_to_its_share_of_10000_users(share: float) -> None:
    """Binomial(n, share): the count is within 6 standard deviations of n x share (the hash is fixed, so
    this cannot flake; a biased or broken assignment falls outside it)."""
    users = [f"user-{number}" for number in range(10_000)]
    in_candidate = sum(in_candidate_arm("kb-exp", user, share) for user in users)
    bound = 6 * math.sqrt(len(users) * share * (1 - share))
    assert abs(in_candidate - len(users) * share) <= bound


def test_a_user_keeps_one_arm_and_a_larger_share_only_adds_users() -> None:
    users = [f"user-{number}" for number in range(2_000)]
    at_20 = {user for user in users if in_candidate_arm("kb-exp", user, 0.2)}
    assert at_20 == {user for user in users if in_candidate_arm("kb-exp", user, 0.2)}  # sticky
    at_50 = {user for user in users if in_candidate_arm("kb-exp", user, 0.5)}
    assert at_20 < at_50
    other = {user for user in users if in_candidate_arm("another-exp", user, 0.5)}
    assert other != at_50  # each experiment draws its own arms

    index = parse_policy(EXPERIMENTS).experiment_index
    for day in range(1, 31):
        moment = datetime(2026, 12, day, 4, tzinfo=UTC)
        arms = {user: index.arm_for(user, "legal", "kb-assistant", "qwen2.5-7b-instruct", lambda m=moment: m)
                for user in users[:50]}  # fmt: skip
        assert {user for user, arm in arms.items() if arm and arm.arm == semconv.ARM_CANDIDATE} == {
            user for user in users[:50] if in_candidate_arm("kb-qwen-vs-baichuan", user, 0.5)
        }


def test_the_example_in_the_docs_loads() -> None:
    text = (Path(__file__).parent.parent / "docs" / "experiments.md").read_text(encoding="utf-8")
    example = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    (experiment,) = parse_policy(example).experiments
    assert (experiment.name, experiment.share, experiment.departments) == ("kb-qwen-vs-baichuan", 0.5, ("legal",))
    assert (experiment.starts, experiment.ends) == (date(2026, 12, 1), date(2027, 1, 1))
