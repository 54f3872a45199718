"""`tokenmeter serve`: store, migrations, OTLP receivers and the HTTP API in one process."""
