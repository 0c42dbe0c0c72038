//! `POST /v1/responses/compact` on the local engine, end to end: a scripted
//! model writes the summary during compaction and answers differently when
//! that summary is in its prompt, so what the model received on the next
//! request is observed through what it says. Also through the official
//! `openai` Python SDK (`client.responses.compact`).

use crate::common;
use crate::local_common;

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Value as Gguf;
use common::clients::{require_python, run_python_code};
use local_common::{limit_threads, TinyModel, CHAT_TEMPLATE};
use serde_json::{json, Value};

/// What the model writes when asked anything (the summary, during
/// compaction).
const SUMMARY: &str = "COMPACTED-SUMMARY-7";
/// What the model writes when [`SUMMARY`] is anywhere in its prompt.
const ANSWER: &str = "ANSWER-FROM-SUMMARY";

/// A scripted model whose template ends its generation prompt in a tab
/// when a message holds [`SUMMARY`] (else a newline): after the newline it
/// writes [`SUMMARY`], after the tab [`ANSWER`].
fn summarizer(dir: &Path) -> PathBuf {
    let template = CHAT_TEMPLATE.replace(
        "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
        &format!(
            "{{%- if add_generation_prompt %}}<|im_start|>assistant\
             {{{{ \"\\t\" if \"{SUMMARY}\" in (messages | map(attribute=\"content\") | join(\" \")) \
             else \"\\n\" }}}}{{% endif %}}"
        ),
    );
    assert_ne!(template, CHAT_TEMPLATE, "the template's ending moved");
    TinyModel::scripted_branches(
        "llama",
        &[
            ("\n", &[SUMMARY, "<|im_end|>"]),
            ("\t", &[ANSWER, "<|im_end|>"]),
        ],
    )
    .set("tokenizer.chat_template", Gguf::String(template))
    .write(dir, "summarizer")
}

async fn serve(dir: &Path) -> common::Svc {
    common::start(local_common::config(vec![summarizer(dir)])).await
}

/// The text of a response's first message.
fn said(response: &Value) -> String {
    response["output"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i["type"] == "message")
        .and_then(|m| m["content"][0]["text"].as_str())
        .unwrap_or_else(|| panic!("no message: {response}"))
        .to_owned()
}

/// Compaction runs the local model over the conversation (its summary is
/// what it wrote; usage counts the pass), and the compaction item, given
/// back as input, puts that summary in the next prompt: the model answers
/// from it. The same next turn without the item gets no such answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_summary_reaches_the_next_prompt() {
    limit_threads();
    let dir = tempfile::tempdir().unwrap();
    let svc = serve(dir.path()).await;
    let http = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        let req = http.post(format!("{}{path}", svc.base)).json(&body);
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status();
            let v: Value = resp.json().await.unwrap();
            assert_eq!(status, 200, "{v}");
            v
        }
    };
    let history = json!([
        {"role": "user", "content": "the weather in paris?"},
        {"type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": "the weather in paris is sunny."}]},
        {"role": "user", "content": "and london?"}
    ]);
    let compacted = post(
        "/v1/responses/compact",
        json!({"model": "summarizer", "input": history}),
    )
    .await;
    assert_eq!(compacted["object"], "response.compaction");
    let usage = &compacted["usage"];
    assert!(usage["input_tokens"].as_u64().unwrap() > 10, "{usage}");
    assert!(usage["output_tokens"].as_u64().unwrap() >= 1, "{usage}");
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["input_tokens"].as_u64().unwrap() + usage["output_tokens"].as_u64().unwrap()
    );
    let output = compacted["output"].as_array().unwrap();
    let types: Vec<&str> = output.iter().map(|i| i["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["message", "message", "compaction"], "{compacted}");

    let mut next = output.clone();
    next.push(json!({"role": "user", "content": "what now?"}));
    let answer = post(
        "/v1/responses",
        json!({"model": "summarizer", "input": next, "max_output_tokens": 8}),
    )
    .await;
    assert_eq!(said(&answer), ANSWER, "{answer}");

    let without: Vec<Value> = next
        .iter()
        .filter(|i| i["type"] != "compaction")
        .cloned()
        .collect();
    let control = post(
        "/v1/responses",
        json!({"model": "summarizer", "input": without, "max_output_tokens": 8}),
    )
    .await;
    assert_eq!(said(&control), SUMMARY, "{control}");
    svc.shutdown().await;
}

const SDK_SCRIPT: &str = r#"
import json, sys
from openai import OpenAI

base, model = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base + "/v1", api_key="sk-local", max_retries=0, timeout=60)
c = client.responses.compact(model=model, input=[
    {"role": "user", "content": "the weather in paris?"},
    {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "sunny."}]},
])
out = {"object": c.object, "id": c.id, "created_at": c.created_at,
       "types": [i.type for i in c.output], "total_tokens": c.usage.total_tokens}
items = [i.model_dump(exclude_none=True) for i in c.output]
r = client.responses.create(model=model, input=items + [{"role": "user", "content": "what now?"}],
                            max_output_tokens=8)
out["answer"] = r.output_text
try:
    client.responses.compact(model=model, input=[
        {"type": "compaction", "encrypted_content": "gAAAAABpM0Yj-...="}])
    out["forged"] = None
except Exception as e:
    out["forged"] = {"status": getattr(e, "status_code", None), "body": getattr(e, "body", None)}
print(json.dumps(out))
"#;

/// The official Python SDK reads the compaction object into its own types
/// (`CompactedResponse`, `ResponseCompactionItem`), sends the items back
/// as input, and gets the answer the summary leads to; a forged item is a
/// 400 `BadRequestError` it can read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_compacts_and_continues() {
    limit_threads();
    require_python(&["openai"], "pip install openai");
    let dir = tempfile::tempdir().unwrap();
    let svc = serve(dir.path()).await;
    let base = svc.base.clone();
    let r =
        tokio::task::spawn_blocking(move || run_python_code(SDK_SCRIPT, &[&base, "summarizer"]))
            .await
            .unwrap();
    assert_eq!(r["object"], "response.compaction", "{r}");
    assert_eq!(r["types"], json!(["message", "compaction"]), "{r}");
    assert!(r["total_tokens"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["answer"], ANSWER, "{r}");
    assert_eq!(r["forged"]["status"], 400, "{r}");
    assert_eq!(
        r["forged"]["body"]["param"], "input[0].encrypted_content",
        "{r}"
    );
    svc.shutdown().await;
}
