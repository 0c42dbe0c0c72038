"""Drives clawpen's inference service with the official `openai` Python SDK.

Usage: python3 openai_sdk.py BASE_URL API_KEY MODEL

Runs an agent-shaped session against BASE_URL (which must proxy the
scripted upstream of clawpen's tests) and prints one JSON object with what
the SDK parsed; the Rust test asserts on it. Any SDK exception fails the
run (exit 1, traceback on stderr).
"""

import json
import sys

from openai import OpenAI

BASE, KEY, MODEL = sys.argv[1], sys.argv[2], sys.argv[3]
client = OpenAI(base_url=BASE + "/v1", api_key=KEY, max_retries=0, timeout=60)

TOOLS = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    }
]
CHAT_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": t["name"],
            "description": t["description"],
            "parameters": t["parameters"],
        },
    }
    for t in TOOLS
]

out = {}

# 1. Streamed Responses with tools, through the SDK's event accumulator.
with client.responses.stream(
    model=MODEL,
    input="What is the weather in Oslo?",
    instructions="You are an agent.",
    tools=TOOLS,
    reasoning={"effort": "low", "summary": "auto"},
    prompt_cache_key="py-session",
) as stream:
    types = [event.type for event in stream]
    final = stream.get_final_response()
out["stream_event_types"] = types
out["stream_output_types"] = [item.type for item in final.output]
calls = [item for item in final.output if item.type == "function_call"]
out["stream_call"] = {
    "name": calls[0].name,
    "arguments": json.loads(calls[0].arguments),
    "call_id": calls[0].call_id,
}
out["stream_reasoning"] = [
    s.text for item in final.output if item.type == "reasoning" for s in item.summary
]
out["stream_usage"] = {
    "input": final.usage.input_tokens,
    "cached": final.usage.input_tokens_details.cached_tokens,
    "output": final.usage.output_tokens,
}

# 2. The agent loop: replay the output items plus the tool's output.
history = [{"role": "user", "content": "What is the weather in Oslo?"}]
history += [item.model_dump(exclude_none=True) for item in final.output]
history.append(
    {"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny, 21C"}
)
second = client.responses.create(
    model=MODEL, input=history, tools=TOOLS, instructions="You are an agent."
)
out["loop_text"] = second.output_text
out["loop_status"] = second.status

# 3. previous_response_id instead of replaying.
first = client.responses.create(model=MODEL, input="Say hi.")
chained = client.responses.create(
    model=MODEL, input="And again.", previous_response_id=first.id
)
out["chained_text"] = chained.output_text
out["retrieved_id"] = client.responses.retrieve(first.id).id == first.id

# 4. Raw event stream (stream=True), plain text.
events = list(client.responses.create(model=MODEL, input="Hello", stream=True))
out["raw_types"] = [e.type for e in events]
out["raw_text"] = "".join(e.delta for e in events if e.type == "response.output_text.delta")
out["raw_sequence_ok"] = [e.sequence_number for e in events] == list(range(len(events)))

# 5. Chat Completions with tools, whole and streamed.
chat = client.chat.completions.create(
    model=MODEL,
    messages=[{"role": "user", "content": "weather in Oslo?"}],
    tools=CHAT_TOOLS,
)
msg = chat.choices[0].message
out["chat_finish"] = chat.choices[0].finish_reason
out["chat_call"] = {
    "name": msg.tool_calls[0].function.name,
    "arguments": json.loads(msg.tool_calls[0].function.arguments),
}
follow = client.chat.completions.create(
    model=MODEL,
    messages=[
        {"role": "user", "content": "weather in Oslo?"},
        msg,
        {"role": "tool", "tool_call_id": msg.tool_calls[0].id, "content": "sunny"},
    ],
    tools=CHAT_TOOLS,
)
out["chat_follow_text"] = follow.choices[0].message.content

chunks = list(
    client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "native weather please"}],
        tools=CHAT_TOOLS,
        stream=True,
        stream_options={"include_usage": True},
    )
)
args = "".join(
    tc.function.arguments or ""
    for c in chunks
    if c.choices
    for tc in (c.choices[0].delta.tool_calls or [])
)
out["chat_stream_args"] = json.loads(args)
out["chat_stream_usage"] = chunks[-1].usage.prompt_tokens if chunks[-1].usage else None

# 6. The SDK's streaming helper for chat (accumulates tool calls itself).
with client.chat.completions.stream(
    model=MODEL,
    messages=[{"role": "user", "content": "weather in Oslo?"}],
    tools=CHAT_TOOLS,
) as s:
    for _ in s:
        pass
    done = s.get_final_completion()
out["chat_helper_call"] = done.choices[0].message.tool_calls[0].function.name

print(json.dumps(out))
