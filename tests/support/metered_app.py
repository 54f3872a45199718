"""An app that calls an OpenAI-compatible server for a plan of users; run under `opentelemetry-instrument`.

TEST_PLAN names a JSON file: a list of phases, each a list of calls [user, department, max_tokens].
Before every phase after the first the app reads one line from stdin, so a test can do
things (stop the collector, restart it) between phases. It prints "phase N done" after each.
"""

import json
import os
import sys

import openai

import tokenmeter

client = openai.OpenAI(base_url=os.environ["TEST_OPENAI_BASE_URL"], api_key="sk-test", max_retries=0)
with open(os.environ["TEST_PLAN"], encoding="utf-8") as handle:
    phases = json.load(handle)
for number, calls in enumerate(phases):
    if number:
        sys.stdin.readline()
    for user, department, max_tokens in calls:
        with tokenmeter.attribution(user=user, department=department):
            client.chat.completions.create(
                model="qwen2.5-7b-instruct",
                messages=[{"role": "user", "content": "人工智能是什么？"}],
                max_tokens=max_tokens,
            )
    print(f"phase {number} done", flush=True)
