//! Open Responses (2026-04-24) conformance over a scripted upstream:
//! `allowed_tools` as a hard constraint, `incomplete` items when a
//! response is cut short, the `error` event before `response.failed`,
//! and `item_reference` inputs.

use crate::common;

use std::sync::Arc;

use common::upstream::{FakeUpstream, Reply};
use common::{config, start};
use serde_json::{json, Value};

fn two_tools() -> Value {
    json!([
        {"type": "function", "name": "get_weather",
         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
        {"type": "function", "name": "send_email",
         "parameters": {"type": "object", "properties": {"to": {"type": "string"}}}}
    ])
}

/// One native call to `name` with `{}` arguments.
fn native_call(index: u64, name: &str) -> Value {
    json!({"tool_calls": [{"index": index, "id": format!("call_{name}"), "type": "function",
                           "function": {"name": name, "arguments": "{}"}}]})
}

#[tokio::test]
async fn allowed_tools_is_a_hard_constraint() {
    // The upstream calls both tools, whatever it was offered.
    let up = FakeUpstream::start(
        &["m"],
        Arc::new(|_: &Value| Reply {
            deltas: vec![native_call(0, "send_email"), native_call(1, "get_weather")],
            finish_reason: "tool_calls",
            ..Reply::default()
        }),
    )
    .await;
    let svc = start(config(&up.url)).await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/responses", svc.base);
    let choice = json!({"type": "allowed_tools", "mode": "required",
                        "tools": [{"type": "function", "name": "get_weather"}]});
    let v: Value = http
        .post(&url)
        .json(&json!({"model": "m", "tools": two_tools(), "tool_choice": choice, "input": "hi"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["status"], "completed", "{v}");
    // Only the allowed tool's call comes out.
    let calls: Vec<&str> = v["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["type"] == "function_call")
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(calls, ["get_weather"], "{v}");
    // The echo keeps the request as sent.
    assert_eq!(v["tool_choice"], choice);
    assert_eq!(v["tools"].as_array().unwrap().len(), 2);
    // The engine was offered only the allowed tool, under the mode.
    let sent = &up.requests()[0];
    let offered: Vec<&str> = sent["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(offered, ["get_weather"]);
    assert_eq!(sent["tool_choice"], "required");

    // An allowed tool that the request does not define is refused.
    let r = http
        .post(&url)
        .json(&json!({"model": "m", "tools": two_tools(), "input": "hi",
            "tool_choice": {"type": "allowed_tools",
                            "tools": [{"type": "function", "name": "delete_all"}]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["param"], "tool_choice.tools[0]", "{e}");
}

#[tokio::test]
async fn a_response_cut_off_by_max_output_tokens_marks_its_last_item_incomplete() {
    let up = FakeUpstream::start(
        &["m"],
        Arc::new(|_: &Value| Reply {
            finish_reason: "length",
            ..Reply::text("The answer is a long one that", 8)
        }),
    )
    .await;
    let svc = start(config(&up.url)).await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/responses", svc.base);
    let body = json!({"model": "m", "input": "hi", "max_output_tokens": 5});

    let v: Value = http
        .post(&url)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["status"], "incomplete", "{v}");
    assert_eq!(v["output"][0]["type"], "message");
    assert_eq!(v["output"][0]["status"], "incomplete", "{v}");

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let r = http.post(&url).json(&streamed).send().await.unwrap();
    let events = common::events(&common::read_all(r).await);
    let done: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "response.output_item.done")
        .collect();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0]["item"]["status"], "incomplete");
    let last = events.last().unwrap();
    assert_eq!(last["type"], "response.incomplete");
    assert_eq!(last["response"]["output"][0]["status"], "incomplete");
}

/// The failure's events, asserted: the message cut off is `incomplete`,
/// then the spec's `error` event, then `response.failed`, numbered in turn.
fn assert_error_then_failed(events: &[Value]) {
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["type"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        kinds[kinds.len() - 3..],
        ["response.output_item.done", "error", "response.failed"],
        "{kinds:?}"
    );
    assert_eq!(events[kinds.len() - 3]["item"]["status"], "incomplete");
    let error = &events[kinds.len() - 2];
    assert_eq!(error["error"]["type"], "server_error", "{error}");
    assert!(error["error"]["message"].is_string(), "{error}");
    assert!(error["error"].get("code").is_some() && error["error"].get("param").is_some());
    let first = events[0]["sequence_number"].as_u64().unwrap();
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["sequence_number"], first + i as u64, "{e}");
    }
    assert_eq!(events[kinds.len() - 1]["response"]["status"], "failed");
}

#[tokio::test]
async fn a_failure_mid_stream_is_an_error_event_then_response_failed() {
    let up = FakeUpstream::start(
        &["m"],
        Arc::new(|_: &Value| Reply {
            cut: true,
            ..Reply::text("Half an ans", 4)
        }),
    )
    .await;
    let svc = start(config(&up.url)).await;

    // SSE.
    let r = reqwest::Client::new()
        .post(format!("{}/v1/responses", svc.base))
        .json(&json!({"model": "m", "input": "hi", "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let events = common::events(&common::read_all(r).await);
    assert_error_then_failed(&events);

    // WebSocket.
    let mut ws = crate::websocket::connect(&svc, None).await.unwrap();
    let events = crate::websocket::turn(
        &mut ws,
        json!({"type": "response.create", "model": "m", "input": "hi"}),
    )
    .await;
    assert_error_then_failed(&events);
}

/// `item_reference` (typed, and the spec's untyped `{"id"}` form) stands
/// for a stored item of the same client: the engine gets the item itself.
/// An id that is not stored for this client, a reference without an id,
/// and an `input_video` part are 400s naming the field, and nothing is
/// sent upstream.
#[tokio::test]
async fn item_references_name_stored_items_of_the_same_client() {
    let up = FakeUpstream::start(
        &["m"],
        Arc::new(|_: &Value| Reply::text("Oslo is rainy.", 5)),
    )
    .await;
    let mut cfg = config(&up.url);
    cfg.api_keys = [("key-a", "vm-a"), ("key-b", "vm-b")]
        .into_iter()
        .map(|(k, c)| (k.to_owned(), c.to_owned()))
        .collect();
    let svc = start(cfg).await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/responses", svc.base);
    let post = |key: &'static str, body: Value| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let r = http
                .post(&url)
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (status, first) = post("key-a", json!({"model": "m", "input": "Weather in Oslo?"})).await;
    assert_eq!(status, 200, "{first}");
    let message_id = first["output"][0]["id"].as_str().unwrap().to_owned();

    for reference in [
        json!({"type": "item_reference", "id": message_id}),
        json!({"id": message_id}),
    ] {
        let (status, v) = post(
            "key-a",
            json!({"model": "m", "input": [reference, {"role": "user", "content": "And tomorrow?"}]}),
        )
        .await;
        assert_eq!(status, 200, "{v}");
        let sent = up.requests().last().unwrap().clone();
        let messages = sent["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 2, "{sent}");
        assert_eq!(messages[0]["role"], "assistant");
        assert_eq!(messages[0]["content"], "Oslo is rainy.");
        assert_eq!(messages[1]["content"], "And tomorrow?");
    }

    let sent_before = up.requests().len();
    let refused = [
        // Another VM's item is not found for this one.
        (
            "key-b",
            json!([{"type": "item_reference", "id": message_id}]),
            "input[0].id",
        ),
        (
            "key-a",
            json!([{"role": "user", "content": "hi"}, {"type": "item_reference", "id": "msg_nope"}]),
            "input[1].id",
        ),
        ("key-a", json!([{"type": "item_reference"}]), "input[0].id"),
        (
            "key-a",
            json!([{"role": "user", "content": [
                {"type": "input_video", "video_url": "https://example.com/v.mp4"}]}]),
            "input[0].content[0].type",
        ),
    ];
    for (key, input, param) in refused {
        let (status, v) = post(key, json!({"model": "m", "input": input})).await;
        assert_eq!(status, 400, "{input}: {v}");
        assert_eq!(v["error"]["param"], param, "{v}");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    }
    assert_eq!(
        up.requests().len(),
        sent_before,
        "refused requests stay here"
    );
}

/// An upstream's refusal (Chat Completions' `refusal`) comes out as the
/// spec's refusal: over SSE a message with a `refusal` part and its
/// `response.refusal.delta` / `.done` events, in the whole response the
/// same part, and on Chat Completions `message.refusal`.
#[tokio::test]
async fn an_upstream_refusal_is_a_refusal_part() {
    let up = FakeUpstream::start(
        &["m"],
        Arc::new(|_: &Value| Reply {
            deltas: vec![json!({"refusal": "I can't"}), json!({"refusal": " help."})],
            ..Reply::default()
        }),
    )
    .await;
    let svc = start(config(&up.url)).await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/responses", svc.base);
    let r = http
        .post(&url)
        .json(&json!({"model": "m", "input": "hi", "stream": true}))
        .send()
        .await
        .unwrap();
    let events = common::responses_sse(r).await;
    let deltas: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "response.refusal.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, ["I can't", " help."]);
    let done = events
        .iter()
        .find(|e| e["type"] == "response.refusal.done")
        .unwrap();
    assert_eq!(done["refusal"], "I can't help.");
    let refusal = json!([{"type": "refusal", "refusal": "I can't help."}]);
    let last = events.last().unwrap();
    assert_eq!(last["type"], "response.completed");
    assert_eq!(last["response"]["output"][0]["content"], refusal);

    let whole: Value = http
        .post(&url)
        .json(&json!({"model": "m", "input": "hi"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(whole["output"][0]["content"], refusal, "{whole}");
    let chat: Value = http
        .post(format!("{}/v1/chat/completions", svc.base))
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        chat["choices"][0]["message"]["refusal"], "I can't help.",
        "{chat}"
    );
    svc.shutdown().await;
}
