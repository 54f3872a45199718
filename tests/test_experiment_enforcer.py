"""The enforcer's answers for calls in an experiment: the arm, the model it runs, and budgets judged on that model.

A real EnforcerService on a policy file (never started: checks never touch the store), the model catalog's
prices, the wire document the app reads, and the app's lease book fed with it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from tokenmeter import semconv
from tokenmeter.catalog import ModelCatalog
from tokenmeter.enforcer.experiment_policy import in_candidate_arm
from tokenmeter.enforcer.quota_service import EnforcerOptions, EnforcerService
from tokenmeter.enforcer.wire import decision_document
from tokenmeter.instrumentation.quota.errors import QuotaVerdict
from tokenmeter.instrumentation.quota.leases import LeaseBook
from tokenmeter.pricing import cost_of
from tokenmeter.quota_wire import CheckBody, DecisionDocument

EXPERIMENT = "kb-4o-vs-mini"
POLICY = f"""
timezone: UTC
defaults:
  max_output_tokens_by_model: {{gpt-4o-mini: 300}}
model_groups:
  candidate: ["gpt-4o-mini"]
routes:
  gpt-4o-mini: qwen2.5-7b-instruct
budgets:
  - {{name: org-cost, scope: organisation, period: month, limit: {{cost: 100000, currency: USD}}}}
  - {{name: candidate-per-user, scope: user, period: day, models: candidate, limit: {{tokens: 1000}},
     action: downgrade}}
experiments:
  - {{name: {EXPERIMENT}, app: kb, model: gpt-4o, candidate: gpt-4o-mini, share: 0.5, departments: [legal]}}
"""
ROOMY_POLICY = POLICY.replace("limit: {tokens: 1000}", "limit: {tokens: 100000000}")
USERS = [f"user-{number}" for number in range(40)]
CANDIDATE_USER = next(user for user in USERS if in_candidate_arm(EXPERIMENT, user, 0.5))
CONTROL_USER = next(user for user in USERS if not in_candidate_arm(EXPERIMENT, user, 0.5))


def _no_store() -> None:
    raise AssertionError("a check never touches the store")


def _service(tmp_path: Path, text: str, **options: object) -> EnforcerService:
    policy = tmp_path / "policy.yaml"
    policy.write_text(text, encoding="utf-8")
    options = {"policy_settle_seconds": 0.0, **options}  # a file written just now is complete: read it at once
    return EnforcerService(_no_store, EnforcerOptions(policy_path=policy, **options),  # type: ignore[arg-type]
                           ModelCatalog.load(None))  # fmt: skip


@pytest.fixture
def service(tmp_path: Path) -> Iterator[EnforcerService]:
    service = _service(tmp_path, POLICY)
    try:
        yield service
    finally:
        service.close()


def _body(user: str, department: str = "legal", app: str = "kb", **fields: object) -> CheckBody:
    return CheckBody(user=user, department=department, app=app, model="gpt-4o", **fields)  # type: ignore[arg-type]


def test_the_candidate_arm_runs_the_candidate_and_is_estimated_on_it(service: EnforcerService) -> None:
    prepared = service.prepare(_body(CANDIDATE_USER, input_tokens=1000))
    assert prepared.request.model == "gpt-4o-mini"
    assert prepared.request.max_output_tokens == 300  # the candidate's output estimate, not gpt-4o's 1024
    price = ModelCatalog.load(None).price_for("gpt-4o-mini")
    assert prepared.request.estimated_costs["gpt-4o-mini"] == (cost_of(price, 1000, 300).amount, "USD")
    assert "gpt-4o" not in prepared.request.estimated_costs
    answer = service.decide(prepared)
    assert answer is not None
    decision = answer.decision
    assert (decision.action, decision.requested_model, decision.effective_model) == ("allow", "gpt-4o", "gpt-4o-mini")
    assert decision.experiment is not None
    assert (decision.experiment.name, decision.experiment.arm) == (EXPERIMENT, semconv.ARM_CANDIDATE)

    control = service.prepare(_body(CONTROL_USER, input_tokens=1000))
    assert (control.request.model, control.request.max_output_tokens) == ("gpt-4o", 1024)
    assert set(control.request.estimated_costs) == {"gpt-4o"}
    answer = service.decide(control)
    assert answer is not None
    decision = answer.decision
    assert (decision.action, decision.requested_model, decision.effective_model) == ("allow", "gpt-4o", "gpt-4o")
    assert decision.experiment is not None and decision.experiment.arm == semconv.ARM_CONTROL


def test_budgets_are_judged_on_the_arm_s_model_and_a_downgrade_still_wins(service: EnforcerService) -> None:
    first = service.check(_body(CANDIDATE_USER, input_tokens=900, max_output_tokens=200))
    assert first.decision.action == "allow"  # 1,100 reserved on the candidate's budget of 1,000
    second = service.check(_body(CANDIDATE_USER, input_tokens=10, max_output_tokens=10))
    decision = second.decision
    assert (decision.action, decision.budget) == ("downgrade", "candidate-per-user")
    assert (decision.requested_model, decision.effective_model) == ("gpt-4o", "qwen2.5-7b-instruct")
    assert decision.experiment is not None and decision.experiment.arm == semconv.ARM_CANDIDATE
    document = decision_document(decision, second.reservation_id, timezone="UTC")
    assert (document.decision, document.experiment, document.experiment_arm) == ("downgrade", EXPERIMENT,
                                                                                 semconv.ARM_CANDIDATE)  # fmt: skip
    # the control arm runs gpt-4o, outside the candidate's budget: never downgraded by it
    for _ in range(3):
        answer = service.check(_body(CONTROL_USER, input_tokens=900, max_output_tokens=200))
        assert (answer.decision.action, answer.decision.effective_model) == ("allow", "gpt-4o")


@pytest.mark.parametrize(
    "body",
    [
        _body(CANDIDATE_USER, app="other-app"),
        _body(CANDIDATE_USER, department="sales"),
        _body(CANDIDATE_USER, department=""),
        _body(""),  # no user id: it could not be kept in one arm
        CheckBody(user=CANDIDATE_USER, department="legal", app="kb", model="gpt-4o-mini"),
    ],
)
def test_calls_outside_the_experiment_go_as_asked(service: EnforcerService, body: CheckBody) -> None:
    answer = service.check(body)
    assert answer.decision.experiment is None
    assert answer.decision.effective_model == body.model == answer.decision.requested_model
    document = decision_document(answer.decision, answer.reservation_id, timezone="UTC")
    assert (document.experiment, document.experiment_arm) == (None, None)


def test_a_dry_run_reports_the_arm_and_holds_nothing(service: EnforcerService) -> None:
    answer = service.check(_body(CANDIDATE_USER, input_tokens=100, dry_run=True))
    assert answer.decision.experiment is not None and answer.decision.experiment.arm == semconv.ARM_CANDIDATE
    assert answer.decision.effective_model == "gpt-4o-mini"
    assert (answer.reservation_id, service.enforcer.reservations()) == (None, 0)


def test_a_lease_holds_room_for_calls_of_the_arm_s_model_and_its_verdicts_carry_the_arm(tmp_path: Path) -> None:
    service = _service(tmp_path, ROOMY_POLICY)
    try:
        answer = service.check(_body(CANDIDATE_USER, input_tokens=100, lease=True))
    finally:
        service.close()
    assert answer.lease_calls > 1
    lease = answer.lease_terms(2.0)
    assert lease is not None
    assert lease.default_output_tokens == 300  # a call of the candidate that gives no max_tokens
    assert lease.tokens == answer.lease_calls * 400
    document = decision_document(answer.decision, answer.reservation_id, timezone="UTC", lease=lease)
    # the app reads the answer and decides the lease's next calls itself
    verdict = QuotaVerdict.from_document(DecisionDocument.model_validate_json(document.model_dump_json()), "gpt-4o")
    book = LeaseBook(lambda: 0.0, lambda _reservation, _unused: None)
    key = (CANDIDATE_USER, "legal", "kb", "gpt-4o")
    first = book.add(key, verdict, tokens=lease.tokens, first_estimate=400, default_output_tokens=300, seconds=2.0)
    later = book.take(key, 100, None)
    assert later is not None and later.lease_id == first.lease_id == answer.reservation_id
    for leased in (first, later):
        assert (leased.experiment, leased.experiment_arm) == (EXPERIMENT, semconv.ARM_CANDIDATE)
        assert (leased.requested_model, leased.effective_model) == ("gpt-4o", "gpt-4o-mini")


def test_the_policy_document_lists_the_experiments(service: EnforcerService) -> None:
    experiments = json.loads(json.dumps(service.policy_document()))["policy"]["experiments"]
    assert experiments == [{"name": EXPERIMENT, "app": "kb", "model": "gpt-4o", "candidate": "gpt-4o-mini",
                            "share": 0.5, "departments": ["legal"], "exclude_departments": [], "starts": None,
                            "ends": None}]  # fmt: skip


def test_the_days_are_the_enforcer_s_days(tmp_path: Path) -> None:
    """An experiment starting in two days is not running today, and is on an enforcer whose clock is shifted
    three days on (two days ahead: a test run across midnight still starts before the experiment)."""
    starts = (datetime.now(UTC) + timedelta(days=2)).date()
    text = POLICY.replace("departments: [legal]}", f"departments: [legal], starts: {starts}}}")
    today = _service(tmp_path, text)
    later = _service(tmp_path, text, clock_offset_seconds=3 * 86400)
    try:
        assert today.check(_body(CANDIDATE_USER)).decision.experiment is None
        assert later.check(_body(CANDIDATE_USER)).decision.effective_model == "gpt-4o-mini"
    finally:
        today.close()
        later.close()


def test_an_answer_from_an_older_enforcer_has_no_experiment() -> None:
    document = DecisionDocument.model_validate_json(b'{"decision": "allow", "requested_model": "gpt-4o"}')
    verdict = QuotaVerdict.from_document(document, "gpt-4o")
    assert (verdict.experiment, verdict.experiment_arm, verdict.effective_model) == (None, None, "gpt-4o")


def test_costs_of_the_arms_differ_as_the_catalog_says() -> None:
    """(The fixture above relies on the two models having different prices.)"""
    catalog = ModelCatalog.load(None)
    big, small = (cost_of(catalog.price_for(model), 1000, 300).amount for model in ("gpt-4o", "gpt-4o-mini"))
    assert big is not None and small is not None and big > small > Decimal(0)
