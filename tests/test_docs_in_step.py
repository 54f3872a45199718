"""The docs name every telemetry attribute and setting the code has, and no stale ones."""

from __future__ import annotations

import re
from pathlib import Path

from tokenmeter import semconv
from tokenmeter.settings import Settings

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _telemetry_names() -> set[str]:
    names = set()
    for key, value in vars(semconv).items():
        if key.isupper() and isinstance(value, str) and "." in value and not key.startswith("INSTRUMENTATION"):
            names.add(value)
    return names


def test_every_attribute_and_metric_is_documented() -> None:
    text = (DOCS / "instrumentation.md").read_text(encoding="utf-8")
    missing = sorted(name for name in _telemetry_names() if f"`{name}" not in text and f" {name}" not in text)
    assert not missing, f"docs/instrumentation.md does not mention: {missing}"


def test_documented_tokenmeter_attributes_exist() -> None:
    text = (DOCS / "instrumentation.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"`(tokenmeter\.[a-z_.]+[a-z_])`", text))
    stale = sorted(documented - _telemetry_names())
    assert not stale, f"docs/instrumentation.md names attributes the code does not have: {stale}"


def test_every_setting_has_a_row_in_the_environment_table() -> None:
    text = (DOCS / "instrumentation.md").read_text(encoding="utf-8")
    missing = [
        f"TOKENMETER_{name.upper()}" for name in Settings.model_fields if f"TOKENMETER_{name.upper()}" not in text
    ]
    assert not missing, f"docs/instrumentation.md has no row for: {missing}"
