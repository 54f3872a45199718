"""The dashboard page of `tokenmeter serve` (http://127.0.0.1:9400/), from the same panel definitions as
the Grafana dashboards."""
