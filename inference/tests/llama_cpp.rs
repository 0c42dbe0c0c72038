//! clawpen in front of a real upstream: llama.cpp's server (from PyPI's
//! `llama-cpp-python[server]`) on a tiny random-weight GGUF written by the
//! test. The text is gibberish; the assertions are about structure: event
//! order, usage, and that the official SDK parses everything.
//!
//! Needs: `pip install 'llama-cpp-python[server]' gguf numpy openai`.

use crate::common;

use common::clients::run_python;
use common::llama::LlamaServer;
use common::{config, events, frames, read_all, start};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_llama_cpp_upstream() {
    let llama = tokio::task::spawn_blocking(LlamaServer::start)
        .await
        .unwrap();
    let svc = start(config(&llama.url)).await;
    let http = reqwest::Client::new();

    // /v1/models is the upstream's list.
    let models: Value = http
        .get(format!("{}/v1/models", svc.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], "tiny");

    // Streamed chat.
    let body = read_all(
        http.post(format!("{}/v1/chat/completions", svc.base))
            .json(&json!({"model": "tiny", "stream": true, "max_tokens": 10, "temperature": 0,
                          "stream_options": {"include_usage": true},
                          "messages": [{"role": "user", "content": "What is the weather in Oslo?"}]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let fr = frames(&body);
    common::assert_ends_with_done(&fr);
    let chunks = events(&body);
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(!text.is_empty());
    assert_eq!(
        chunks
            .iter()
            .find_map(|c| c["choices"][0]["finish_reason"].as_str()),
        Some("length")
    );
    let usage = &chunks.last().unwrap()["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 0, "{usage}");
    assert!(usage["completion_tokens"].as_u64().unwrap() > 0, "{usage}");

    // Streamed Responses: the spec's SSE framing and the official order,
    // numbered, cut by max_output_tokens.
    let r = http
        .post(format!("{}/v1/responses", svc.base))
        .json(
            &json!({"model": "tiny", "stream": true, "max_output_tokens": 10,
                      "temperature": 0, "instructions": "Be brief.", "input": "Hello there"}),
        )
        .send()
        .await
        .unwrap();
    let evs = common::responses_sse(r).await;
    let kinds: Vec<&str> = evs.iter().map(|e| e["type"].as_str().unwrap()).collect();
    let deltas = kinds
        .iter()
        .filter(|k| **k == "response.output_text.delta")
        .count();
    assert!(deltas > 0);
    // Keep-alives (`response.in_progress` again) may fall anywhere while
    // llama.cpp prefills and between deltas: the order is asserted without
    // them and without the deltas.
    let mut seen_in_progress = false;
    let core: Vec<&str> = kinds
        .iter()
        .copied()
        .filter(|k| *k != "response.output_text.delta")
        .filter(|k| {
            let keep_alive = *k == "response.in_progress" && seen_in_progress;
            seen_in_progress |= *k == "response.in_progress";
            !keep_alive
        })
        .collect();
    assert_eq!(
        core,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.incomplete",
        ],
        "{kinds:?}"
    );
    let last = &evs.last().unwrap()["response"];
    assert_eq!(last["incomplete_details"]["reason"], "max_output_tokens");
    assert!(last["usage"]["input_tokens"].as_u64().unwrap() > 0);
    assert!(last["usage"]["output_tokens"].as_u64().unwrap() > 0);
    assert!(!last["output"][0]["content"][0]["text"]
        .as_str()
        .unwrap()
        .is_empty());

    // The official SDK parses all of it.
    let base = svc.base.clone();
    let r = tokio::task::spawn_blocking(move || {
        run_python("openai_plain.py", &[&base, "none", "tiny"])
    })
    .await
    .unwrap();
    assert_eq!(r["stream_types"][0], "response.created");
    assert_eq!(r["stream_status"], "incomplete");
    assert!(r["stream_text_len"].as_u64().unwrap() > 0);
    assert!(
        r["stream_usage"][0].as_u64().unwrap() > 0 && r["stream_usage"][1].as_u64().unwrap() > 0
    );
    assert!(r["whole_text_len"].as_u64().unwrap() > 0);
    assert_eq!(r["chained_input_tokens_grew"], true);
    assert_eq!(r["chat_finish"], "length");
    assert!(r["chat_usage"][1].as_u64().unwrap() > 0);
    assert!(r["chat_stream_text_len"].as_u64().unwrap() > 0);
    assert!(r["chat_stream_usage"].as_u64().unwrap() > 0);

    svc.idle().await;
    svc.shutdown().await;
    drop(llama);
}
