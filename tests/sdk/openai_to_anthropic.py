"""The official openai Python SDK through ringgate to a model served by an Anthropic
upstream: a chat completion, a stream with usage, a tool call (plain and streamed) and the
tool result sent back.

Usage: python3 openai_to_anthropic.py BASE_URL API_KEY MODEL
Prints one JSON line with what the SDK saw; the Rust test asserts on it.
"""
import json
import sys

import openai

base_url, api_key, model = sys.argv[1:4]
client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=20)
TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}]
ASK = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"}]

chat = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Say hello"}], max_tokens=50)

pieces, stream_usage = [], None
for chunk in client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Count"}], stream=True,
    stream_options={"include_usage": True},
):
    if chunk.choices and chunk.choices[0].delta.content:
        pieces.append(chunk.choices[0].delta.content)
    if chunk.usage is not None:
        stream_usage = chunk.usage.model_dump()

tool = client.chat.completions.create(model=model, messages=ASK, tools=TOOLS, tool_choice="required")
call = tool.choices[0].message.tool_calls[0]
answer = client.chat.completions.create(
    model=model, tools=TOOLS,
    messages=ASK + [tool.choices[0].message.model_dump(exclude_none=True),
                    {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}],
)

# The SDK's stream helper accumulates tool-call deltas into the final message.
with client.beta.chat.completions.stream(model=model, messages=ASK, tools=TOOLS,
                                        stream_options={"include_usage": True}) as s:
    for _ in s:
        pass
    final = s.get_final_completion()
streamed_call = final.choices[0].message.tool_calls[0]

# Every request's usage: the gateway's counters must come to exactly these sums.
usages = [chat.usage.model_dump(), stream_usage, tool.usage.model_dump(), answer.usage.model_dump(),
          final.usage.model_dump()]
print(json.dumps({
    "chat_content": chat.choices[0].message.content,
    "chat_model": chat.model,
    "stream_pieces": len(pieces),
    "stream_text": "".join(pieces),
    "tool_finish": tool.choices[0].finish_reason,
    "tool_name": call.function.name,
    "tool_args": json.loads(call.function.arguments),
    "answer_finish": answer.choices[0].finish_reason,
    "answer_content": answer.choices[0].message.content,
    "streamed_finish": final.choices[0].finish_reason,
    "streamed_tool_name": streamed_call.function.name,
    "streamed_tool_args": json.loads(streamed_call.function.arguments),
    "prompt_tokens": sum(u["prompt_tokens"] for u in usages),
    "completion_tokens": sum(u["completion_tokens"] for u in usages),
    "requests_with_usage": len(usages),
}))
