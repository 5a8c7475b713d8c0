"""The official openai Python SDK against two ringgate gateways sharing one Redis: a
cluster-wide request limit and a spend budget, seen through the SDK's own types.

Usage: python3 openai_cluster.py BASE_URL_A BASE_URL_B
Prints one JSON line with what the SDK saw; tests/cluster.rs asserts on it.
"""
import json
import sys

import openai

urls = sys.argv[1:3]
msgs = [{"role": "user", "content": "hi"}]
seen = {}

# A client with a cluster request limit, alternating between the two gateways: the SDK
# reads the x-ratelimit headers of every answer, then gets RateLimitError.
limited = [openai.OpenAI(base_url=u, api_key="sk-limited", max_retries=0, timeout=20) for u in urls]
headers = []
error = None
for i in range(20):
    try:
        raw = limited[i % 2].chat.completions.with_raw_response.create(
            model="gpt-4.1", messages=msgs, max_tokens=5
        )
        raw.parse()
        headers.append(
            {
                "limit": raw.headers.get("x-ratelimit-limit-requests"),
                "remaining": raw.headers.get("x-ratelimit-remaining-requests"),
                "reset": raw.headers.get("x-ratelimit-reset-requests"),
            }
        )
    except openai.RateLimitError as e:
        error = e
        break
seen["limited_headers"] = headers
seen["limited_error"] = type(error).__name__ if error else None
if error is not None:
    seen["limited_status"] = error.status_code
    seen["limited_code"] = error.code
    seen["limited_retry_after"] = error.response.headers.get("retry-after")

# A client with a spend budget, streaming, with the SDK's default retries: it stops with
# RateLimitError whose code is insufficient_quota, and (x-should-retry: false) the SDK
# does not retry it.
spender = [openai.OpenAI(base_url=u, api_key="sk-spender", timeout=20) for u in urls]
admitted = 0
error = None
for i in range(40):
    try:
        stream = spender[i % 2].chat.completions.create(
            model="gpt-4.1", messages=msgs, max_tokens=10, stream=True,
            extra_headers={"x-mock-chunks": "10"},
        )
        for _ in stream:
            pass
        admitted += 1
    except openai.RateLimitError as e:
        error = e
        break
seen["spend_admitted"] = admitted
seen["spend_error"] = type(error).__name__ if error else None
if error is not None:
    seen["spend_code"] = error.code
    seen["spend_type"] = error.type
    seen["spend_status"] = error.status_code
print(json.dumps(seen))
