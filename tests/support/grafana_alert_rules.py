"""The Grafana-managed alert rules (alert_rules/grafana/tokenmeter-alerts.yaml), evaluated offline.

A rule's query A runs on chDB as Grafana's ClickHouse data source would run it (the file's ``$$`` is
Grafana's escape of ``$``); each row is one alert instance, its string columns the labels and its one
numeric column the value; Grafana's math condition (query C) is then evaluated per instance as Grafana does.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

RULES_FILE = Path(__file__).resolve().parents[2] / "alert_rules" / "grafana" / "tokenmeter-alerts.yaml"
TEXT = RULES_FILE.read_text(encoding="utf-8")
ALERTING: dict[str, Any] = yaml.safe_load(TEXT)
RULES = {rule["uid"]: rule for group in ALERTING["groups"] for rule in group["rules"]}


def rule_sql(uid: str) -> str:
    query = next(q for q in RULES[uid]["data"] if q["datasourceUid"] != "__expr__")
    return str(query["model"]["rawSql"]).replace("$$", "$")


def fires(uid: str, value: float) -> bool:
    """Grafana's math expression for one instance, e.g. ``$A >= 0.8 && $A < 1``."""
    condition = next(q for q in RULES[uid]["data"] if q["refId"] == RULES[uid]["condition"])
    expression = condition["model"]["expression"].replace("$$", "$").replace("$A", repr(float(value)))
    assert re.fullmatch(r"[\d.\s<>=&|!()-]+", expression), expression
    return bool(eval(expression.replace("&&", " and ").replace("||", " or ")))


def instances(client: Any, uid: str) -> dict[tuple[str, ...], float]:
    """One instance per row: the string columns are its labels, the one numeric column its value."""
    result = client.query(rule_sql(uid))
    described = client.query(f"DESCRIBE TABLE ({rule_sql(uid)})").result_rows
    numeric = [i for i, row in enumerate(described) if any(k in str(row[1]) for k in ("Int", "Float", "Decimal"))]
    assert len(numeric) == 1, f"{uid}: Grafana needs exactly one numeric column, got {described}"
    found = {}
    for row in result.result_rows:
        labels = tuple(str(value) for i, value in enumerate(row) if i != numeric[0])
        assert labels not in found, f"{uid}: two rows with the labels {labels} (Grafana refuses duplicate instances)"
        found[labels] = float(row[numeric[0]])
    return found


def label_names(client: Any, uid: str) -> list[str]:
    described = client.query(f"DESCRIBE TABLE ({rule_sql(uid)})").result_rows
    return [str(row[0]) for row in described if not any(k in str(row[1]) for k in ("Int", "Float", "Decimal"))]
