"""The opt-in repeat-answer cache (docs/answer-cache.md), the app side's: identical chat questions within a
TTL get the earlier answer without an LLM call.

Modules: the key of a request (`cache_keys`), what an entry holds (`entries`), sealing entries with AES-GCM
under a key derived from TOKENMETER_HASH_KEY (`sealing`, needs the `answer-cache` extra), where sealed
entries live (`stores`: process memory or a local directory), the cache over them (`sealed_cache`), opening
it from the settings (`configuration`), and a hit as the OpenAI SDK's own objects (`cached_responses`).
Nothing here imports `cryptography` or `openai` until the cache is switched on and used.
"""
