//! Open Responses `truncation` on the local engine: `disabled` (the
//! default) refuses a conversation longer than the model's context with a
//! 400; `auto` drops its oldest turns until it fits, and the model is seen
//! (through what a scripted model says) not to have received them.

use crate::common;
use crate::local_common;

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Value as Gguf;
use local_common::{limit_threads, TinyModel, CHAT_TEMPLATE};
use serde_json::{json, Value};

/// Written into the conversation's first turn.
const FIRST: &str = "FIRST-TURN";

/// A scripted model that says `KEPT` when [`FIRST`] is in its prompt and
/// `CUT` when it is not (its template ends the generation prompt in a tab
/// or a newline accordingly).
fn model(dir: &Path) -> PathBuf {
    let template = CHAT_TEMPLATE.replace(
        "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
        &format!(
            "{{%- if add_generation_prompt %}}<|im_start|>assistant\
             {{{{ \"\\t\" if \"{FIRST}\" in (messages | map(attribute=\"content\") | join(\" \")) \
             else \"\\n\" }}}}{{% endif %}}"
        ),
    );
    assert_ne!(template, CHAT_TEMPLATE, "the template's ending moved");
    TinyModel::scripted_branches(
        "llama",
        &[
            ("\n", &["CUT", "<|im_end|>"]),
            ("\t", &["KEPT", "<|im_end|>"]),
        ],
    )
    .set("tokenizer.chat_template", Gguf::String(template))
    .write(dir, "truncating")
}

/// A conversation opening with [`FIRST`], then `turns` exchanges of filler.
fn conversation(turns: usize) -> Value {
    let filler = "the weather in paris is sunny and the weather in london is rainy. ".repeat(4);
    let mut items = vec![json!({"role": "user", "content": format!("{FIRST} hello")})];
    for _ in 0..turns {
        items.push(json!({"role": "assistant", "content": filler}));
        items.push(json!({"role": "user", "content": filler}));
    }
    items.push(json!({"role": "user", "content": "and now?"}));
    json!(items)
}

fn said(response: &Value) -> &str {
    response["output"][0]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no message: {response}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_past_the_context_is_refused_unless_truncation_is_auto() {
    limit_threads();
    let dir = tempfile::tempdir().unwrap();
    let svc = common::start(local_common::config(vec![model(dir.path())])).await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/responses", svc.base);
    let ask = |body: Value| {
        let http = http.clone();
        let url = url.clone();
        async move {
            let r = http.post(&url).json(&body).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let long = conversation(12);

    // Disabled, by default and by name: a clear 400, nothing generated.
    for truncation in [None, Some("disabled")] {
        let mut body = json!({"model": "truncating", "input": long, "max_output_tokens": 8});
        if let Some(t) = truncation {
            body["truncation"] = json!(t);
        }
        let (status, v) = ask(body).await;
        assert_eq!(status, 400, "{v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains("maximum context length"), "{message}");
    }

    // Auto: the oldest turns go, the rest fits with room for the output.
    let body = json!({"model": "truncating", "input": long, "max_output_tokens": 8,
                      "truncation": "auto"});
    let (status, v) = ask(body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "completed", "{v}");
    assert_eq!(v["truncation"], "auto");
    assert_eq!(said(&v), "CUT", "the first turn was dropped");
    let input = v["usage"]["input_tokens"].as_u64().unwrap();
    assert!(
        input + 8 <= u64::from(local_common::CONTEXT),
        "{input} input tokens"
    );

    // A conversation that fits is left whole.
    let body = json!({"model": "truncating", "input": conversation(1), "truncation": "auto"});
    let (status, v) = ask(body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(said(&v), "KEPT");

    // Anything else is a 400 naming the parameter.
    let body = json!({"model": "truncating", "input": "hi", "truncation": "sometimes"});
    let (status, v) = ask(body).await;
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].to_string().contains("truncation"), "{v}");
}
