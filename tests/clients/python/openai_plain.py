"""Plain (tool-free) session with the official `openai` Python SDK, for a
real upstream whose text is gibberish: checks that everything parses.

Usage: python3 openai_plain.py BASE_URL API_KEY MODEL

Prints one JSON object of shapes and counts; the Rust test asserts on it.
"""

import json
import sys

from openai import OpenAI

BASE, KEY, MODEL = sys.argv[1], sys.argv[2], sys.argv[3]
client = OpenAI(base_url=BASE + "/v1", api_key=KEY, max_retries=0, timeout=120)
out = {}

# The tiny model never ends a turn, so every answer stops at the token
# limit with `response.incomplete`, which the SDK's `responses.stream()`
# helper refuses (it wants `response.completed`, as with OpenAI's own API):
# the raw typed event stream is read instead.
events = list(
    client.responses.create(
        model=MODEL,
        input="What is the weather in Oslo?",
        max_output_tokens=12,
        temperature=0,
        stream=True,
    )
)
types = [e.type for e in events]
final = events[-1].response
out["stream_types"] = types
out["stream_status"] = final.status
out["stream_text_len"] = len(final.output_text)
out["stream_usage"] = [final.usage.input_tokens, final.usage.output_tokens]

whole = client.responses.create(
    model=MODEL, input="hello", instructions="Be brief.", max_output_tokens=8, temperature=0
)
chained = client.responses.create(
    model=MODEL, input="again", previous_response_id=whole.id, max_output_tokens=8, temperature=0
)
out["whole_status"] = whole.status
out["whole_text_len"] = len(whole.output_text)
out["chained_input_tokens_grew"] = chained.usage.input_tokens > whole.usage.input_tokens

chat = client.chat.completions.create(
    model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=6, temperature=0
)
out["chat_finish"] = chat.choices[0].finish_reason
out["chat_usage"] = [chat.usage.prompt_tokens, chat.usage.completion_tokens]
chunks = list(
    client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=6,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
)
out["chat_stream_text_len"] = len(
    "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
)
out["chat_stream_usage"] = chunks[-1].usage.completion_tokens if chunks[-1].usage else 0
print(json.dumps(out))
