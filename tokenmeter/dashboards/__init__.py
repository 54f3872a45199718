"""The dashboards' panels, defined once: Grafana's JSON (dashboards/build.py) and the web page of
`tokenmeter serve` are both made from :mod:`tokenmeter.dashboards.panels`."""
