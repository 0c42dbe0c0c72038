//! Bad input gets an OpenAI-shaped 4xx that says what and where, and the
//! server keeps serving.

use crate::common;

use std::time::Duration;

use common::upstream::{agent_script, FakeUpstream};
use common::{config, start};
use serde_json::{json, Value};

async fn expect(r: reqwest::Response, status: u16, param: Option<&str>) -> Value {
    assert_eq!(r.status(), status);
    let body: Value = r.json().await.unwrap();
    let err = &body["error"];
    assert!(
        err["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(err["type"].is_string(), "{body}");
    if let Some(p) = param {
        assert_eq!(err["param"], p, "{body}");
    }
    body
}

#[tokio::test]
async fn bad_requests_are_refused_clearly() {
    let up = FakeUpstream::start(&["m"], agent_script(Duration::ZERO)).await;
    let svc = start(config(&up.url)).await;
    let http = reqwest::Client::new();
    let responses = format!("{}/v1/responses", svc.base);
    let chat = format!("{}/v1/chat/completions", svc.base);
    let raw = |url: &str, body: Vec<u8>| {
        http.post(url)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    for url in [&responses, &chat] {
        let b = expect(
            raw(url, b"{\"model\": \"m\", ".to_vec()).await.unwrap(),
            400,
            None,
        )
        .await;
        assert_eq!(b["error"]["code"], "invalid_json");
        expect(raw(url, b"[1,2]".to_vec()).await.unwrap(), 400, None).await;
    }

    // Fields of the wrong type, named.
    let post = |url: &String, v: Value| http.post(url).json(&v).send();
    expect(
        post(&chat, json!({"model": "m", "messages": "hi"}))
            .await
            .unwrap(),
        400,
        Some("messages"),
    )
    .await;
    expect(
        post(
            &chat,
            json!({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}),
        )
        .await
        .unwrap(),
        400,
        Some("messages[0].role"),
    )
    .await;
    expect(
        post(
            &chat,
            json!({"model": "m", "temperature": "hot", "messages": []}),
        )
        .await
        .unwrap(),
        400,
        Some("temperature"),
    )
    .await;
    expect(
        post(&responses, json!({"model": 5, "input": "x"}))
            .await
            .unwrap(),
        400,
        Some("model"),
    )
    .await;
    expect(
        post(
            &responses,
            json!({"model": "m", "input": [{"type": "function_call_output", "output": "x"}]}),
        )
        .await
        .unwrap(),
        400,
        Some("input[0].call_id"),
    )
    .await;
    expect(
        post(
            &responses,
            json!({"model": "m", "max_output_tokens": -1, "input": "x"}),
        )
        .await
        .unwrap(),
        400,
        Some("max_output_tokens"),
    )
    .await;
    expect(
        post(&responses, json!({"model": "m"})).await.unwrap(),
        400,
        Some("input"),
    )
    .await;

    // Tool schemas that are not objects.
    expect(
        post(
            &responses,
            json!({"model": "m", "input": "x",
            "tools": [{"type": "function", "name": "f", "parameters": ["not", "a", "schema"]}]}),
        )
        .await
        .unwrap(),
        400,
        Some("tools[0].parameters"),
    )
    .await;
    expect(
        post(
            &chat,
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": 3}}]}),
        )
        .await
        .unwrap(),
        400,
        Some("tools[0].function.parameters"),
    )
    .await;
    expect(
        post(
            &responses,
            json!({"model": "m", "input": "x", "tool_choice": "sometimes"}),
        )
        .await
        .unwrap(),
        400,
        Some("tool_choice"),
    )
    .await;

    // Unknown model (the upstream lists its models).
    let b = expect(
        post(&responses, json!({"model": "nope", "input": "x"}))
            .await
            .unwrap(),
        404,
        Some("model"),
    )
    .await;
    assert_eq!(b["error"]["code"], "model_not_found");
    expect(
        post(
            &chat,
            json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
        )
        .await
        .unwrap(),
        404,
        Some("model"),
    )
    .await;

    // previous_response_id that does not exist.
    let b = expect(
        post(
            &responses,
            json!({"model": "m", "input": "x", "previous_response_id": "resp_nope"}),
        )
        .await
        .unwrap(),
        400,
        Some("previous_response_id"),
    )
    .await;
    assert_eq!(b["error"]["code"], "previous_response_not_found");

    // 10 MB body.
    let big = format!(r#"{{"model":"m","input":"{}"}}"#, "a".repeat(10 << 20));
    match raw(&responses, big.into_bytes()).await {
        Ok(r) => {
            let b = expect(r, 413, None).await;
            assert_eq!(b["error"]["code"], "request_too_large");
        }
        // The server may close the connection before the whole body is sent.
        Err(e) => panic!("10 MB body: no answer: {e}"),
    }

    // Nothing was sent upstream, and the server still serves.
    assert!(up.requests().is_empty());
    let v: Value = post(&responses, json!({"model": "m", "input": "still there?"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["status"], "completed");
    let snap = svc.metrics.prometheus();
    assert!(snap.contains(r#"status="rejected"}"#), "{snap}");
    svc.shutdown().await;
}

#[tokio::test]
async fn no_engine_is_a_503_not_a_crash() {
    let svc = start(clawpen_inference::InferenceConfig {
        upstreams: Vec::new(),
        ..config("http://unused/v1")
    })
    .await;
    let r = reqwest::Client::new()
        .post(format!("{}/v1/responses", svc.base))
        .json(&json!({"model": "m", "input": "x"}))
        .send()
        .await
        .unwrap();
    let b = expect(r, 503, None).await;
    assert!(b["error"]["message"]
        .as_str()
        .unwrap()
        .contains("--upstream"));
    svc.shutdown().await;
}
