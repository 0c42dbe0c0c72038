//! `POST /v1/responses/compact` (Open Responses 2026-04-24,
//! `compactResponse`) in front of an upstream that has no compaction of its
//! own (the fake one serves Chat Completions only), and the `compaction`
//! item it returns used as input (`CompactionSummaryItemParam`).

use crate::common;

use std::time::Duration;

use common::upstream::{agent_script, FakeUpstream};
use common::{config, start};
use serde_json::{json, Value};

/// A conversation as an agent replays it: a user turn, the model's call,
/// the tool's answer, the model's text, the next user turn.
fn conversation() -> Value {
    json!([
        {"type": "message", "role": "user", "content": "Plan a day in Oslo."},
        {"type": "function_call", "call_id": "c1", "name": "get_weather",
         "arguments": "{\"city\":\"Oslo\"}"},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny, 21C"},
        {"type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": "It will be sunny."}]},
        {"type": "message", "role": "user", "id": "msg_keep",
         "content": [{"type": "input_text", "text": "Add a museum."}]}
    ])
}

async fn post(url: &str, key: Option<&str>, body: Value) -> (u16, Value) {
    let mut r = reqwest::Client::new().post(url).json(&body);
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

/// The `response.compaction` object (`CompactResource`) has every field
/// the spec requires: `id`, `object`, `output`, `created_at`, `usage` (with
/// `Usage`'s own required fields); its output is the user messages as
/// `Message` items, then one `compaction` item (`CompactionBody`: `type`,
/// `id`, `encrypted_content`). The model was asked for a summary of the
/// whole conversation, without tools; the request is counted as the
/// key's client's, under its own endpoint.
#[tokio::test]
async fn compaction_returns_the_spec_object_and_is_accounted() {
    let up = FakeUpstream::start(&["m"], agent_script(Duration::ZERO)).await;
    let mut cfg = config(&up.url);
    cfg.api_keys = [("sk-vm-a".to_owned(), "vm-a".to_owned())].into();
    let svc = start(cfg).await;
    let url = format!("{}/v1/responses/compact", svc.base);
    let body = json!({"model": "m", "input": conversation(), "instructions": "Be brief."});

    let (status, e) = post(&url, None, body.clone()).await;
    assert_eq!(status, 401, "{e}");
    assert_eq!(e["error"]["code"], "invalid_api_key");

    let (status, v) = post(&url, Some("sk-vm-a"), body).await;
    assert_eq!(status, 200, "{v}");
    for field in ["id", "object", "output", "created_at", "usage"] {
        assert!(v.get(field).is_some(), "no '{field}' in {v}");
    }
    assert_eq!(v["object"], "response.compaction");
    assert!(v["id"].as_str().is_some_and(|id| !id.is_empty()), "{v}");
    assert!(v["created_at"].as_u64().unwrap() > 1_700_000_000, "{v}");
    let usage = &v["usage"];
    for field in [
        "input_tokens",
        "output_tokens",
        "total_tokens",
        "input_tokens_details",
        "output_tokens_details",
    ] {
        assert!(usage.get(field).is_some(), "no usage '{field}' in {v}");
    }
    // The fake upstream's counts, passed on.
    assert_eq!(usage["input_tokens"], 12, "{v}");
    assert_eq!(usage["output_tokens"], 3, "{v}");
    assert_eq!(usage["total_tokens"], 15, "{v}");
    assert_eq!(usage["input_tokens_details"]["cached_tokens"], 8, "{v}");

    let output = v["output"].as_array().unwrap();
    assert_eq!(output.len(), 3, "two user messages, one compaction: {v}");
    for m in &output[..2] {
        for field in ["type", "id", "status", "role", "content"] {
            assert!(m.get(field).is_some(), "no '{field}' in {m}");
        }
        assert_eq!(m["type"], "message");
        assert_eq!(m["role"], "user");
    }
    assert_eq!(
        output[0]["content"],
        json!([{"type": "input_text", "text": "Plan a day in Oslo."}])
    );
    assert_eq!(output[1]["id"], "msg_keep");
    assert_eq!(output[1]["content"][0]["text"], "Add a museum.");
    let item = &output[2];
    assert_eq!(item["type"], "compaction");
    assert!(item["id"].as_str().unwrap().starts_with("cmp_"), "{item}");
    assert!(
        item["encrypted_content"]
            .as_str()
            .is_some_and(|c| !c.is_empty()),
        "{item}"
    );

    // What the model was asked: the instructions, the whole conversation
    // (the call and its output as Chat Completions turns), and last a user
    // message asking for the summary; no tools.
    let sent = up.requests();
    assert_eq!(sent.len(), 1);
    let messages = sent[0]["messages"].as_array().unwrap();
    let roles: Vec<&str> = messages
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(
        roles,
        [
            "system",
            "user",
            "assistant",
            "tool",
            "assistant",
            "user",
            "user"
        ]
    );
    assert_eq!(messages[0]["content"], "Be brief.");
    assert_eq!(messages[3]["content"], "sunny, 21C");
    let ask = messages[6]["content"].as_str().unwrap();
    assert!(ask.contains("summary"), "{ask}");
    assert!(sent[0]
        .get("tools")
        .is_none_or(|t| t.as_array().is_none_or(Vec::is_empty)));

    let m = svc.metrics.prometheus();
    assert!(
        m.contains(r#"clawpen_inference_requests_total{client="vm-a",endpoint="responses_compact",status="completed"} 1"#),
        "{m}"
    );
    svc.shutdown().await;
}

/// The compacted output is the next request's base `input` (the spec's
/// "WebSocket Compaction" pattern, over HTTP and on a WebSocket): the model then receives the
/// kept user messages and, in place of the rest, the summary it wrote
/// during compaction, before the new user message. The compaction pass
/// may also continue a stored chain (`previous_response_id`).
#[tokio::test]
async fn compacted_output_is_usable_as_the_next_input() {
    let up = FakeUpstream::start(&["m"], agent_script(Duration::ZERO)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&up.url);
    cfg.store_path = Some(dir.path().join("responses.db"));
    let svc = start(cfg).await;
    let responses = format!("{}/v1/responses", svc.base);
    let compact = format!("{}/v1/responses/compact", svc.base);

    let (status, first) = post(
        &responses,
        None,
        json!({"model": "m", "input": conversation()}),
    )
    .await;
    assert_eq!(status, 200, "{first}");
    let (status, v) = post(
        &compact,
        None,
        json!({"model": "m", "previous_response_id": first["id"],
               "input": [{"role": "user", "content": "Now compact."}]}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    // The summary the (fake) model wrote in the compaction pass: it counts
    // the messages it was sent (the chain's 5 items as 5 messages, its
    // answer, the new user message, the request for a summary).
    let summary = "You sent 8 messages.";
    assert_eq!(up.requests().len(), 2);
    let output = v["output"].as_array().unwrap().clone();
    assert_eq!(output.len(), 4, "three user messages, one compaction: {v}");

    let mut input = output.clone();
    input.push(json!({"role": "user", "content": "What next?"}));
    let (status, next) = post(&responses, None, json!({"model": "m", "input": input})).await;
    assert_eq!(status, 200, "{next}");
    let sent = &up.requests()[2]["messages"];
    let texts: Vec<String> = sent
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["role"], "user", "{sent}");
            m["content"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(texts.len(), 5, "{sent}");
    assert_eq!(texts[0], "Plan a day in Oslo.");
    assert_eq!(texts[2], "Now compact.");
    assert!(
        texts[3].ends_with(summary) && texts[3].starts_with("Summary of the earlier conversation"),
        "the summary is not what the model received: {sent}"
    );
    assert_eq!(texts[4], "What next?");
    // Nothing of the compacted items reached the model but the summary.
    assert!(!sent.to_string().contains("sunny, 21C"), "{sent}");

    // A stored response that continued from the compacted window carries
    // the item on: the chain is read back through the same check.
    let (status, chained) = post(
        &responses,
        None,
        json!({"model": "m", "previous_response_id": next["id"], "input": "And then?"}),
    )
    .await;
    assert_eq!(status, 200, "{chained}");
    let sent = up.requests()[3]["messages"].to_string();
    assert!(sent.contains(summary), "{sent}");

    // The spec's "WebSocket Compaction" itself: on a socket, a new
    // response (`previous_response_id: null`) whose base input is the
    // compacted window; the model receives what it did over HTTP.
    let mut ws = crate::websocket::connect(&svc, None).await.unwrap();
    let events = crate::websocket::turn(
        &mut ws,
        json!({"type": "response.create", "model": "m", "previous_response_id": null,
               "input": input}),
    )
    .await;
    assert_eq!(
        events.last().unwrap()["type"],
        "response.completed",
        "{events:?}"
    );
    assert_eq!(
        up.requests()[4]["messages"],
        up.requests()[2]["messages"],
        "the same window over both transports"
    );
    svc.shutdown().await;
}

/// Bad compaction requests are 4xx in the spec's error shape (`error`:
/// `message`, `type`, `param`, `code`), naming the field; a `compaction`
/// item clawpen did not make, or whose content was damaged, is a 400 on
/// both endpoints; none of them reaches the model.
#[tokio::test]
async fn bad_compactions_and_forged_items_are_refused() {
    let up = FakeUpstream::start(&["m"], agent_script(Duration::ZERO)).await;
    let svc = start(config(&up.url)).await;
    let compact = format!("{}/v1/responses/compact", svc.base);
    let responses = format!("{}/v1/responses", svc.base);

    let (_, good) = post(&compact, None, json!({"model": "m", "input": "hello"})).await;
    let sealed = good["output"][1]["encrypted_content"]
        .as_str()
        .unwrap()
        .to_owned();
    // One character changed in the middle of the content.
    let at = sealed.len() / 2;
    let swap = if &sealed[at..=at] == "A" { "B" } else { "A" };
    let damaged = format!("{}{swap}{}", &sealed[..at], &sealed[at + 1..]);
    let item =
        |content: &str| json!({"type": "compaction", "id": "cmp_x", "encrypted_content": content});

    let cases = [
        (&compact, json!({"input": "hello"}), 400, "model"),
        (
            &compact,
            json!({"model": "  ", "input": "hello"}),
            400,
            "model",
        ),
        (
            &compact,
            json!({"model": "nope", "input": "hello"}),
            404,
            "model",
        ),
        (&compact, json!({"model": "m"}), 400, "input"),
        (
            &compact,
            json!({"model": "m", "input": [{"type": "bogus"}]}),
            400,
            "input[0].type",
        ),
        (
            &compact,
            json!({"model": "m", "input": [{"role": "user", "content": 5}]}),
            400,
            "input[0].content",
        ),
        (
            &compact,
            json!({"model": "m", "previous_response_id": "resp_missing", "input": "x"}),
            400,
            "previous_response_id",
        ),
        (
            &compact,
            json!({"model": "m", "input": ["hello", item("gAAAAABpM0Yj-...=")]}),
            400,
            "input[0]",
        ),
        (
            &compact,
            json!({"model": "m", "input": [item("gAAAAABpM0Yj-...=")]}),
            400,
            "input[0].encrypted_content",
        ),
        (
            &responses,
            json!({"model": "m", "input": [{"role": "user", "content": "hi"}, item(&damaged)]}),
            400,
            "input[1].encrypted_content",
        ),
        (
            &responses,
            json!({"model": "m", "input": [{"type": "compaction", "encrypted_content": 7}]}),
            400,
            "input[0].encrypted_content",
        ),
    ];
    for (url, body, status, param) in cases {
        let (got, e) = post(url, None, body.clone()).await;
        assert_eq!(got, status, "{body} → {e}");
        let err = &e["error"];
        assert!(
            err["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{e}"
        );
        assert!(err["type"].is_string(), "{e}");
        assert!(err.get("code").is_some(), "{e}");
        assert_eq!(err["param"], param, "{body} → {e}");
        if param.ends_with("encrypted_content")
            && status == 400
            && body.to_string().contains("cmp_x")
        {
            assert_eq!(err["code"], "invalid_encrypted_content", "{e}");
        }
    }
    // Not JSON at all.
    let r = reqwest::Client::new()
        .post(&compact)
        .header("content-type", "application/json")
        .body("{\"model\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        up.requests().len(),
        1,
        "a refused request reached the model"
    );
    // The good item is still read.
    let (status, v) = post(
        &responses,
        None,
        json!({"model": "m", "input": [item(&sealed)]}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    svc.shutdown().await;
}
