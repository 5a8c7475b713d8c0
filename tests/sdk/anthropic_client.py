"""The official anthropic Python SDK against ringgate's /v1/messages: a message, a stream
(the SDK's stream helper, which rebuilds the message from the events), tool use (plain and
streamed) and the tool result sent back.

Usage: python3 anthropic_client.py BASE_URL API_KEY MODEL
Prints one JSON line with what the SDK saw; the Rust test asserts on it.
"""
import json
import sys

import anthropic

base_url, api_key, model = sys.argv[1:4]
client = anthropic.Anthropic(base_url=base_url, api_key=api_key, max_retries=0, timeout=20)
TOOLS = [{
    "name": "get_weather",
    "description": "The current weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}]
ASK = [{"role": "user", "content": "Weather in Paris?"}]

msg = client.messages.create(model=model, max_tokens=100, system="Be brief.",
                             messages=[{"role": "user", "content": "Say hello"}])

with client.messages.stream(model=model, max_tokens=100,
                            messages=[{"role": "user", "content": "Count"}]) as s:
    texts = [t for t in s.text_stream]
    streamed = s.get_final_message()

tool = client.messages.create(model=model, max_tokens=100, messages=ASK, tools=TOOLS,
                              tool_choice={"type": "any"})
use = [b for b in tool.content if b.type == "tool_use"][0]
answer = client.messages.create(
    model=model, max_tokens=100, tools=TOOLS,
    messages=ASK + [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in tool.content]},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]}],
)

with client.messages.stream(model=model, max_tokens=100, messages=ASK, tools=TOOLS) as s:
    for _ in s:
        pass
    streamed_tool = s.get_final_message()
streamed_use = [b for b in streamed_tool.content if b.type == "tool_use"][0]

def prompt(u):
    return u.input_tokens + (u.cache_read_input_tokens or 0) + (u.cache_creation_input_tokens or 0)

usages = [msg.usage, streamed.usage, tool.usage, answer.usage, streamed_tool.usage]
print(json.dumps({
    "text": "".join(b.text for b in msg.content if b.type == "text"),
    "model": msg.model,
    "stop_reason": msg.stop_reason,
    "stream_pieces": len(texts),
    "stream_text": "".join(texts),
    "stream_stop_reason": streamed.stop_reason,
    # The streamed message's usage as the SDK rebuilt it from the events: message_start
    # first, then whatever message_delta (cumulative counts) overwrites.
    "stream_usage": {
        "input_tokens": streamed.usage.input_tokens,
        "output_tokens": streamed.usage.output_tokens,
        "cache_read_input_tokens": streamed.usage.cache_read_input_tokens,
    },
    "tool_stop_reason": tool.stop_reason,
    "tool_name": use.name,
    "tool_input": use.input,
    "answer_stop_reason": answer.stop_reason,
    "streamed_tool_name": streamed_use.name,
    "streamed_tool_input": streamed_use.input,
    "streamed_tool_stop_reason": streamed_tool.stop_reason,
    "prompt_tokens": sum(prompt(u) for u in usages),
    "completion_tokens": sum(u.output_tokens for u in usages),
}))
