"""`tokenmeter demo` (`make demo`): the whole pipeline on the embedded default, in under two minutes.

A `tokenmeter serve` with a demo quota policy, a local OpenAI-compatible LLM server that
answers deterministically, and a simulated workload of three departments' users asking
RAG-style questions through the instrumented `openai` SDK. Ends with a report and a check
that the report's totals equal a direct query of the stored OTLP rows.
"""
