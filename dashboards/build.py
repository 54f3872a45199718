"""Write the Grafana dashboards (JSON for grafana-clickhouse-datasource) under dashboards/, and the
SQL of the Grafana alert rules into alert_rules/grafana/tokenmeter-alerts.yaml.

    .venv/bin/python dashboards/build.py

The panels are defined once in tokenmeter/dashboards/panels.py (the Credits board's in credit_panels.py); the
same definitions feed the web page of `tokenmeter serve`. The committed JSON is what Grafana loads
(grafana/provisioning/dashboards); tests/test_dashboards.py checks it equals this output. The alert
rules' queries come from tokenmeter/dashboards/alert_queries.py (tests/test_grafana_alerts.py checks).
"""

from __future__ import annotations

from pathlib import Path

from tokenmeter.dashboards.alert_queries import write_queries
from tokenmeter.dashboards.grafana import build

HERE = Path(__file__).resolve().parent
ALERT_RULES = HERE.parent / "alert_rules" / "grafana" / "tokenmeter-alerts.yaml"

if __name__ == "__main__":
    for name, text in build().items():
        (HERE / name).write_text(text, encoding="utf-8")
        print(f"wrote dashboards/{name}")
    ALERT_RULES.write_text(write_queries(ALERT_RULES.read_text(encoding="utf-8")), encoding="utf-8")
    print("wrote the rules' queries in alert_rules/grafana/tokenmeter-alerts.yaml")
