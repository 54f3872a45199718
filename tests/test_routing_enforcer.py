"""Routing in the enforcer's check: the routed model's estimates and budgets, the answer's fields, brownout on
the budget really left, no lease for routed checks, experiments first, and ``GET /v1/routing``.

A real EnforcerService on a policy file (never started: checks never touch the store; usage is put in with a
snapshot as a refresh would), the model catalog's prices, and the HTTP app the enforcer serves.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from tokenmeter.catalog import ModelCatalog
from tokenmeter.enforcer.decision import Usage, UsageSnapshot, period_bounds
from tokenmeter.enforcer.quota_service import EnforcerOptions, EnforcerService
from tokenmeter.enforcer.sidecar import enforcer_app
from tokenmeter.enforcer.wire import decision_document
from tokenmeter.pricing import cost_of
from tokenmeter.quota_wire import CheckBody, DecisionDocument, RouteFeatures
from tokenmeter.routing.intents import IntentClassifier

POLICY = """
timezone: UTC
defaults:
  max_output_tokens_by_model: {qwen2.5-7b-instruct: 256}
budgets:
  - {name: sales-month, scope: department, subject: 销售部, period: month, limit: {tokens: 100000}}
  - {name: org-cost, scope: organisation, period: month, limit: {cost: 1000000, currency: CNY}}
experiments:
  - {name: trial, app: kb-trial, model: deepseek-chat, candidate: qwen2.5-7b-instruct, share: 1.0}
routing:
  tiers:
    - {name: small, model: qwen2.5-7b-instruct}
    - {name: remote, model: deepseek-chat}
  critical_apps: [legal-qa]
  intents:
    - {name: lookup, keywords: ["是什么", "多少"]}
  rules:
    - name: short-lookup
      when: {intent: [lookup], question_chars: {max: 80}}
      tier: small
    - name: brownout
      when: {budget_left: {max: 0.2}}
      down: 1
"""
TOKEN = "routing-test-token"


def _no_store() -> None:
    raise AssertionError("a check never touches the store")


@pytest.fixture
def service(tmp_path: Path) -> Iterator[EnforcerService]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY, encoding="utf-8")
    options = EnforcerOptions(policy_path=policy, policy_settle_seconds=0.0)
    service = EnforcerService(_no_store, options, ModelCatalog.load(None))  # type: ignore[arg-type]
    try:
        yield service
    finally:
        service.close()


def _body(app: str = "kb", department: str = "销售部", *, route: RouteFeatures | None = None, **fields: object
          ) -> CheckBody:  # fmt: skip
    return CheckBody(user="u1", department=department, app=app, model="deepseek-chat", input_tokens=1000,
                     route=route, lease=True, **fields)  # type: ignore[arg-type]  # fmt: skip


LOOKUP = RouteFeatures(intent="lookup", question_chars=12, depth=1)


def _document(service: EnforcerService, body: CheckBody) -> DecisionDocument:
    answer = service.check(body)
    policy = service.enforcer.policy
    version = policy.routing_document["version"]
    return decision_document(answer.decision, answer.reservation_id, timezone=policy.timezone,
                             lease=answer.lease_terms(2.0), routing_version=version)  # fmt: skip


def test_a_routed_call_is_estimated_and_budgeted_on_the_tier_it_was_sent_to(service: EnforcerService) -> None:
    prepared = service.prepare(_body(route=LOOKUP))
    request = prepared.request
    assert request.model == "qwen2.5-7b-instruct" and request.requested_model == "deepseek-chat"
    assert request.route is not None and request.route.rule == "short-lookup"
    assert request.max_output_tokens == 256  # the 7B's output estimate, not deepseek-chat's 1024
    price = ModelCatalog.load(None).price_for("qwen2.5-7b-instruct")
    assert request.estimated_costs["qwen2.5-7b-instruct"] == (cost_of(price, 1000, 256).amount, "CNY")


def test_the_answer_names_the_rule_the_tier_and_the_routing_version(service: EnforcerService) -> None:
    document = _document(service, _body(route=LOOKUP))
    assert (document.decision, document.requested_model, document.effective_model) == (
        "allow", "deepseek-chat", "qwen2.5-7b-instruct")  # fmt: skip
    assert (document.route_rule, document.route_tier) == ("short-lookup", "small")
    assert document.routing_version == service.enforcer.policy.routing_document["version"]
    assert document.lease is None, "a routed check gets no lease: the next question may need another tier"


def test_calls_without_features_or_not_matching_keep_their_model_and_may_lease(service: EnforcerService) -> None:
    for body in (_body(), _body(route=RouteFeatures(intent="chitchat", question_chars=5))):
        document = _document(service, body)
        assert document.effective_model == "deepseek-chat" and document.route_rule is None
        assert document.routing_version is not None
    assert _document(service, _body()).lease is not None  # no features: routing does not look, leases as before


def test_brownout_reads_the_budget_really_left(service: EnforcerService) -> None:
    not_lookup = RouteFeatures(question_chars=300, depth=2)
    assert _document(service, _body(route=not_lookup)).route_rule is None
    start, _ = period_bounds("month", datetime.now(UTC), service.enforcer.policy.zone)
    used = UsageSnapshot(used={("sales-month", "销售部"): Usage(tokens=85_000)}, period_starts={"sales-month": start})
    service.enforcer.update_snapshot(used, started_at=float("inf"))
    document = _document(service, _body(route=not_lookup))  # 15 % of sales-month left
    assert (document.route_rule, document.effective_model) == ("brownout", "qwen2.5-7b-instruct")
    critical = _document(service, _body(app="legal-qa", route=not_lookup))
    assert critical.route_rule is None and critical.effective_model == "deepseek-chat"
    other_department = _document(service, _body(department="研发部", route=not_lookup))
    assert other_department.route_rule is None  # its budgets (the org's) have plenty left


def test_a_call_in_an_experiment_is_not_routed(service: EnforcerService) -> None:
    document = _document(service, _body(app="kb-trial", route=LOOKUP))
    assert document.experiment == "trial" and document.route_rule is None


def test_get_routing_serves_the_document_apps_classify_with(service: EnforcerService) -> None:
    client = TestClient(enforcer_app(service, TOKEN))
    assert client.get("/v1/routing").status_code == 401
    document = client.get("/v1/routing", headers={"authorization": f"Bearer {TOKEN}"}).json()
    assert document["version"] == service.enforcer.policy.routing_document["version"]
    assert IntentClassifier.from_routing_document(document).classify("差旅报销标准是什么？") == "lookup"
    check = client.post("/v1/check", headers={"authorization": f"Bearer {TOKEN}"},
                        content=json.dumps({"model": "deepseek-chat", "app": "kb", "route": {"intent": "lookup",
                                            "question_chars": 9}}))  # fmt: skip
    answer = check.json()
    assert (answer["route_rule"], answer["routing_version"]) == ("short-lookup", document["version"])


def test_a_policy_without_routing_answers_no_version(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("budgets: []\n", encoding="utf-8")
    service = EnforcerService(_no_store, EnforcerOptions(policy_path=policy, policy_settle_seconds=0.0),  # type: ignore[arg-type]
                              ModelCatalog.load(None))  # fmt: skip
    try:
        client = TestClient(enforcer_app(service, TOKEN))
        headers = {"authorization": f"Bearer {TOKEN}"}
        assert client.get("/v1/routing", headers=headers).json() == {"version": None, "intents": [],
                                                                     "classifier": None}  # fmt: skip
        answer = client.post("/v1/check", headers=headers, content=json.dumps({"model": "m", "route": {}})).json()
        assert answer["routing_version"] is None and answer["route_rule"] is None
    finally:
        service.close()


def test_the_enforcer_reads_the_classifier_beside_its_policy_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                    ) -> None:  # fmt: skip
    classifier = {"format": "tokenmeter-intent-classifier/1", "labels": ["billing", "other"], "analyzer": "char_wb",
                  "ngram_range": [1, 2], "lowercase": True, "vocabulary": {"费": 0, "a": 1}, "idf": [1.0, 1.0],
                  "coef": [[-3.0, 3.0]], "intercept": [0.0], "min_confidence": 0.5}  # fmt: skip
    (tmp_path / "intents.json").write_text(json.dumps(classifier), encoding="utf-8")
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.replace("  rules:\n", "  classifier: intents.json\n  rules:\n"), encoding="utf-8")
    monkeypatch.chdir(tmp_path.parent)  # not the policy's directory
    service = EnforcerService(_no_store, EnforcerOptions(policy_path=policy, policy_settle_seconds=0.0),  # type: ignore[arg-type]
                              ModelCatalog.load(None))  # fmt: skip
    try:
        document = service.enforcer.policy.routing_document
        assert document["classifier"] == classifier
        assert IntentClassifier.from_routing_document(document).classify("报销费用") == "billing"
    finally:
        service.close()
