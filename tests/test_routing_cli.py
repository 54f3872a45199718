"""`tokenmeter routing` end to end (docs/intents.md): train from the example CSV, classify with a policy whose
routing.classifier names the trained file, check the policy; bad input exits 2 with one line naming the file."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tokenmeter.cli.exit_codes import EXIT_BAD_INPUT, EXIT_OK
from tokenmeter.cli.main import main
from tokenmeter.enforcer.policy import load_policy
from tokenmeter.routing.intent_classifier import LinearIntentClassifier, load_classifier_file
from tokenmeter.routing.intents import IntentClassifier

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples" / "intents-labelled.csv"
POLICY = """
budgets: []
routing:
  tiers:
    - {name: small, model: qwen2.5-7b-instruct}
    - {name: remote, model: deepseek-chat}
  critical_apps: [legal-qa]
  intents:
    - {name: reasoning, patterns: ["为什么|如何|比较|分析", "(?i)\\\\bwhy\\\\b|step by step"]}
  classifier: %(classifier)s
  rules:
    - name: short-lookup
      when: {intent: [lookup], question_chars: {max: 80}}
      tier: small
"""

Run = tuple[int, str, str]


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> Run:
    code = main(["routing", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def trained(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """The example CSV trained into intents.json next to a policy that names it."""
    code, out, err = _run(capsys, "train", str(EXAMPLES), "--out", str(tmp_path / "intents.json"))
    assert (code, err) == (EXIT_OK, "")
    assert "82 questions: chitchat 16, lookup 34, reasoning 32" in out
    assert "held-out accuracy" in out and "wrote" in out
    (tmp_path / "policy.yaml").write_text(POLICY % {"classifier": "intents.json"}, encoding="utf-8")
    return tmp_path


def test_train_writes_a_file_the_policy_and_the_app_can_read(trained: Path) -> None:
    document = load_classifier_file(trained / "intents.json")
    assert document["labels"] == ["chitchat", "lookup", "reasoning"]
    assert document["min_confidence"] == 0.5 and document["trained"]["examples"] == 82
    assert 0 <= document["trained"]["accuracy"] <= 1
    policy = load_policy(trained / "policy.yaml")  # run from elsewhere: the path is the policy file's directory
    assert policy.routing_document["classifier"] == document
    assert list(trained.glob(".*.tmp")) == []


def test_classify_names_the_intent_and_what_named_it(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    questions = ["为什么这个季度成本上升？", "公司VPN客户端的最新版本号是多少？", "weather"]
    code, out, err = _run(capsys, "classify", "--policy", str(trained / "policy.yaml"), *questions)
    assert (code, err) == (EXIT_OK, "")
    lines = [line.split("\t") for line in out.splitlines()]
    assert lines[0] == ["reasoning", "rule reasoning", questions[0]]
    # what the app would classify, with the classifier's probability shown
    expected = IntentClassifier.from_routing_document(load_policy(trained / "policy.yaml").routing_document)
    trained_classifier = expected.trained
    assert isinstance(trained_classifier, LinearIntentClassifier)
    for (intent, named_by, question), asked in zip(lines, questions, strict=True):
        assert question == asked
        assert (intent if intent != "-" else None) == expected.classify(asked)
        if named_by.startswith("classifier"):
            assert named_by == f"classifier (p={trained_classifier.probabilities(asked)[intent]:.2f})"
    assert lines[1][0] == "lookup" and lines[1][1].startswith("classifier (p=")


def test_classify_reads_questions_from_stdin(
    trained: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO("比较两个方案\n\nwhy so slow\n"))
    code, out, _ = _run(capsys, "classify", "--policy", str(trained / "policy.yaml"))
    assert code == EXIT_OK
    assert [line.split("\t")[0] for line in out.splitlines()] == ["reasoning", "reasoning"]


def test_check_summarises_the_routing_section(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "check", "--policy", str(trained / "policy.yaml"))
    assert (code, err) == (EXIT_OK, "")
    version = load_policy(trained / "policy.yaml").routing_document["version"]
    for line in ("  small: qwen2.5-7b-instruct", "  remote: deepseek-chat", "  short-lookup -> tier small",
                 "apps: *; critical apps: legal-qa", "  reasoning: 0 keyword(s), 2 pattern(s)",
                 f"routing version: {version}"):  # fmt: skip
        assert line in out.splitlines()
    assert "classifier: intents.json: labels chitchat, lookup, reasoning; min_confidence 0.5; 82 examples" in out


def test_check_a_policy_without_routing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "policy.yaml").write_text("budgets: []\n", encoding="utf-8")
    code, out, _ = _run(capsys, "check", "--policy", str(tmp_path / "policy.yaml"))
    assert code == EXIT_OK and "no routing: section" in out


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "the file is empty"),
        ("question,label\n报销期限,lookup\n", "no column 'intent' in the header row (found: 'question', 'label')"),
        ("question,intent\n", "no labelled questions below the header row"),
        ("question,intent\n报销期限,lookup\n年假天数,lookup\n", "at least two different intents are needed"),
        (
            "question,intent\n报销期限,lookup\n年假天数,lookup\n你好,chitchat\n",
            "each intent needs at least two examples; too few for: chitchat",
        ),
        ("question,intent\n报销期限,lookup\n,lookup\n", "line 3: a question and its intent are both needed"),
        ("question,intent\n报销期限,look up\n", "line 2: intent 'look up' must be letters"),
    ],
)
def test_train_refuses_bad_labelled_questions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, problem: str
) -> None:
    labelled = tmp_path / "labelled.csv"
    labelled.write_text(text, encoding="utf-8")
    code, _, err = _run(capsys, "train", str(labelled), "--out", str(tmp_path / "intents.json"))
    assert code == EXIT_BAD_INPUT
    assert err.startswith(f"tokenmeter routing train: {labelled}") and problem in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "intents.json").exists()


def test_train_refuses_a_missing_file_a_bad_option_and_an_unwritable_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(capsys, "train", str(tmp_path / "nowhere.csv"), "--out", str(tmp_path / "i.json"))
    assert code == EXIT_BAD_INPUT and "nowhere.csv: cannot read the labelled questions" in err
    code, _, err = _run(capsys, "train", str(EXAMPLES), "--out", str(tmp_path / "i.json"), "--min-confidence", "1.5")
    assert code == EXIT_BAD_INPUT and "min_confidence must be above 0 and at most 1" in err
    code, _, err = _run(capsys, "train", str(EXAMPLES), "--out", str(tmp_path / "no-dir" / "i.json"))
    assert code == EXIT_BAD_INPUT and "cannot write --out" in err and "no-dir" in err


def test_train_without_scikit_learn_names_the_extra(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [name for name in sys.modules if name == "sklearn" or name.startswith("sklearn.")]:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed: importing it raises ImportError
    monkeypatch.setitem(sys.modules, "sklearn", None)
    code, _, err = _run(capsys, "train", str(EXAMPLES), "--out", str(tmp_path / "intents.json"))
    assert code == EXIT_BAD_INPUT
    assert "pip install 'tokenmeter-otel[routing-train]'" in err


@pytest.mark.parametrize("action", ["classify", "check"])
def test_a_missing_policy_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str], action: str) -> None:
    code, out, err = _run(capsys, action, "--policy", str(tmp_path / "nowhere.yaml"), *(["q"] * (action == "classify")))
    assert (code, out) == (EXIT_BAD_INPUT, "")
    assert err == f"tokenmeter routing {action}: {tmp_path / 'nowhere.yaml'}: cannot read the policy file: " \
        "No such file or directory\n"  # fmt: skip


@pytest.mark.parametrize("classifier", ["missing.json", "broken.json"])
def test_a_bad_classifier_path_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], classifier: str
                                              ) -> None:  # fmt: skip
    (tmp_path / "broken.json").write_text('{"format": "tokenmeter-intent-classifier/1"}', encoding="utf-8")
    (tmp_path / "policy.yaml").write_text(POLICY % {"classifier": classifier}, encoding="utf-8")
    for action in ("check", "classify"):
        questions = ["q"] if action == "classify" else []
        code, out, err = _run(capsys, action, "--policy", str(tmp_path / "policy.yaml"), *questions)
        assert (code, out) == (EXIT_BAD_INPUT, "")
        assert "routing.classifier" in err and str(tmp_path / classifier) in err and "Traceback" not in err
