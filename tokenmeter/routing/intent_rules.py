"""Transparent intents: a question's intent named by keywords and regular expressions the operator wrote.

The policy's ``routing.intents`` lists them, first match wins (docs/routing.md)::

    intents:
      - name: reasoning
        patterns: ["为什么|如何|比较|分析", "(?i)\\bwhy\\b|step by step"]
      - name: lookup
        keywords: ["是什么", "多少", "what is", "when"]

A keyword matches as a substring, ignoring case (``str.casefold``); a pattern matches when
``re.search`` finds it. The app classifies its own questions with these (the text never leaves it);
the enforcer only sees the intent's name.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

INTENT_NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"


class IntentRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=INTENT_NAME_PATTERN, max_length=64)
    keywords: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()

    @field_validator("keywords")
    @classmethod
    def _no_empty_keyword(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not keyword.strip() for keyword in value):
            raise ValueError("an empty keyword would match every question")
        return value

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"pattern {pattern!r} is not a regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _something_to_match(self) -> IntentRule:
        if not self.keywords and not self.patterns:
            raise ValueError(f"intent {self.name!r} needs keywords: or patterns:")
        return self

    @functools.cached_property
    def _folded_keywords(self) -> tuple[str, ...]:
        return tuple(keyword.casefold() for keyword in self.keywords)

    @functools.cached_property
    def _compiled(self) -> tuple[re.Pattern[str], ...]:
        return tuple(re.compile(pattern) for pattern in self.patterns)

    def matches(self, question: str, folded: str | None = None) -> bool:
        """Whether the question has one of the keywords or patterns (``folded``: its casefold, if known)."""
        folded = question.casefold() if folded is None else folded
        return any(keyword in folded for keyword in self._folded_keywords) or any(
            pattern.search(question) for pattern in self._compiled
        )


def first_intent(rules: Iterable[IntentRule], question: str) -> str | None:
    """The name of the first rule the question matches, or None."""
    folded = question.casefold()
    for rule in rules:
        if rule.matches(question, folded):
            return rule.name
    return None
