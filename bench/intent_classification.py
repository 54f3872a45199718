"""Time to classify one question's intent, as the app does before each chat call (docs/intents.md).

The classifier is trained from docs/examples/intents-labelled.csv (scikit-learn, once, before timing);
the intent rules are docs/routing.md's example (reasoning by patterns, lookup by keywords). Side by side
in one run, rounds interleaved:
- ``rules only``: ``IntentClassifier`` with the rules and no classifier;
- ``classifier only``: no rules, the trained classifier (pure Python: char n-grams, a sparse dot product);
- ``rules + classifier``: the rules first, the classifier when none matches (what an app with both runs).

Each over three sets of questions: the example CSV's 82 questions, and 200 questions of 500 and of 2,000
characters (the classifier reads the first MAX_QUESTION_CHARS), made of example questions joined at random, so their
n-grams are in the vocabulary. The long ones nearly always contain a rule's keyword, so ``rules +
classifier`` seldom reaches the classifier on them; ``classifier only`` is the worst case.

    .venv/bin/python bench/intent_classification.py [--rounds 60]
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import time
from pathlib import Path

from tokenmeter.routing.intent_classifier import MAX_QUESTION_CHARS, LinearIntentClassifier
from tokenmeter.routing.intent_rules import IntentRule
from tokenmeter.routing.intent_training import read_labelled_csv, train_classifier
from tokenmeter.routing.intents import IntentClassifier

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples" / "intents-labelled.csv"
RULES = (
    IntentRule(name="reasoning", patterns=("为什么|如何|比较|分析|步骤", r"(?i)\bwhy\b|\bhow\b|step by step")),
    IntentRule(name="lookup", keywords=("是什么", "多少", "哪", "what is", "when", "who")),
)
TARGET_P99_US = 1000.0


def long_questions(questions: list[str], count: int, chars: int = MAX_QUESTION_CHARS, seed: int = 7) -> list[str]:
    """``count`` questions of ``chars`` characters, each example questions joined at random."""
    pick = random.Random(seed)
    made = []
    for _ in range(count):
        text = ""
        while len(text) < chars:
            text += pick.choice(questions) + " "
        made.append(text[:chars])
    return made


def timed(classifier: IntentClassifier, questions: list[str]) -> list[float]:
    clock = time.perf_counter_ns
    samples = []
    for question in questions:
        start = clock()
        classifier.classify(question)
        samples.append((clock() - start) / 1000)
    return samples


def percentile(samples: list[float], share: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=60, help="passes over each question set (default 60)")
    args = parser.parse_args()
    trained = train_classifier(EXAMPLES)
    model = LinearIntentClassifier.from_document(trained.document)  # as the app reads it from GET /v1/routing
    cases = {
        "rules only": IntentClassifier(RULES, None),
        "classifier only": IntentClassifier((), model),
        "rules + classifier": IntentClassifier(RULES, model),
    }
    examples = read_labelled_csv(EXAMPLES).questions
    sets = {
        f"example questions ({len(examples)})": examples,
        "500-char questions (200)": long_questions(examples, 200, 500),
        "2,000-char questions (200)": long_questions(examples, 200, 2000),
    }
    samples = {(case, name): [] for case in cases for name in sets}
    for questions in sets.values():  # warm-up: compiled patterns, cached properties
        for classifier in cases.values():
            timed(classifier, questions)
    gc.collect()
    gc.freeze()
    for _ in range(args.rounds):
        for name, questions in sets.items():
            for case, classifier in cases.items():
                samples[(case, name)] += timed(classifier, questions)
    print_table(samples, trained.accuracy, len(trained.document["vocabulary"]))


def print_table(samples: dict[tuple[str, str], list[float]], accuracy: float, vocabulary: int) -> None:
    print(f"classifier: {vocabulary} n-grams, held-out accuracy {accuracy:.1%}; target p99 < {TARGET_P99_US:g} µs")
    print(f"{'case':<20} {'questions':<28} {'n':>7} {'p50 µs':>8} {'p99 µs':>8} {'mean µs':>8}  target")
    for (case, name), values in samples.items():
        p99 = percentile(values, 0.99)
        verdict = "met" if p99 < TARGET_P99_US else "NOT met"
        print(f"{case:<20} {name:<28} {len(values):>7} {statistics.median(values):>8.1f} {p99:>8.1f} "
              f"{statistics.fmean(values):>8.1f}  {verdict}")  # fmt: skip


if __name__ == "__main__":
    main()
