"""A plain OpenAI-SDK script with no tokenmeter code: run under `opentelemetry-instrument`.

With TEST_WAIT_FOR_SIGNAL set it then waits to be stopped by a signal, as servers are.
"""

import os
import time

import openai

client = openai.OpenAI(base_url=os.environ["TEST_OPENAI_BASE_URL"], api_key="sk-test", max_retries=0)
client.chat.completions.create(model="qwen2.5-7b-instruct", messages=[{"role": "user", "content": "人工智能是什么？"}])
for _chunk in client.chat.completions.create(
    model="qwen2.5-7b-instruct", messages=[{"role": "user", "content": "Hello"}], stream=True
):
    pass
print("app done", flush=True)
if os.environ.get("TEST_WAIT_FOR_SIGNAL"):
    time.sleep(120)
