"""The official openai Python SDK through ringgate's AI layer: gateway client key, model
listing answered by the gateway, an alias routed with the provider's model name, the
response cache, streaming without asking for usage (every chunk the SDK sees must carry a
choice), streaming with usage, a fallback, a wrong key and an unknown model.

Usage: python3 openai_ai_layer.py BASE_URL
Prints one JSON line with what the SDK saw; tests/ai.rs asserts on it.
"""
import json
import sys

import openai

base_url = sys.argv[1]
client = openai.OpenAI(base_url=base_url, api_key="sk-sdk-client", max_retries=0, timeout=20)
seen = {}

seen["models"] = [m.id for m in client.models.list()]

msgs = [{"role": "user", "content": "Say hello"}]
cache = []
for _ in range(2):
    raw = client.chat.completions.with_raw_response.create(model="gpt4", messages=msgs)
    cache.append(raw.headers.get("x-cache"))
    chat = raw.parse()
seen["cache"] = cache
seen["chat_model"] = chat.model

pieces, without_choices = [], 0
for chunk in client.chat.completions.create(model="gpt4", messages=msgs, stream=True):
    if not chunk.choices:
        without_choices += 1
        continue
    if chunk.choices[0].delta.content:
        pieces.append(chunk.choices[0].delta.content)
seen["stream_pieces"] = len(pieces)
seen["stream_chunks_without_choices"] = without_choices

usage = None
for chunk in client.chat.completions.create(
    model="gpt4", messages=msgs, stream=True, stream_options={"include_usage": True}
):
    if chunk.usage is not None:
        usage = chunk.usage.total_tokens
seen["stream_usage_total"] = usage

fb = client.chat.completions.create(
    model="gpt-4o",
    messages=[{"role": "user", "content": "fallback please"}],
    extra_headers={"x-mock-status": "503", "x-mock-fail-first": "1", "x-mock-fail-key": "sdk-fb"},
)
seen["fallback_model"] = fb.model

try:
    openai.OpenAI(base_url=base_url, api_key="sk-wrong", max_retries=0).models.list()
    seen["bad_key"] = "accepted"
except openai.APIStatusError as e:
    seen["bad_key"] = type(e).__name__

try:
    client.chat.completions.create(model="no-such-model", messages=msgs)
    seen["unknown_model"] = "accepted"
except openai.APIStatusError as e:
    seen["unknown_model"] = type(e).__name__

print(json.dumps(seen))
