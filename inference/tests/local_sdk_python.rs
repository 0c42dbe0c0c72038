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
