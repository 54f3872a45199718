"""Training the intent classifier from an operator's labelled questions (``tokenmeter routing train``).

The CSV has a header row with the columns ``question`` and ``intent`` (UTF-8; other columns are ignored)::

    question,intent
    报销期限是多久？,lookup
    比较一下两种报销流程的优缺点,reasoning

scikit-learn fits ``TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 3))`` and ``LogisticRegression``;
the result is written as the JSON document of :mod:`tokenmeter.routing.intent_classifier`, which the app
reads in pure Python. scikit-learn is imported only here, when training (the ``routing-train`` extra).
Accuracy is measured on a seeded, stratified held-out share of the examples; the classifier written out is
then fitted on all of them.
"""

from __future__ import annotations

import csv
import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from tokenmeter.routing.intent_classifier import FORMAT, classifier_problem
from tokenmeter.routing.intent_rules import INTENT_NAME_PATTERN

NGRAM_RANGE: Final = (1, 3)
# Less regularisation than scikit-learn's default C=1: on the example set, 5-fold accuracy ~74 % against ~67 %.
REGULARISATION_C: Final = 10.0
HELD_OUT_SHARE: Final = 0.25
SPLIT_SEED: Final = 20261205  # the same examples always give the same split, so runs compare
EXTRA_HINT: Final = "pip install 'tokenmeter-otel[routing-train]'"
_LABEL: Final = re.compile(INTENT_NAME_PATTERN)


class TrainingError(ValueError):
    """Labelled examples or a setting that cannot be trained on; the message names the file and the problem."""


@dataclass(frozen=True)
class LabelledQuestions:
    questions: list[str]
    intents: list[str]

    def counts(self) -> Counter[str]:
        return Counter(self.intents)


@dataclass(frozen=True)
class TrainedClassifier:
    document: dict[str, Any]  # the classifier file's content
    examples: int
    held_out: int
    accuracy: float  # on the held-out examples, by a classifier fitted on the others


def read_labelled_csv(path: str | Path) -> LabelledQuestions:
    """The CSV's questions and intents; TrainingError naming the file for anything that cannot be trained on."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8-sig", newline="") as file:  # -sig: a BOM from a spreadsheet export
            reader = csv.DictReader(file)
            header = [name.strip() for name in reader.fieldnames or ()]
            reader.fieldnames = header
            rows = list(reader)
    except OSError as exc:
        raise TrainingError(f"{path}: cannot read the labelled questions: {exc.strerror}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise TrainingError(f"{path}: not a UTF-8 CSV file: {exc}") from None
    if not header:
        raise TrainingError(f"{path}: the file is empty; it needs a header row `question,intent`, then one per line")
    missing = [column for column in ("question", "intent") if column not in header]
    if missing:
        found = ", ".join(map(repr, header))
        raise TrainingError(f"{path}: no column {' or '.join(map(repr, missing))} in the header row (found: {found})")
    if not rows:
        raise TrainingError(f"{path}: no labelled questions below the header row")
    questions, intents = [], []
    for line, row in enumerate(rows, start=2):
        question, intent = (row.get("question") or "").strip(), (row.get("intent") or "").strip()
        if not question or not intent:
            raise TrainingError(f"{path} line {line}: a question and its intent are both needed")
        if not _LABEL.match(intent) or len(intent) > 64:
            raise TrainingError(f"{path} line {line}: intent {intent!r} must be letters, digits, _ . - (≤ 64)")
        questions.append(question)
        intents.append(intent)
    _check_counts(path, LabelledQuestions(questions, intents).counts())
    return LabelledQuestions(questions, intents)


def _check_counts(path: Path, counts: Counter[str]) -> None:
    if len(counts) < 2:
        raise TrainingError(f"{path}: at least two different intents are needed (found: {sorted(counts)})")
    few = sorted(intent for intent, count in counts.items() if count < 2)
    if few:
        raise TrainingError(f"{path}: each intent needs at least two examples; too few for: {', '.join(few)}")


def train_classifier(path: str | Path, min_confidence: float = 0.5,
                     progress: Callable[[str], None] = lambda _line: None) -> TrainedClassifier:  # fmt: skip
    """Train on the CSV at ``path``: accuracy on a held-out share, then the classifier fitted on every example."""
    if not 0 < min_confidence <= 1:
        raise TrainingError(f"min_confidence must be above 0 and at most 1, not {min_confidence}")
    labelled = read_labelled_csv(path)
    counts = labelled.counts()
    progress(f"{len(labelled.questions)} questions: " + ", ".join(f"{name} {n}" for name, n in sorted(counts.items())))
    sklearn = _sklearn()
    train_q, test_q, train_i, test_i = sklearn.train_test_split(
        labelled.questions, labelled.intents, test_size=_held_out_count(len(labelled.questions), len(counts)),
        stratify=labelled.intents, random_state=SPLIT_SEED)  # fmt: skip
    accuracy = float(_pipeline(sklearn).fit(train_q, train_i).score(test_q, test_i))
    progress(f"held-out accuracy {accuracy:.1%} ({len(test_q)} questions, trained on {len(train_q)})")
    pipeline = _pipeline(sklearn).fit(labelled.questions, labelled.intents)
    progress(f"fitted on all {len(labelled.questions)} questions")
    document = classifier_document(pipeline, min_confidence, len(labelled.questions), accuracy)
    problem = classifier_problem(document)
    if problem is not None:  # the format and the trainer disagree: a bug, not the operator's input
        raise AssertionError(f"the trained classifier does not pass its own check: {problem}")
    return TrainedClassifier(document, len(labelled.questions), len(test_q), accuracy)


def _held_out_count(examples: int, labels: int) -> int:
    """A quarter of the examples, but at least one per label (a stratified split needs it); each label has
    two examples or more, so every label keeps one to train on."""
    return max(labels, math.ceil(examples * HELD_OUT_SHARE))


def classifier_document(pipeline: Any, min_confidence: float, examples: int, accuracy: float) -> dict[str, Any]:
    """A fitted ``Pipeline(tfidf, logreg)`` as the classifier file's document (plain ints, floats, lists)."""
    vectorizer, model = pipeline.named_steps["tfidf"], pipeline.named_steps["logreg"]
    return {
        "format": FORMAT,
        "labels": [str(label) for label in model.classes_],  # scikit-learn's order: coef's rows follow it
        "analyzer": "char_wb",
        "ngram_range": list(NGRAM_RANGE),
        "lowercase": True,
        "vocabulary": {gram: int(column) for gram, column in sorted(vectorizer.vocabulary_.items())},
        "idf": [float(value) for value in vectorizer.idf_],
        "coef": [[float(value) for value in row] for row in model.coef_],
        "intercept": [float(value) for value in model.intercept_],
        "min_confidence": min_confidence,
        "trained": {
            "examples": examples,
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "accuracy": round(accuracy, 4),
        },
    }


def _pipeline(sklearn: Any) -> Any:
    return sklearn.Pipeline([
        ("tfidf", sklearn.TfidfVectorizer(analyzer="char_wb", ngram_range=NGRAM_RANGE, lowercase=True)),
        ("logreg", sklearn.LogisticRegression(C=REGULARISATION_C, max_iter=1000)),
    ])  # fmt: skip


class _SklearnParts:
    """The few scikit-learn names training uses, imported when training starts."""

    def __init__(self) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import train_test_split
        from sklearn.pipeline import Pipeline

        self.TfidfVectorizer, self.LogisticRegression = TfidfVectorizer, LogisticRegression
        self.train_test_split, self.Pipeline = train_test_split, Pipeline


def _sklearn() -> _SklearnParts:
    try:
        return _SklearnParts()
    except ImportError as exc:
        raise TrainingError(f"training needs scikit-learn ({exc.name or exc} is missing): {EXTRA_HINT}") from None
