"""The trained intent classifier read in pure Python gives scikit-learn's own probabilities (docs/intents.md):
the file written by the trainer, read by LinearIntentClassifier, against the scikit-learn pipeline fitted on
the same examples; its n-grams are scikit-learn's char_wb analyzer's; bad files are refused by name."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from tokenmeter.routing.intent_classifier import (
    MAX_QUESTION_CHARS,
    LinearIntentClassifier,
    char_wb_counts,
    char_wb_ngrams,
    load_classifier_file,
)
from tokenmeter.routing.intent_training import REGULARISATION_C, train_classifier

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples" / "intents-labelled.csv"
UNSEEN = [
    "",
    "   ",
    "报销",
    "VPN",
    "x",
    "差旅报销的截止时间是哪天？",
    "请比较三家供应商的报价，并说明哪家长期成本最低",
    "WHY did the Q3 budget overrun?  Explain step   by step.",
    "Hello, thanks!\tBye\nsee you",
    "年假 annual leave 多少天 how many days",
    "🙂 谢谢 🙏",
    "zzzz qqqq",  # n-grams the vocabulary mostly lacks
    "a b c d e",
    "数据保留政策对客服流程有什么影响？请逐条分析，并给出一个分阶段的实施计划",
]


def _labelled(path: Path = EXAMPLES) -> tuple[list[str], list[str]]:
    with path.open(encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    return [row["question"] for row in rows], [row["intent"] for row in rows]


def _write_csv(path: Path, questions: list[str], intents: list[str]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["question", "intent"])
        writer.writerows(zip(questions, intents, strict=True))
    return path


def _sklearn_pipeline(questions: list[str], intents: list[str]) -> Pipeline:
    """The pipeline docs/intents.md describes, fitted here independently of the trainer."""
    return Pipeline([
        ("tfidf", TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 3), lowercase=True)),
        ("logreg", LogisticRegression(C=REGULARISATION_C, max_iter=1000)),
    ]).fit(questions, intents)  # fmt: skip


def _trained_file(tmp_path: Path, questions: list[str], intents: list[str], **options: Any) -> Path:
    trained = train_classifier(_write_csv(tmp_path / "labelled.csv", questions, intents), **options)
    out = tmp_path / "intents.json"
    out.write_text(json.dumps(trained.document, ensure_ascii=False), encoding="utf-8")
    return out


def _assert_same_probabilities(classifier: LinearIntentClassifier, pipeline: Pipeline, questions: list[str]) -> None:
    assert list(classifier.labels) == list(pipeline.classes_)
    expected = pipeline.predict_proba(questions)
    for question, row in zip(questions, expected, strict=True):
        ours = classifier.probabilities(question)
        for label, probability in zip(pipeline.classes_, row, strict=True):
            assert ours[label] == pytest.approx(probability, abs=1e-9), (question, label)


def test_three_labels_give_the_pipelines_probabilities(tmp_path: Path) -> None:
    questions, intents = _labelled()
    classifier = LinearIntentClassifier.from_document(load_classifier_file(_trained_file(tmp_path, questions, intents)))
    pipeline = _sklearn_pipeline(questions, intents)
    assert sorted(set(intents)) == ["chitchat", "lookup", "reasoning"]
    _assert_same_probabilities(classifier, pipeline, questions + UNSEEN + [q.upper() for q in questions[:20]])
    # classify names the most probable label, as predict does
    for question, predicted in zip(questions, pipeline.predict(questions), strict=True):
        found = classifier.classify(question)
        assert found is None or found[0] == predicted


def test_two_labels_use_the_one_row_binary_form(tmp_path: Path) -> None:
    questions, intents = _labelled()
    pairs = [(q, i) for q, i in zip(questions, intents, strict=True) if i != "chitchat"]
    binary_q, binary_i = [q for q, _ in pairs], [i for _, i in pairs]
    document = load_classifier_file(_trained_file(tmp_path, binary_q, binary_i))
    assert document["labels"] == ["lookup", "reasoning"] and len(document["coef"]) == 1
    classifier = LinearIntentClassifier.from_document(document)
    _assert_same_probabilities(classifier, _sklearn_pipeline(binary_q, binary_i), binary_q + UNSEEN)


@pytest.mark.parametrize("ngram_range", [(1, 1), (1, 3), (2, 4), (3, 5)])
def test_char_wb_ngrams_are_sklearns(ngram_range: tuple[int, int]) -> None:
    analyzer = TfidfVectorizer(analyzer="char_wb", ngram_range=ngram_range, lowercase=False).build_analyzer()
    texts = [*_labelled()[0], *UNSEEN, "a  bb\t\tccc\n\ndddd", " leading and trailing ", "一", "ab", "中文English混合"]
    for text in texts:
        assert char_wb_ngrams(text, *ngram_range) == analyzer(text), text


@pytest.mark.parametrize("ngram_range", [(1, 1), (1, 2), (1, 3), (2, 2), (2, 3), (3, 3), (2, 4)])
def test_the_fast_counts_are_the_analyzers_counts(ngram_range: tuple[int, int]) -> None:
    texts = [*_labelled()[0], *UNSEEN, "a  bb\t\tccc\n\ndddd", " a b c ", "一 二", "ab", "中文English混合 x"]
    texts.append(" ".join(texts))
    for text in texts:
        assert char_wb_counts(text, *ngram_range) == Counter(char_wb_ngrams(text, *ngram_range)), text


def test_min_confidence_decides_whether_a_label_is_named(tmp_path: Path) -> None:
    questions, intents = _labelled()
    document = load_classifier_file(_trained_file(tmp_path, questions, intents, min_confidence=0.99))
    assert document["min_confidence"] == 0.99
    strict = LinearIntentClassifier.from_document(document)
    lenient = LinearIntentClassifier.from_document({**document, "min_confidence": 0.01})
    question = "年假有多少天？"
    probabilities = lenient.probabilities(question)
    best = max(probabilities, key=probabilities.__getitem__)
    assert probabilities[best] < 0.99
    assert strict.classify(question) is None
    assert lenient.classify(question) == (best, probabilities[best])


def test_a_long_question_is_classified_by_its_first_max_question_chars(tmp_path: Path) -> None:
    questions, intents = _labelled()
    classifier = LinearIntentClassifier.from_document(load_classifier_file(_trained_file(tmp_path, questions, intents)))
    pipeline = _sklearn_pipeline(questions, intents)
    head = ("你好 谢谢 " * 400)[:MAX_QUESTION_CHARS]
    question = head + "请比较分析两种方案的优缺点，为什么，如何制定计划。" * 4000
    assert len(question) > 100_000
    ours = classifier.probabilities(question)
    assert ours == classifier.probabilities(head)
    expected = dict(zip(pipeline.classes_, pipeline.predict_proba([head])[0], strict=True))
    assert ours == pytest.approx(expected, abs=1e-9)
    whole = dict(zip(pipeline.classes_, pipeline.predict_proba([question])[0], strict=True))
    assert ours != pytest.approx(whole, abs=1e-3)  # the tail would have changed the answer


def _moved_column(vocabulary: dict[str, int], column: int) -> dict[str, int]:
    first = next(iter(vocabulary))
    return {**vocabulary, first: column}


@pytest.fixture(scope="module")
def valid_document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    questions, intents = _labelled()
    path = _trained_file(tmp_path_factory.mktemp("valid"), questions, intents)
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda d: {**d, "format": "something-else/1"}, "not an intent classifier"),
        (lambda d: {**d, "labels": ["lookup"]}, "labels must be a list of at least two"),
        (lambda d: {**d, "labels": ["a", "a", "b"]}, "labels must be a list of at least two different"),
        (lambda d: {**d, "analyzer": "word"}, "analyzer must be char_wb"),
        (lambda d: {**d, "ngram_range": [3, 1]}, "ngram_range"),
        (lambda d: {**d, "vocabulary": {"a": "0"}}, "vocabulary must map n-grams to columns"),
        (lambda d: {**d, "min_confidence": 0}, "min_confidence must be above 0"),
        (lambda d: {**d, "coef": d["coef"][:2]}, "coef must have 3 row(s)"),
        (lambda d: {**d, "intercept": [0.0]}, "intercept must have 3 number(s)"),
        (lambda d: {**d, "idf": d["idf"][:-1]}, "idf must have"),
        (
            lambda d: {**d, "vocabulary": _moved_column(d["vocabulary"], len(d["idf"]))},
            "vocabulary columns must be 0 to",
        ),
    ],
)
def test_a_bad_document_is_refused_naming_the_file(
    tmp_path: Path, valid_document: dict[str, Any], change: Any, problem: str
) -> None:
    bad = tmp_path / "bad-intents.json"
    bad.write_text(json.dumps(change(valid_document), ensure_ascii=False), encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad-intents\.json") as raised:
        load_classifier_file(bad)
    assert problem in str(raised.value)
    with pytest.raises(ValueError, match="intent classifier"):
        LinearIntentClassifier.from_document(change(valid_document))


def test_a_missing_or_non_json_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"nowhere\.json: cannot read the intent classifier"):
        load_classifier_file(tmp_path / "nowhere.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"format": ', encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken\.json: the intent classifier is not JSON"):
        load_classifier_file(broken)
