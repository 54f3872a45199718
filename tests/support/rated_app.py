"""An app whose answers get rated; run under `opentelemetry-instrument`.

TEST_PLAN names a JSON file: {"app": name, "answers": [[user, department, model, max_tokens, message_id], ...],
"ratings": [[message_id, score], ...]}. Each answer is one chat call made inside
``tokenmeter.attribution(user=..., department=..., app=..., message=message_id)``; then the app rates
the listed answers itself with ``tokenmeter.feedback(...)`` (the rest a test rates through serve's
``POST /v1/feedback``). It prints "done" at the end.
"""

import json
import os

import openai

import tokenmeter
from tokenmeter.feedback import feedback

client = openai.OpenAI(base_url=os.environ["TEST_OPENAI_BASE_URL"], api_key="sk-test", max_retries=0)
with open(os.environ["TEST_PLAN"], encoding="utf-8") as handle:
    plan = json.load(handle)
for user, department, model, max_tokens, message_id in plan["answers"]:
    with tokenmeter.attribution(user=user, department=department, app=plan["app"], message=message_id):
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "合同第三条是什么意思？"}], max_tokens=max_tokens
        )
for message_id, score in plan["ratings"]:
    with tokenmeter.attribution(app=plan["app"]):
        feedback(score, message_id=message_id)
print("done", flush=True)
