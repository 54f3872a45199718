"""Integrations with specific LLM applications, loaded by `opentelemetry-instrument` like any instrumentor."""
