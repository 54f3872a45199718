"""What tokenmeter's HTTP listeners share (serve's receiver and API, the enforcer)."""
