"""A small trained intent classifier, stored as JSON and run in pure Python (docs/intents.md).

The model is scikit-learn's ``TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 3))`` followed by
``LogisticRegression``, written out as numbers (``tokenmeter routing train``): character n-grams suit
Chinese questions, which have no spaces between words. Reading it needs neither scikit-learn nor numpy,
and classifying a question is a sparse dot product: well under a millisecond for questions as people type
them, about 0.8 µs per character beyond that (bench/intent_classification.py).
The features are computed exactly as scikit-learn computes them, so the probabilities are the trained
pipeline's (tested to 1e-9).

The file::

    {"format": "tokenmeter-intent-classifier/1", "labels": ["lookup", "reasoning"],
     "analyzer": "char_wb", "ngram_range": [1, 3], "lowercase": true,
     "vocabulary": {"ngram": column, ...}, "idf": [...], "coef": [[...], ...], "intercept": [...],
     "min_confidence": 0.5, "trained": {"examples": 80, "at": "2026-12-05T23:40:00+00:00", "accuracy": 0.9}}

``coef`` has one row per label, or one row for two labels (scikit-learn's binary form: the row scores
the second label).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from itertools import pairwise, repeat
from operator import add, mul
from pathlib import Path
from typing import Any, Final

FORMAT: Final = "tokenmeter-intent-classifier/1"
MAX_QUESTION_CHARS: Final = 256  # a question is classified by its first 256 characters: under 1 ms at any length
_WHITE_SPACES: Final = re.compile(r"\s\s+")


def char_wb_ngrams(text: str, low: int, high: int) -> list[str]:
    """scikit-learn's ``char_wb`` analyzer: n-grams inside words padded with one space each side."""
    grams: list[str] = []
    for word in _WHITE_SPACES.sub(" ", text).split():
        padded = f" {word} "
        length = len(padded)
        for n in range(low, high + 1):
            offset = 0
            grams.append(padded[offset : offset + n])
            while offset + n < length:
                offset += 1
                grams.append(padded[offset : offset + n])
            if offset == 0:  # a word shorter than n: counted once
                break
    return grams


def char_wb_counts(text: str, low: int, high: int) -> Counter[str]:
    """``Counter(char_wb_ngrams(text, low, high))``, several times faster for n-grams of up to 3 characters.

    Those are the substrings of the words joined by single spaces, padded, except the 3-grams that straddle
    two words ("d w"), and with every word's own two padding spaces counted as 1-grams. Counted in C
    (``Counter`` over ``map``) rather than word by word in Python.
    """
    words = text.split()  # what char_wb_ngrams's whitespace squeeze and split give
    if high > 3 or not words:
        return Counter(char_wb_ngrams(text, low, high))
    joined = f" {' '.join(words)} "
    counts: Counter[str] = Counter()
    if low == 1:
        counts.update(joined)
        counts[" "] += len(words) - 1  # two padding spaces per word; the joined text shares them
    if low <= 2 <= high:
        counts.update(map(add, joined, joined[1:]))
    if high == 3:
        counts.update(map(add, map(add, joined, joined[1:]), joined[2:]))
        straddling = Counter(word[-1] + " " + following[0] for word, following in pairwise(words))
        for gram, count in straddling.items():
            counts[gram] -= count
            if not counts[gram]:
                del counts[gram]
    return counts


def load_classifier_file(path: str | Path) -> dict[str, Any]:
    """The classifier document of ``path``, checked; ValueError naming the file and the problem."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the intent classifier: {exc.strerror}") from None
    except ValueError as exc:
        raise ValueError(f"{path}: the intent classifier is not JSON: {exc}") from None
    problem = classifier_problem(document)
    if problem is not None:
        raise ValueError(f"{path}: {problem} (make it with `tokenmeter routing train`)")
    return document


def classifier_problem(document: Any) -> str | None:
    """What is wrong with a classifier document, or None."""
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        return f"not an intent classifier: its format must be {FORMAT!r}"
    labels, vocabulary = document.get("labels"), document.get("vocabulary")
    if not isinstance(labels, list) or len(labels) < 2 or len(set(labels)) != len(labels):
        return "labels must be a list of at least two different names"
    if document.get("analyzer") != "char_wb" or not _ngram_range_ok(document.get("ngram_range")):
        return "analyzer must be char_wb with an ngram_range [low, high], 1 <= low <= high"
    if not isinstance(vocabulary, dict) or not all(isinstance(v, int) for v in vocabulary.values()):
        return "vocabulary must map n-grams to columns"
    confidence = document.get("min_confidence", 0.5)
    if not isinstance(confidence, (int, float)) or not 0 < confidence <= 1:
        return "min_confidence must be above 0 and at most 1"
    return _shape_problem(document, 1 if len(labels) == 2 else len(labels), len(vocabulary))


def _shape_problem(document: dict[str, Any], rows: int, columns: int) -> str | None:
    coef, intercept, idf = document.get("coef"), document.get("intercept"), document.get("idf")
    if not isinstance(coef, list) or len(coef) != rows or any(len(row) != columns for row in coef):
        return f"coef must have {rows} row(s) of {columns} numbers"
    if not isinstance(intercept, list) or len(intercept) != rows:
        return f"intercept must have {rows} number(s)"
    if idf is not None and (not isinstance(idf, list) or len(idf) != columns):
        return f"idf must have {columns} numbers"
    if any(not 0 <= column < columns for column in document["vocabulary"].values()):
        return f"vocabulary columns must be 0 to {columns - 1}"
    return None


def _ngram_range_ok(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(isinstance(n, int) for n in value) and (
        1 <= value[0] <= value[1])  # fmt: skip


class LinearIntentClassifier:
    """A checked classifier document, ready to classify."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.labels: tuple[str, ...] = tuple(document["labels"])
        self._low, self._high = document["ngram_range"]
        self._lowercase = bool(document.get("lowercase", True))
        self._vocabulary: dict[str, int] = document["vocabulary"]
        # One more column than the vocabulary, all zeros: where n-grams outside it are counted, so the
        # lookups, products and sums below run in C (map over lists) rather than in a Python loop.
        self._unknown = len(self._vocabulary)
        idf = document.get("idf")
        self._idf: list[float] = [*(idf if idf is not None else repeat(1.0, self._unknown)), 0.0]
        self._rows: list[list[float]] = [[*row, 0.0] for row in document["coef"]]
        self._intercept: list[float] = list(document["intercept"])
        self.min_confidence = float(document.get("min_confidence", 0.5))

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> LinearIntentClassifier:
        problem = classifier_problem(document)
        if problem is not None:
            raise ValueError(f"intent classifier: {problem}")
        return cls(document)

    def probabilities(self, question: str) -> dict[str, float]:
        """Each label's probability for ``question`` (as the trained pipeline's ``predict_proba``)."""
        scores = self._scores(question[:MAX_QUESTION_CHARS])
        if len(self.labels) == 2:  # one row scores the second label
            second = 1.0 / (1.0 + math.exp(-scores[0])) if scores[0] >= -700 else 0.0
            return {self.labels[0]: 1.0 - second, self.labels[1]: second}
        top = max(scores)
        exps = [math.exp(score - top) for score in scores]
        total = sum(exps)
        return {label: value / total for label, value in zip(self.labels, exps, strict=True)}

    def classify(self, question: str) -> tuple[str, float] | None:
        """The most probable label and its probability; None below ``min_confidence``."""
        probabilities = self.probabilities(question)
        label = max(probabilities, key=probabilities.__getitem__)
        probability = probabilities[label]
        return (label, probability) if probability >= self.min_confidence else None

    def _scores(self, question: str) -> list[float]:
        """Each row's intercept + the row's weights · the question's l2-normalised tf-idf (scikit-learn's)."""
        counts = char_wb_counts(question.lower() if self._lowercase else question, self._low, self._high)
        columns = list(map(self._vocabulary.get, counts, repeat(self._unknown)))
        values = list(map(mul, counts.values(), map(self._idf.__getitem__, columns)))
        norm = math.sqrt(sum(map(mul, values, values)))
        if not norm:  # no known n-gram: the intercepts alone, as scikit-learn's all-zero row gives
            return list(self._intercept)
        return [intercept + sum(map(mul, values, map(row.__getitem__, columns))) / norm
                for intercept, row in zip(self._intercept, self._rows, strict=True)]  # fmt: skip
