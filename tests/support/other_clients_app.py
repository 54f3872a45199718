"""A script calling the Anthropic SDK, the Ollama client and DashScope's SDK, with no tokenmeter code: run under
`opentelemetry-instrument` (the servers' addresses come from the environment)."""

import os

import anthropic
import dashscope
import ollama

question = [{"role": "user", "content": "人工智能是什么？"}]
claude = anthropic.Anthropic(base_url=os.environ["TEST_ANTHROPIC_URL"], api_key="test-key", max_retries=0)
claude.messages.create(model="claude-sonnet-4-6", max_tokens=7, messages=question)
ollama.Client(host=os.environ["TEST_OLLAMA_HOST"]).chat("qwen2.5:7b", question, options={"num_predict": 8})
dashscope.base_http_api_url, dashscope.api_key = os.environ["TEST_DASHSCOPE_URL"], "sk-test"
dashscope.Generation.call("qwen-plus", "人工智能是什么？", max_tokens=9)
print("app done", flush=True)
