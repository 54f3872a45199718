"""No class or function in the package grows past the sizes issue 17 brought them under.

At the time of that issue the largest class (``Metering``) had 260 lines and the largest
function (serve's ``_serve``) 87; each was split along its responsibilities to at most half.
A class past 130 lines or a function past 43 is doing several jobs again: split it the same
way (one module per concept, see docs/architecture.md) rather than raise the limit.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tokenmeter"
MAX_CLASS_LINES = 130
MAX_FUNCTION_LINES = 43


def _sizes() -> list[tuple[str, int, int]]:
    """(where, lines, limit) of every class and function in the package."""
    sizes = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if not isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            limit = MAX_CLASS_LINES if isinstance(node, ast.ClassDef) else MAX_FUNCTION_LINES
            sizes.append((f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}", lines, limit))
    return sizes


def test_no_class_or_function_is_over_its_size() -> None:
    sizes = _sizes()
    assert len(sizes) > 1000  # the walk reached the package (a wrong path would judge nothing, and pass)
    oversized = [f"{where}: {lines} lines > {limit}" for where, lines, limit in sizes if lines > limit]
    assert oversized == [], "\n".join(oversized)
