"""`tokenmeter routing`: train the intent classifier, see how questions are classified, check a policy's routing.

    tokenmeter routing train LABELLED.csv --out intents.json [--min-confidence 0.5]
    tokenmeter routing classify --policy policy.yaml "报销期限是多久？" ["question" ...]
    tokenmeter routing check --policy policy.yaml

Everything runs locally: no store, no enforcer, no network (docs/intents.md). Output goes to stdout, errors
to stderr as one line; a bad file or argument exits with 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from tokenmeter.cli.exit_codes import EXIT_BAD_INPUT, EXIT_OK
from tokenmeter.routing.intent_training import TrainingError, train_classifier
from tokenmeter.routing.intents import CLASSIFIER, IntentClassifier

if TYPE_CHECKING:
    from tokenmeter.enforcer.policy import Policy

Commands = "argparse._SubParsersAction[argparse.ArgumentParser]"


def add_routing_parser(commands: Commands) -> None:
    routing = commands.add_parser(
        "routing",
        help="train the intent classifier, classify questions, check a policy's routing: section",
        description="Intent classification and routing rules, locally (docs/intents.md, docs/routing.md).",
    )
    actions = routing.add_subparsers(dest="routing_command", required=True, metavar="ACTION")
    train = actions.add_parser("train", help="train an intent classifier from labelled questions (CSV)",
                               description="Train from a CSV with the columns question,intent (UTF-8, header row); "
                               "needs the routing-train extra (scikit-learn).")  # fmt: skip
    train.add_argument("labelled", type=Path, metavar="LABELLED.csv", help="the labelled questions")
    train.add_argument("--out", type=Path, required=True, metavar="FILE", help="the classifier file to write (JSON)")
    train.add_argument("--min-confidence", type=float, default=0.5, metavar="P",
                       help="below this probability the classifier names no intent (default 0.5)")  # fmt: skip
    train.set_defaults(run=lambda args, stdout, _stdin: run_train(args, stdout))
    classify = actions.add_parser("classify", help="each question's intent and what named it",
                                  description="Classify with the policy's routing.intents, then its classifier, "
                                  "as the app does. Without questions: one per line from stdin.")  # fmt: skip
    _add_policy_option(classify)
    classify.add_argument("questions", nargs="*", metavar="QUESTION", help="the questions")
    classify.set_defaults(run=run_classify)
    check = actions.add_parser("check", help="validate a policy and summarise its routing: section")
    _add_policy_option(check)
    check.set_defaults(run=lambda args, stdout, _stdin: run_check(args, stdout))


def _add_policy_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", type=Path, required=True, metavar="FILE", help="the policy file")


def run_train(args: argparse.Namespace, stdout: TextIO) -> int:
    """Train and write the classifier file; 0 ok, 2 bad input (the CSV, the option, the output file)."""

    def say(line: str) -> None:
        stdout.write(f"{line}\n")
        stdout.flush()

    try:
        trained = train_classifier(args.labelled, args.min_confidence, progress=say)
    except TrainingError as exc:
        return _fail("train", str(exc))
    try:
        _write_atomically(args.out, json.dumps(trained.document, ensure_ascii=False, separators=(",", ":")) + "\n")
    except OSError as exc:
        return _fail("train", f"cannot write --out {args.out}: {exc.strerror or exc}")
    say(f"wrote {args.out}: labels {', '.join(trained.document['labels'])}; "
        f"name it in the policy's routing.classifier (docs/intents.md)")  # fmt: skip
    return EXIT_OK


def run_classify(args: argparse.Namespace, stdout: TextIO, stdin: TextIO) -> int:
    """Print each question's intent and what named it; 2 for a bad policy file."""
    policy = _policy_or_none(args.policy, "classify")
    if policy is None:
        return EXIT_BAD_INPUT
    classifier = IntentClassifier.from_routing_document(policy.routing_document)
    if not classifier.rules and classifier.trained is None:
        stdout.write("the policy names no intents: no routing.intents and no routing.classifier\n")
    questions = args.questions or [line.rstrip("\n") for line in stdin if line.strip()]
    for question in questions:
        stdout.write(f"{_named(classifier, question)}\t{question}\n")
    return EXIT_OK


def _named(classifier: IntentClassifier, question: str) -> str:
    """``intent<TAB>what named it`` for one question."""
    found = classifier.explain(question)
    if found is not None and found[1] == CLASSIFIER and classifier.trained is not None:
        probability = classifier.trained.probabilities(question)[found[0]]
        return f"{found[0]}\tclassifier (p={probability:.2f})"
    if found is not None:
        return f"{found[0]}\t{found[1]}"
    if classifier.trained is None:
        return "-\tno intent rule matched"
    return f"-\tno intent rule matched; classifier below min_confidence {classifier.trained.min_confidence:g}"


def run_check(args: argparse.Namespace, stdout: TextIO) -> int:
    """Validate the policy and print its routing: section in a few lines; 2 for a bad policy file."""
    policy = _policy_or_none(args.policy, "check")
    if policy is None:
        return EXIT_BAD_INPUT
    stdout.write(f"{args.policy}: valid\n")
    if policy.routing is None:
        stdout.write("no routing: section (no call is routed)\n")
        return EXIT_OK
    for line in routing_check_lines(policy):
        stdout.write(f"{line}\n")
    return EXIT_OK


def routing_check_lines(policy: Policy) -> list[str]:
    """What ``check`` prints for a policy with a routing: section."""
    from tokenmeter.routing.routing_policy import routing_summary

    routing, document = policy.routing, policy.routing_document
    assert routing is not None
    summary = routing_summary(routing)
    lines = ["tiers (cheapest first):", *(f"  {tier}" for tier in summary["tiers"])]
    lines += ["rules (first match wins):", *(f"  {rule}" for rule in summary["rules"] or ["(none)"])]
    lines.append(f"apps: {', '.join(routing.apps)}; critical apps: {', '.join(summary['critical_apps']) or 'none'}")
    lines.append("intents (first match wins):")
    lines += [f"  {rule.name}: {len(rule.keywords)} keyword(s), {len(rule.patterns)} pattern(s)"
              for rule in routing.intents] or ["  (none)"]  # fmt: skip
    lines.append(_classifier_line(routing.classifier, document.get("classifier")))
    lines.append(f"routing version: {document.get('version')}")
    return lines


def _classifier_line(path: str | None, classifier: dict[str, Any] | None) -> str:
    if path is None or classifier is None:
        return "classifier: none"
    trained = classifier.get("trained") or {}
    accuracy = trained.get("accuracy")
    held_out = f", held-out accuracy {accuracy:.1%}" if isinstance(accuracy, (int, float)) else ""
    confidence = classifier.get("min_confidence", 0.5)
    return (f"classifier: {path}: labels {', '.join(classifier['labels'])}; min_confidence {confidence:g}; "
            f"{trained.get('examples', '?')} examples{held_out}")  # fmt: skip


def _policy_or_none(path: Path, action: str) -> Policy | None:
    """The policy, or None after one line on stderr naming the file and the problem."""
    from tokenmeter.enforcer.policy import PolicyError, load_policy

    try:
        return load_policy(path)
    except PolicyError as exc:
        _fail(action, str(exc))
        return None


def _fail(action: str, message: str) -> int:
    sys.stderr.write(f"tokenmeter routing {action}: {message}\n")
    return EXIT_BAD_INPUT


def _write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` by a rename, so an enforcer reloading its policy never reads half a file."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
