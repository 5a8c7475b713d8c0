"""The official openai Python SDK through ringgate to a Gemini upstream (api = "gemini"):
a chat, a stream with usage, a tool call (whole and streamed) and its answer, and a
RESOURCE_EXHAUSTED error as the SDK's RateLimitError.

Usage: python3 openai_gemini.py BASE_URL
Prints one JSON line with what the SDK saw; tests/gemini.rs asserts on it.
"""
import json
import sys

import openai

client = openai.OpenAI(base_url=sys.argv[1], api_key="client-token", max_retries=0, timeout=20)
seen = {}
msgs = [{"role": "user", "content": "Say hello"}]

chat = client.chat.completions.create(model="gemini", messages=msgs)
seen["chat"] = chat.choices[0].message.content
seen["chat_model"] = chat.model

text, usage = [], None
for chunk in client.chat.completions.create(
    model="gemini", messages=msgs, stream=True, stream_options={"include_usage": True}
):
    if chunk.usage is not None:
        usage = chunk.usage.total_tokens
    if chunk.choices and chunk.choices[0].delta.content:
        text.append(chunk.choices[0].delta.content)
seen["stream"] = "".join(text)
seen["stream_usage_total"] = usage

tools = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather now",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
    },
}]
ask = [{"role": "user", "content": "Weather in Boston?"}]
r = client.chat.completions.create(model="gemini", messages=ask, tools=tools)
call = r.choices[0].message.tool_calls[0]
seen["tool_name"] = call.function.name
seen["tool_args"] = json.loads(call.function.arguments)

name = None
for chunk in client.chat.completions.create(model="gemini", messages=ask, tools=tools, stream=True):
    for tc in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
        name = tc.function.name or name
seen["stream_tool_name"] = name

follow = ask + [
    {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
    {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp_c": 21})},
]
r = client.chat.completions.create(model="gemini", messages=follow, tools=tools)
seen["after_tool"] = r.choices[0].finish_reason

try:
    client.chat.completions.create(model="gemini", messages=msgs, extra_headers={"x-mock-status": "429"})
    seen["rate_limited"] = None
except openai.RateLimitError as e:
    seen["rate_limited"] = type(e).__name__

print(json.dumps(seen))
