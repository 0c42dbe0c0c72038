//! The upstream proxy over HTTP: Chat Completions and Responses, streamed
//! and whole, keep-alives, repair of tool calls left in `content`,
//! cancellation, `previous_response_id`, keys and metrics.

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::upstream::{agent_script, FakeUpstream, Reply};
use common::{config, events, frames, read_all, start, Frame};
use futures::StreamExt;
use serde_json::{json, Value};

fn weather_tool_chat() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]}}}])
}

fn weather_tool_responses() -> Value {
    json!([{"type": "function", "name": "get_weather",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]}}])
}

#[tokio::test]
async fn chat_streams_and_answers_whole() {
    let up = FakeUpstream::start(&["m1"], agent_script(Duration::ZERO)).await;
    let svc = start(config(&up.url)).await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", svc.base);

    let r = http
        .post(&url)
        .json(
            &json!({"model": "m1", "stream": true, "stream_options": {"include_usage": true},
                      "seed": 5, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let body = read_all(r).await;
    let fr = frames(&body);
    common::assert_ends_with_done(&fr);
    let chunks = events(&body);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "You sent 1 messages.");
    let finish = chunks
        .iter()
        .find_map(|c| c["choices"][0]["finish_reason"].as_str())
        .unwrap();
    assert_eq!(finish, "stop");
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["prompt_tokens"], 12);
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 8);
    // Unknown fields reach the upstream; stream is always on upstream.
    let sent = &up.requests()[0];
    assert_eq!(sent["seed"], 5);
    assert_eq!(sent["stream"], true);

    let r = http
        .post(&url)
        .json(&json!({"model": "m1", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "You sent 1 messages."
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["completion_tokens"], 3);
    svc.idle().await;
    svc.shutdown().await;
}

#[tokio::test]
async fn tool_calls_left_in_content_are_repaired() {
    let up = FakeUpstream::start(&["qwen-ish"], agent_script(Duration::ZERO)).await;
    let mut cfg = config(&up.url);
    cfg.tool_format = Some(clawpen_inference::Family::Hermes);
    let svc = start(cfg).await;
    let http = reqwest::Client::new();

    let v: Value = http
        .post(format!("{}/v1/chat/completions", svc.base))
        .json(&json!({"model": "qwen-ish", "tools": weather_tool_chat(),
                      "messages": [{"role": "user", "content": "weather in Oslo?"}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let m = &v["choices"][0]["message"];
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(m["reasoning_content"], "I need the weather tool.");
    assert_eq!(m["content"], Value::Null);
    let call = &m["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(
        args,
        json!({"city": "Oslo", "days": 2}),
        "coerced to the schema"
    );

    // Streamed Responses: reasoning item, then a function_call item.
    let body = read_all(
        http.post(format!("{}/v1/responses", svc.base))
            .json(
                &json!({"model": "qwen-ish", "stream": true, "tools": weather_tool_responses(),
                          "input": "weather in Oslo?"}),
            )
            .send()
            .await
            .unwrap(),
    )
    .await;
    let evs = events(&body);
    for (i, e) in evs.iter().enumerate() {
        assert_eq!(e["sequence_number"], i as u64, "{e}");
    }
    let kinds: Vec<&str> = evs.iter().map(|e| e["type"].as_str().unwrap()).collect();
    let first = |k: &str| {
        kinds
            .iter()
            .position(|x| *x == k)
            .unwrap_or_else(|| panic!("{k} in {kinds:?}"))
    };
    assert_eq!(kinds[0], "response.created");
    assert!(
        first("response.reasoning_summary_text.delta")
            < first("response.function_call_arguments.delta")
    );
    assert!(first("response.function_call_arguments.done") < first("response.completed"));
    assert_eq!(*kinds.last().unwrap(), "response.completed");
    let done = evs.last().unwrap();
    let output = done["response"]["output"].as_array().unwrap();
    assert_eq!(output[0]["type"], "reasoning");
    assert_eq!(output[0]["summary"][0]["text"], "I need the weather tool.");
    assert_eq!(output[1]["type"], "function_call");
    assert_eq!(output[1]["name"], "get_weather");
    assert!(output[1]["call_id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(
        done["response"]["usage"]["input_tokens_details"]["cached_tokens"],
        8
    );

    let snap = svc.metrics.prometheus();
    assert!(
        snap.contains(r#"clawpen_inference_repaired_tool_calls_total{client="anonymous"} 2"#),
        "{snap}"
    );
    svc.shutdown().await;
}

#[tokio::test]
async fn native_tool_calls_pass_through_and_loop_continues() {
    let up = FakeUpstream::start(&["m"], agent_script(Duration::ZERO)).await;
    let svc = start(config(&up.url)).await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/responses", svc.base);
    let v: Value = http
        .post(&url)
        .json(
            &json!({"model": "m", "tools": weather_tool_responses(), "input": "native please",
                      "instructions": "Be brief."}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["status"], "completed");
    let call = &v["output"][0];
    assert_eq!(call["type"], "function_call");
    assert_eq!(call["call_id"], "call_native");
    assert_eq!(call["arguments"], "{\"city\": \"Oslo\", \"days\": 2}");

    // The agent replays everything, with the tool's output.
    let input = json!([
        {"role": "user", "content": "native please"},
        call,
        {"type": "function_call_output", "call_id": "call_native", "output": "sunny, 21C"},
    ]);
    let v: Value = http
        .post(&url)
        .json(
            &json!({"model": "m", "tools": weather_tool_responses(), "input": input,
                      "instructions": "Be brief."}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["output"][0]["type"], "reasoning");
    assert_eq!(v["output"][1]["content"][0]["text"], "It is sunny in Oslo.");
    let sent = &up.requests()[1]["messages"];
    assert_eq!(
        sent,
        &json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "native please"},
            {"role": "assistant", "tool_calls": [{"id": "call_native", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\", \"days\": 2}"}}]},
            {"role": "tool", "content": "sunny, 21C", "tool_call_id": "call_native"},
        ])
    );
    svc.shutdown().await;
}

#[tokio::test]
async fn previous_response_id_continues_a_stored_conversation() {
    let up = FakeUpstream::start(&["m"], agent_script(Duration::ZERO)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&up.url);
    cfg.store_path = Some(dir.path().join("responses.db"));
    let svc = start(cfg).await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/responses", svc.base);
    let post = |body: Value| {
        let http = http.clone();
        let url = url.clone();
        async move { http.post(&url).json(&body).send().await.unwrap() }
    };

    let first: Value = post(json!({"model": "m", "input": "one", "instructions": "sys"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        first["output"][0]["content"][0]["text"],
        "You sent 2 messages."
    );
    let id = first["id"].as_str().unwrap();
    let second: Value = post(json!({"model": "m", "input": "two", "previous_response_id": id}))
        .await
        .json()
        .await
        .unwrap();
    // user one, assistant, user two (instructions are not carried over).
    assert_eq!(
        second["output"][0]["content"][0]["text"],
        "You sent 3 messages."
    );
    assert_eq!(second["previous_response_id"], id);
    let sent = &up.requests()[1]["messages"];
    assert_eq!(sent[1]["content"], "You sent 2 messages.");
    assert_eq!(sent[1]["role"], "assistant");

    // Streamed, chained on the second.
    let body = read_all(
        post(json!({"model": "m", "stream": true, "input": "three",
                    "previous_response_id": second["id"]}))
        .await,
    )
    .await;
    let done = events(&body).pop().unwrap();
    assert_eq!(done["type"], "response.completed");
    assert_eq!(
        done["response"]["output"][0]["content"][0]["text"],
        "You sent 5 messages."
    );

    // Retrieve and delete.
    let got: Value = http
        .get(format!("{url}/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["id"], id);

    // store: false is not continued.
    let unstored: Value = post(json!({"model": "m", "input": "x", "store": false}))
        .await
        .json()
        .await
        .unwrap();
    let r = post(json!({"model": "m", "input": "y", "previous_response_id": unstored["id"]})).await;
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["param"], "previous_response_id");
    assert_eq!(e["error"]["code"], "previous_response_not_found");

    let r = http.delete(format!("{url}/{id}")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = http.get(format!("{url}/{id}")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    svc.shutdown().await;
}

#[tokio::test]
async fn keepalives_flow_during_a_long_prefill() {
    let up = FakeUpstream::start(&["m"], agent_script(Duration::from_millis(1500))).await;
    let svc = start(config(&up.url)).await;
    let http = reqwest::Client::new();

    let t = Instant::now();
    let r = http
        .post(format!("{}/v1/chat/completions", svc.base))
        .json(&json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "slow"}]}))
        .send()
        .await
        .unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(1000),
        "headers at once: {:?}",
        t.elapsed()
    );
    let fr = frames(&read_all(r).await);
    let first_data = fr
        .iter()
        .position(|f| matches!(f, Frame::Data { .. }))
        .unwrap();
    let comments = fr[..first_data]
        .iter()
        .filter(|f| **f == Frame::Comment("keep-alive".into()))
        .count();
    assert!(comments >= 3, "keep-alives before the first token: {fr:?}");

    let t = Instant::now();
    let r = http
        .post(format!("{}/v1/responses", svc.base))
        .json(&json!({"model": "m", "stream": true, "input": "slow"}))
        .send()
        .await
        .unwrap();
    assert!(t.elapsed() < Duration::from_millis(1000));
    let evs = events(&read_all(r).await);
    let first_delta = evs
        .iter()
        .position(|e| e["type"] == "response.output_text.delta")
        .unwrap();
    let progress = evs[..first_delta]
        .iter()
        .filter(|e| e["type"] == "response.in_progress")
        .count();
    assert!(
        progress >= 4,
        "in_progress events during prefill: {progress}"
    );

    // Whole answers: headers at once too, JSON after leading spaces.
    let t = Instant::now();
    let r = http
        .post(format!("{}/v1/responses", svc.base))
        .json(&json!({"model": "m", "input": "slow"}))
        .send()
        .await
        .unwrap();
    assert!(t.elapsed() < Duration::from_millis(1000));
    let text = r.text().await.unwrap();
    assert!(text.starts_with(' '));
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["status"], "completed");
    svc.shutdown().await;
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_its_generation() {
    let up = FakeUpstream::start(&["m"], agent_script(Duration::from_secs(30))).await;
    let svc = start(config(&up.url)).await;
    let http = reqwest::Client::new();

    // During a long prefill: cancelled by the next keep-alive write at the latest.
    let r = http
        .post(format!("{}/v1/responses", svc.base))
        .json(&json!({"model": "m", "stream": true, "input": "slow"}))
        .send()
        .await
        .unwrap();
    let mut s = r.bytes_stream();
    s.next().await.unwrap().unwrap();
    assert_eq!(svc.metrics.live_generations(), 1);
    drop(s);
    common::eventually(|| up.cut_off() == 1, "upstream request dropped").await;
    svc.idle().await;

    // While decoding.
    let r = http
        .post(format!("{}/v1/chat/completions", svc.base))
        .json(&json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "long"}]}))
        .send()
        .await
        .unwrap();
    let mut s = r.bytes_stream();
    s.next().await.unwrap().unwrap();
    drop(s);
    common::eventually(|| up.cut_off() == 2, "upstream request dropped").await;
    svc.idle().await;
    assert_eq!(up.live(), 0);
    assert!(svc
        .metrics
        .prometheus()
        .contains(r#"endpoint="chat_completions",status="cancelled"} 1"#));
    svc.shutdown().await;
}

#[tokio::test]
async fn sixteen_streams_with_random_disconnects() {
    let up = FakeUpstream::start(&["m"], agent_script(Duration::ZERO)).await;
    let svc = start(config(&up.url)).await;
    let http = reqwest::Client::new();
    let mut tasks = Vec::new();
    for i in 0..16u64 {
        let http = http.clone();
        let base = svc.base.clone();
        tasks.push(tokio::spawn(async move {
            // Deterministic "random": which ones leave, and after how many chunks.
            let leaves = (i * 7 + 3) % 3 == 0;
            let after = 1 + (i * 13 % 11) as usize;
            let responses = i % 2 == 0;
            let r = if responses {
                http.post(format!("{base}/v1/responses"))
                    .json(&json!({"model": "m", "stream": true, "input": "long"}))
            } else {
                http.post(format!("{base}/v1/chat/completions"))
                    .json(&json!({"model": "m", "stream": true,
                                  "messages": [{"role": "user", "content": "long"}]}))
            }
            .send()
            .await
            .unwrap();
            let mut s = r.bytes_stream();
            let mut body = Vec::new();
            let mut n = 0;
            while let Some(chunk) = s.next().await {
                body.extend_from_slice(&chunk.unwrap());
                n += 1;
                if leaves && n >= after {
                    return (true, String::new());
                }
            }
            (false, String::from_utf8(body).unwrap())
        }));
    }
    let mut completed = 0;
    for t in tasks {
        let (left, body) = t.await.unwrap();
        if left {
            continue;
        }
        completed += 1;
        let evs = events(&body);
        let text: String = evs
            .iter()
            .filter_map(|e| {
                e["delta"]
                    .as_str()
                    .or_else(|| e["choices"][0]["delta"]["content"].as_str())
            })
            .collect();
        assert_eq!(text, "token ".repeat(200), "a surviving stream is complete");
    }
    assert!(completed >= 8, "{completed}");
    svc.idle().await;
    common::eventually(|| up.live() == 0, "upstream streams closed").await;
    assert_eq!(up.cut_off() + up.finished(), 16);
    assert_eq!(up.finished(), completed);
    let text = svc.metrics_text().await;
    assert!(
        text.contains("clawpen_inference_live_generations 0"),
        "{text}"
    );
    svc.shutdown().await;
}

#[tokio::test]
async fn keys_name_clients_and_metrics_follow_them() {
    let up = FakeUpstream::start(&["m"], agent_script(Duration::ZERO)).await;
    let mut cfg = config(&up.url);
    cfg.api_keys = [("sk-vm-a".to_owned(), "vm-a".to_owned())].into();
    let svc = start(cfg).await;
    let mut feed = svc.inference.subscribe();
    let http = reqwest::Client::new();
    let url = format!("{}/v1/responses", svc.base);
    let body = json!({"model": "m", "input": "hi", "prompt_cache_key": "session-1",
                      "tools": weather_tool_responses()});

    let r = http.post(&url).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "invalid_api_key");
    let r = http
        .post(&url)
        .bearer_auth("sk-wrong")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .get(format!("{}/v1/models", svc.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        reqwest::get(format!("{}/healthz", svc.base))
            .await
            .unwrap()
            .status(),
        200
    );

    let r = http
        .post(&url)
        .bearer_auth("sk-vm-a")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let m = tokio::time::timeout(Duration::from_secs(5), feed.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.client, "vm-a");
    assert_eq!(m.session.as_deref(), Some("session-1"));
    assert_eq!(m.prompt_tokens, 12);
    assert_eq!(m.cached_tokens, 8);
    assert_eq!(m.output_tokens, 3);
    assert!(m.time_to_first_token_ms.unwrap() > 0.0);
    assert!(m.decode_tokens_per_s.unwrap() > 0.0);

    // A stored response is the client's own.
    let v: Value = http
        .post(&url)
        .bearer_auth("sk-vm-a")
        .json(&json!({"model": "m", "input": "weather?", "tools": weather_tool_responses()}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let m = feed.recv().await.unwrap();
    assert_eq!(m.tool_calls, ["get_weather"]);
    assert_eq!(v["output"][1]["type"], "function_call");

    let text = svc.metrics_text().await;
    assert!(text.contains(r#"clawpen_inference_requests_total{client="vm-a",endpoint="responses",status="completed"} 2"#), "{text}");
    assert!(text.contains(r#"clawpen_inference_tool_calls_total{client="vm-a"} 1"#));
    assert!(text.contains(r#"clawpen_inference_prompt_tokens_total{client="vm-a"} 24"#));
    svc.shutdown().await;
}

#[tokio::test]
async fn upstream_failures_are_openai_errors() {
    let up = FakeUpstream::start(
        &["m"],
        Arc::new(|body: &Value| {
            if common::upstream::last_text(body).contains("refuse") {
                Reply {
                    status: 400,
                    error: Some(json!({"error": {"message": "context too long"}})),
                    ..Reply::default()
                }
            } else {
                Reply {
                    whole: true,
                    ..Reply::text("plain json", 3)
                }
            }
        }),
    )
    .await;
    let svc = start(config(&up.url)).await;
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/v1/responses", svc.base))
        .json(&json!({"model": "m", "input": "refuse", "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("context too long"));

    // An upstream that answers JSON although asked to stream still works.
    let v: Value = http
        .post(format!("{}/v1/chat/completions", svc.base))
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "plain json");

    // Nobody listening upstream: 502.
    let dead = start(config("http://127.0.0.1:9/v1")).await;
    let r = http
        .post(format!("{}/v1/chat/completions", dead.base))
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["type"], "server_error");
    dead.shutdown().await;
    svc.shutdown().await;
}

/// A VM host's service in front of another clawpen (`clawpen up
/// --inference-url`): the VM's request is attributed to the VM on both, as
/// `vm-host/VM` on the inference host; only a configured key may name the
/// VM it relays for, never a VM's own key.
#[tokio::test]
async fn a_relay_names_each_vm_to_the_clawpen_behind_it() {
    let up = FakeUpstream::start(&["m"], agent_script(Duration::ZERO)).await;
    let mut remote_cfg = config(&up.url);
    remote_cfg.api_keys = [("sk-host".to_owned(), "vm-host".to_owned())].into();
    let remote = start(remote_cfg).await;
    let mut remote_feed = remote.inference.subscribe();
    let mut relay_cfg = config(&format!("{}/v1", remote.base));
    relay_cfg.upstream_api_key = Some("sk-host".into());
    relay_cfg.upstream_is_clawpen = true;
    let relay = start(relay_cfg).await;
    relay.inference.keys().insert("sk-demo", "demo");
    let mut relay_feed = relay.inference.subscribe();
    let http = reqwest::Client::new();
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});

    let r = http
        .post(format!("{}/v1/chat/completions", relay.base))
        .bearer_auth("sk-demo")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let on_relay = tokio::time::timeout(Duration::from_secs(5), relay_feed.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(on_relay.client, "demo");
    let on_remote = tokio::time::timeout(Duration::from_secs(5), remote_feed.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(on_remote.client, "vm-host/demo");

    // A VM key on the inference host may not name another client; a bad
    // name is refused too; neither reaches the engine.
    remote.inference.keys().insert("sk-vm1", "vm1");
    let before = up.requests().len();
    for (key, sub) in [("sk-vm1", "demo"), ("sk-host", "../etc"), ("sk-host", "")] {
        let r = http
            .post(format!("{}/v1/chat/completions", remote.base))
            .bearer_auth(key)
            .header("x-clawpen-client", sub)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{key} {sub:?}");
        let e: Value = r.json().await.unwrap();
        assert!(
            e["error"]["message"]
                .as_str()
                .unwrap()
                .contains("x-clawpen-client"),
            "{e}"
        );
    }
    assert_eq!(up.requests().len(), before);
    relay.shutdown().await;
    remote.shutdown().await;
}

/// The response object carries every field Open Responses (2026-04-24)
/// requires of `ResponseResource`, echoes what the request set, keeps at
/// most `max_tool_calls` calls, passes the penalties on, and refuses values
/// out of the spec's ranges with a 400 naming the parameter.
#[tokio::test]
async fn open_responses_fields_are_all_there_and_checked() {
    let up = FakeUpstream::start(&["qwen-ish"], agent_script(Duration::ZERO)).await;
    let svc = start(config(&up.url)).await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/responses", svc.base);
    let v: Value = http
        .post(&url)
        .json(
            &json!({"model": "qwen-ish", "tools": weather_tool_responses(),
                      "input": "weather twice please", "max_tool_calls": 1,
                      "presence_penalty": 0.5, "frequency_penalty": -0.25,
                      "safety_identifier": "user-7"}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // The spec's required fields of ResponseResource, all present.
    for field in [
        "id",
        "object",
        "created_at",
        "completed_at",
        "status",
        "incomplete_details",
        "model",
        "previous_response_id",
        "instructions",
        "output",
        "error",
        "tools",
        "tool_choice",
        "truncation",
        "parallel_tool_calls",
        "text",
        "top_p",
        "presence_penalty",
        "frequency_penalty",
        "top_logprobs",
        "temperature",
        "reasoning",
        "usage",
        "max_output_tokens",
        "max_tool_calls",
        "store",
        "background",
        "service_tier",
        "metadata",
        "safety_identifier",
        "prompt_cache_key",
    ] {
        assert!(v.get(field).is_some(), "no '{field}' in {v}");
    }
    assert_eq!(v["status"], "completed", "{v}");
    assert!(v["completed_at"].as_u64().unwrap() >= v["created_at"].as_u64().unwrap());
    assert_eq!(v["presence_penalty"], 0.5);
    assert_eq!(v["frequency_penalty"], -0.25);
    assert_eq!(v["top_logprobs"], 0);
    assert_eq!(v["max_tool_calls"], 1);
    assert_eq!(v["safety_identifier"], "user-7");
    let calls: Vec<&Value> = v["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["type"] == "function_call")
        .collect();
    assert_eq!(calls.len(), 1, "max_tool_calls 1 kept {calls:?}");
    assert!(calls[0]["arguments"].as_str().unwrap().contains("Oslo"));
    let sent = &up.requests()[0];
    assert_eq!(sent["presence_penalty"], 0.5, "{sent}");
    assert_eq!(sent["frequency_penalty"], -0.25, "{sent}");
    assert_eq!(sent["parallel_tool_calls"], false, "{sent}");

    for (bad, param) in [
        (json!({"top_logprobs": 3}), "top_logprobs"),
        (json!({"top_logprobs": 21}), "top_logprobs"),
        (json!({"max_tool_calls": 0}), "max_tool_calls"),
        (json!({"presence_penalty": 2.5}), "presence_penalty"),
        (json!({"frequency_penalty": -3}), "frequency_penalty"),
        (
            json!({"safety_identifier": "x".repeat(65)}),
            "safety_identifier",
        ),
    ] {
        let mut body = json!({"model": "qwen-ish", "input": "hi"});
        body.as_object_mut()
            .unwrap()
            .extend(bad.as_object().unwrap().clone());
        let resp = http.post(&url).json(&body).send().await.unwrap();
        assert_eq!(resp.status(), 400, "{bad}");
        let e: Value = resp.json().await.unwrap();
        assert_eq!(e["error"]["param"], param, "{e}");
    }
    assert_eq!(
        up.requests().len(),
        1,
        "a refused request reached the upstream"
    );
    svc.shutdown().await;
}
