"""Drives the Responses API's WebSocket mode with the official `openai`
Python SDK (`client.responses.connect()`).

Usage: python3 openai_ws.py BASE_URL API_KEY MODEL

Against BASE_URL proxying the scripted upstream of clawpen's tests, on one
socket: a turn with a tool (`store: false`), its continuation with the
tool's output by `previous_response_id` (only the socket holds it), and a
continuation of an id nobody has. Prints one JSON object with what the SDK
parsed; the Rust test asserts on it. Any SDK exception fails the run.
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
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    }
]
ENDS = {"response.completed", "response.failed", "response.incomplete", "error"}


def turn(conn):
    """Every event of one turn, as the SDK parsed them, up to its end."""
    events = []
    for event in conn:
        events.append(event)
        if event.type in ENDS:
            return events
    raise RuntimeError("the socket closed in the middle of a turn")


out = {}
with client.responses.connect() as conn:
    conn.response.create(
        model=MODEL, input="What is the weather in Oslo?", tools=TOOLS, store=False
    )
    first = turn(conn)
    out["first_types"] = [e.type for e in first]
    response = first[-1].response
    call = next(item for item in response.output if item.type == "function_call")
    out["call"] = {"name": call.name, "arguments": json.loads(call.arguments)}

    conn.response.create(
        model=MODEL,
        previous_response_id=response.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21C"}],
        tools=TOOLS,
        store=False,
    )
    second = turn(conn)
    out["second_types"] = [e.type for e in second]
    out["second_text"] = second[-1].response.output_text

    conn.response.create(model=MODEL, previous_response_id="resp_nobody", input="hi")
    error = turn(conn)[-1]
    out["error"] = {"type": error.type, "code": error.error.code, "status": error.status}

print(json.dumps(out))
