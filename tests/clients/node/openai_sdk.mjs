// Drives clawpen's inference service with the official `openai` Node SDK.
//
// Usage: node openai_sdk.mjs BASE_URL API_KEY MODEL UPSTREAM_URL
//
// Every request goes through an undici Agent whose headers and body
// timeouts are 2 s (undici's defaults are 300 s; shortened so the test is
// quick). Requests marked "slow" make the scripted upstream wait 5 s before
// its first token: they succeed only because clawpen sends headers at once
// and keep-alives while the upstream prefills. The same request sent to
// the upstream directly must time out, which proves the point.
// Prints one JSON object; the Rust test asserts on it.

import OpenAI from "openai";
import { Agent } from "undici";

const [BASE, KEY, MODEL, UPSTREAM] = process.argv.slice(2);
const dispatcher = new Agent({ headersTimeout: 2000, bodyTimeout: 2000 });
const client = new OpenAI({
  baseURL: `${BASE}/v1`,
  apiKey: KEY,
  maxRetries: 0,
  fetchOptions: { dispatcher },
});

const TOOLS = [
  {
    type: "function",
    name: "get_weather",
    description: "Weather for a city.",
    parameters: {
      type: "object",
      properties: { city: { type: "string" }, days: { type: "integer" } },
      required: ["city"],
    },
    strict: false,
  },
];
const CHAT_TOOLS = TOOLS.map((t) => ({
  type: "function",
  function: { name: t.name, description: t.description, parameters: t.parameters },
}));

const out = {};

// 1. Slow prefill, streamed Responses.
{
  const started = Date.now();
  const stream = await client.responses.create({ model: MODEL, input: "slow", stream: true });
  const types = [];
  let text = "";
  for await (const e of stream) {
    types.push(e.type);
    if (e.type === "response.output_text.delta") text += e.delta;
  }
  out.slow_stream = { ms: Date.now() - started, text, types };
}

// 2. Slow prefill, streamed Chat Completions.
{
  const stream = await client.chat.completions.create({
    model: MODEL,
    messages: [{ role: "user", content: "slow" }],
    stream: true,
  });
  let text = "";
  for await (const c of stream) text += c.choices[0]?.delta?.content ?? "";
  out.slow_chat = text;
}

// 3. Slow prefill, whole Responses (headers at once, then spaces, then JSON).
{
  const r = await client.responses.create({ model: MODEL, input: "slow" });
  out.slow_whole = r.output_text;
}

// 4. The same slow request straight to the upstream: undici gives up.
{
  try {
    const direct = new OpenAI({
      baseURL: UPSTREAM,
      apiKey: "none",
      maxRetries: 0,
      fetchOptions: { dispatcher },
    });
    const stream = await direct.chat.completions.create({
      model: MODEL,
      messages: [{ role: "user", content: "slow" }],
      stream: true,
    });
    for await (const _ of stream) {
    }
    out.direct = "succeeded";
  } catch (e) {
    out.direct = `${e?.cause?.code ?? e?.code ?? e?.name}: ${e?.message}`;
  }
}

// 5. Agent loop with tools through the SDK's stream helper.
{
  const stream = client.responses.stream({
    model: MODEL,
    input: "weather in Oslo?",
    tools: TOOLS,
    prompt_cache_key: "node-session",
  });
  const types = [];
  for await (const e of stream) types.push(e.type);
  const final = await stream.finalResponse();
  const call = final.output.find((i) => i.type === "function_call");
  out.tool_stream_types = types;
  out.tool_call = { name: call.name, arguments: JSON.parse(call.arguments) };
  const second = await client.responses.create({
    model: MODEL,
    tools: TOOLS,
    input: [
      { role: "user", content: "weather in Oslo?" },
      ...final.output,
      { type: "function_call_output", call_id: call.call_id, output: "sunny" },
    ],
  });
  out.loop_text = second.output_text;
  const chained = await client.responses.create({
    model: MODEL,
    input: "thanks",
    previous_response_id: second.id,
  });
  out.chained_text = chained.output_text;
}

// 6. Chat Completions with tools.
{
  const chat = await client.chat.completions.create({
    model: MODEL,
    messages: [{ role: "user", content: "weather in Oslo?" }],
    tools: CHAT_TOOLS,
  });
  const m = chat.choices[0].message;
  out.chat_call = { name: m.tool_calls[0].function.name, arguments: JSON.parse(m.tool_calls[0].function.arguments) };
  out.chat_reasoning = m.reasoning_content ?? null;
}

console.log(JSON.stringify(out));
