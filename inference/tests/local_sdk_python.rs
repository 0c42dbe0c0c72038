//! The official `openai` Python SDK against the local (candle) engine
//! serving a tiny GGUF: models list, Chat Completions whole and streamed
//! (same seed, same text), Responses.
//!
//! Needs `python3` with `pip install openai` (`CLAWPEN_PYTHON` picks
//! another interpreter); fails with that instruction when missing.

use crate::common;
use crate::local_common;

use common::clients::{require_python, run_python_code};
use local_common::{limit_threads, TinyModel};

const SCRIPT: &str = r#"
import json, sys
from openai import OpenAI

base, model = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base + "/v1", api_key="sk-local", max_retries=0, timeout=60)
out = {"models": [m.id for m in client.models.list()]}
messages = [{"role": "user", "content": "what is the weather in paris?"}]
kw = dict(model=model, messages=messages, max_tokens=10, temperature=1.0, seed=11)
a = client.chat.completions.create(**kw)
b = client.chat.completions.create(**kw)
out["whole"] = [a.choices[0].message.content or "", b.choices[0].message.content or ""]
out["usage"] = {"prompt": a.usage.prompt_tokens, "completion": a.usage.completion_tokens}
pieces = []
for chunk in client.chat.completions.create(stream=True, **kw):
    if chunk.choices and chunk.choices[0].delta.content:
        pieces.append(chunk.choices[0].delta.content)
out["streamed"] = "".join(pieces)
r = client.responses.create(model=model, input="hello there", max_output_tokens=16, temperature=0)
out["responses_status"] = r.status
out["responses_output_tokens"] = r.usage.output_tokens
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_openai_sdk_on_a_local_gguf() {
    limit_threads();
    require_python(&["openai"], "pip install openai");
    let dir = tempfile::tempdir().unwrap();
    let path = TinyModel::new("qwen2").write(dir.path(), "tiny-qwen2");
    let svc = common::start(local_common::config(vec![path])).await;
    let base = svc.base.clone();
    let r = tokio::task::spawn_blocking(move || run_python_code(SCRIPT, &[&base, "tiny-qwen2"]))
        .await
        .unwrap();
    assert_eq!(r["models"], serde_json::json!(["tiny-qwen2"]));
    assert_eq!(r["whole"][0], r["whole"][1], "same seed, same text: {r}");
    assert_eq!(r["streamed"], r["whole"][0], "{r}");
    assert!(r["usage"]["prompt"].as_u64().unwrap() > 5, "{r}");
    assert!(r["usage"]["completion"].as_u64().unwrap() >= 1, "{r}");
    assert!(
        ["completed", "incomplete"].contains(&r["responses_status"].as_str().unwrap()),
        "{r}"
    );
    assert!(r["responses_output_tokens"].as_u64().unwrap() >= 1, "{r}");
    svc.shutdown().await;
}

/// A harmony chat template (gpt-oss's format, shortened): the system
/// message names the reasoning effort (`reasoning_effort`, from the
/// request) and the channels; the generation prompt ends in a tab when the
/// effort is high, else in a newline, which is what the scripted model
/// below branches on.
const HARMONY_TEMPLATE: &str = concat!(
    "<|start|>system<|message|>Reasoning: {{ reasoning_effort or 'medium' }}\n",
    "# Valid channels: analysis, commentary, final.<|end|>",
    "{% for m in messages %}<|start|>{{ m.role }}<|message|>{{ m.content }}<|end|>{% endfor %}",
    "{% if add_generation_prompt %}<|start|>assistant",
    "{{ '\\t' if reasoning_effort == 'high' else '\\n' }}{% endif %}",
);

/// The Python SDK's Responses call with tools on a harmony model: the
/// `analysis` channel comes back as a reasoning item and `commentary
/// to=functions.get_weather` as a function call; `reasoning.effort` reaches
/// the template (the model answers differently at `high`).
const HARMONY_SCRIPT: &str = r#"
import json, sys
from openai import OpenAI
base, model = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base + "/v1", api_key="sk-local", max_retries=0, timeout=60)
tools = [{"type": "function", "name": "get_weather", "description": "Weather of a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                         "required": ["city"]}}]
def items(r):
    out = []
    for i in r.output:
        if i.type == "reasoning":
            parts = list(i.summary or []) + list(i.content or [])
            out.append({"type": "reasoning", "text": " ".join(p.text for p in parts)})
        elif i.type == "function_call":
            out.append({"type": "function_call", "name": i.name, "arguments": i.arguments})
        elif i.type == "message":
            out.append({"type": "message", "text": i.content[0].text})
    return out
medium = client.responses.create(model=model, input="weather in paris?", tools=tools)
high = client.responses.create(model=model, input="weather in paris?", tools=tools,
                               reasoning={"effort": "high"})
print(json.dumps({"medium": items(medium), "high": items(high)}))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harmony_reasoning_and_tool_calls_through_the_python_sdk() {
    limit_threads();
    require_python(&["openai"], "pip install openai");
    let dir = tempfile::tempdir().unwrap();
    let path = TinyModel::scripted_branches(
        "llama",
        &[
            (
                "\n",
                &[
                    "<|channel|>analysis<|message|>Checking the weather.<|end|>",
                    "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>",
                    "{\"city\":\"Paris\"}",
                    "<|call|>",
                    "<|im_end|>",
                ],
            ),
            (
                "\t",
                &[
                    "<|channel|>analysis<|message|>Thinking hard.<|end|>",
                    "<|start|>assistant<|channel|>final<|message|>",
                    "Sunny.",
                    "<|im_end|>",
                ],
            ),
        ],
    )
    .set(
        "tokenizer.chat_template",
        candle_core::quantized::gguf_file::Value::String(HARMONY_TEMPLATE.into()),
    )
    .write(dir.path(), "gpt-oss-scripted");
    let svc = common::start(local_common::config(vec![path])).await;
    let base = svc.base.clone();
    let r = tokio::task::spawn_blocking(move || {
        run_python_code(HARMONY_SCRIPT, &[&base, "gpt-oss-scripted"])
    })
    .await
    .unwrap();
    assert_eq!(
        r["medium"],
        serde_json::json!([
            {"type": "reasoning", "text": "Checking the weather."},
            {"type": "function_call", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
        ]),
        "{r}"
    );
    assert_eq!(
        r["high"],
        serde_json::json!([
            {"type": "reasoning", "text": "Thinking hard."},
            {"type": "message", "text": "Sunny."},
        ]),
        "{r}"
    );
    svc.shutdown().await;
}
