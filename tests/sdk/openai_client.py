"""The official openai Python SDK against ringgate: one chat completion and one streamed.

Usage: python3 openai_client.py BASE_URL
Prints one JSON line with what the SDK saw; the Rust test asserts on it.
"""
import json
import sys

import openai

base_url = sys.argv[1]
client = openai.OpenAI(base_url=base_url, api_key="sk-test-client", max_retries=0, timeout=20)

chat = client.chat.completions.create(
    model="gpt-4.1",
    messages=[{"role": "user", "content": "Say hello"}],
)
stream = client.chat.completions.create(
    model="gpt-4.1",
    messages=[{"role": "user", "content": "Count"}],
    stream=True,
    stream_options={"include_usage": True},
)
pieces = []
usage = None
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        pieces.append(chunk.choices[0].delta.content)
    if chunk.usage is not None:
        usage = chunk.usage.total_tokens
models = [m.id for m in client.models.list()]
print(json.dumps({
    "chat_content": chat.choices[0].message.content,
    "chat_model": chat.model,
    "chat_total_tokens": chat.usage.total_tokens,
    "stream_pieces": len(pieces),
    "stream_text": "".join(pieces),
    "stream_usage_total": usage,
    "models": models,
}))
