"""Write the Grafana dashboards (JSON for grafana-clickhouse-datasource) under dashboards/.

    .venv/bin/python dashboards/build.py

The panels are defined once in tokenmeter/dashboards/panels.py; the same definitions feed
the web page of `tokenmeter serve`. The committed JSON is what Grafana loads
(grafana/provisioning/dashboards); tests/test_dashboards.py checks it equals this output.
"""

from __future__ import annotations

from pathlib import Path

from tokenmeter.dashboards.grafana import build

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    for name, text in build().items():
        (HERE / name).write_text(text, encoding="utf-8")
        print(f"wrote dashboards/{name}")
