"""What an app classifies its questions with: the policy's intents, then its trained classifier.

Built from the routing document the enforcer serves (``GET /v1/routing``); the question's text stays
in the app, only the intent's name goes with the check.
"""

from __future__ import annotations

from typing import Any

from tokenmeter.routing.intent_classifier import MAX_QUESTION_CHARS, LinearIntentClassifier
from tokenmeter.routing.intent_rules import IntentRule

CLASSIFIER: str = "classifier"  # what named an intent, when no rule did


class IntentClassifier:
    def __init__(self, rules: tuple[IntentRule, ...], trained: LinearIntentClassifier | None) -> None:
        self.rules = rules
        self.trained = trained

    @classmethod
    def from_routing_document(cls, document: dict[str, Any]) -> IntentClassifier:
        """From ``{"intents": [...], "classifier": {...} | None}``; ValueError for a document that is not one."""
        rules = tuple(IntentRule.model_validate(rule) for rule in document.get("intents") or ())
        classifier = document.get("classifier")
        return cls(rules, LinearIntentClassifier.from_document(classifier) if classifier else None)

    def explain(self, question: str) -> tuple[str, str] | None:
        """The intent and what named it (the rule's name, or ``"classifier"``), or None."""
        question = question[:MAX_QUESTION_CHARS]
        folded = question.casefold()
        for rule in self.rules:
            if rule.matches(question, folded):
                return rule.name, f"rule {rule.name}"
        if self.trained is not None:
            found = self.trained.classify(question)
            if found is not None:
                return found[0], CLASSIFIER
        return None

    def classify(self, question: str) -> str | None:
        found = self.explain(question)
        return None if found is None else found[0]
