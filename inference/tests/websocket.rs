//! The Responses API's WebSocket mode (Open Responses 2026-04-24,
//! "WebSocket Transport"): `response.create` messages on an upgraded
//! `GET /v1/responses`, run one after the other, each streaming the SSE
//! path's events; continuation from the store or from the connection's
//! last response (`store: false`); the spec's `error` messages; the API
//! key; bounded messages; a client that leaves cancels its generation.
//! In front of the scripted upstream, whose default answer names how many
//! messages it was sent (so a continuation's context is visible).

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::upstream::{agent_script, last_text, FakeUpstream, Reply};
use common::{config, start, Svc};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const KEY: &str = "sk-vm-a";

async fn service() -> (FakeUpstream, Svc) {
    let up = FakeUpstream::start(&["m"], agent_script(Duration::ZERO)).await;
    let mut cfg = config(&up.url);
    cfg.api_keys = [(KEY.to_owned(), "vm-a".to_owned())].into();
    (up, start(cfg).await)
}

pub(crate) async fn connect(
    svc: &Svc,
    key: Option<&str>,
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let url = format!("{}/v1/responses", svc.base.replacen("http", "ws", 1));
    let mut request = url.into_client_request().unwrap();
    if let Some(k) = key {
        request
            .headers_mut()
            .insert(AUTHORIZATION, format!("Bearer {k}").parse().unwrap());
    }
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(ws, _)| ws)
}

async fn send(ws: &mut Ws, body: Value) {
    ws.send(Message::text(body.to_string())).await.unwrap();
}

/// The next JSON message (pings and pongs skipped); `None` once closed.
async fn next(ws: &mut Ws) -> Option<Value> {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message within 10 s");
        match m {
            Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return None,
            Some(Ok(other)) => panic!("unexpected message {other:?}"),
        }
    }
}

/// The messages of one turn: up to its terminal event, or its `error`.
async fn read_turn(ws: &mut Ws) -> Vec<Value> {
    let mut events = Vec::new();
    while let Some(e) = next(ws).await {
        let kind = e["type"].as_str().unwrap_or_default().to_owned();
        // An `error` within a response's events (it has a sequence number)
        // is followed by `response.failed`; only a refusal ends the turn.
        let streamed_error = kind == "error" && e.get("sequence_number").is_some();
        events.push(e);
        if !streamed_error
            && matches!(
                kind.as_str(),
                "error" | "response.completed" | "response.incomplete" | "response.failed"
            )
        {
            return events;
        }
    }
    panic!("socket closed mid-turn after {events:?}");
}

pub(crate) async fn turn(ws: &mut Ws, body: Value) -> Vec<Value> {
    send(ws, body).await;
    read_turn(ws).await
}

/// The terminal event's response, asserting the turn completed.
fn completed(events: &[Value]) -> &Value {
    let last = events.last().unwrap();
    assert_eq!(last["type"], "response.completed", "{events:#?}");
    &last["response"]
}

fn answer(response: &Value) -> String {
    response["output"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|item| item["content"].as_array().into_iter().flatten())
        .filter_map(|part| part["text"].as_str())
        .collect()
}

/// The `error` message a refused turn gets (the spec's envelope).
fn error(events: &[Value]) -> &Value {
    assert_eq!(events.len(), 1, "{events:#?}");
    let e = &events[0];
    assert_eq!(e["type"], "error", "{e}");
    assert!(e["status"].is_u64(), "{e}");
    assert!(e["error"]["message"].is_string(), "{e}");
    e
}

fn create(input: &str) -> Value {
    json!({"type": "response.create", "model": "m", "input": input})
}

/// Two `response.create` sent at once run one after the other: every
/// event of the first before any of the second, each with its own
/// `sequence_number`s from 0, the same event types as the SSE stream of
/// the same request; both are the key's client's, counted as Responses.
#[tokio::test]
async fn two_responses_run_in_turn_on_one_socket() {
    let (_up, svc) = service().await;
    let mut ws = connect(&svc, Some(KEY)).await.unwrap();
    send(&mut ws, create("first")).await;
    send(&mut ws, create("second")).await;
    let first = read_turn(&mut ws).await;
    let second = read_turn(&mut ws).await;
    let (a, b) = (completed(&first), completed(&second));
    assert_ne!(a["id"], b["id"]);
    assert_eq!(answer(a), "You sent 1 messages.");
    for events in [&first, &second] {
        let id = &events[0]["response"]["id"];
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e["sequence_number"], i as u64, "{e}");
            if let Some(r) = e.get("response") {
                assert_eq!(&r["id"], id, "{e}");
            }
        }
    }

    let sse = reqwest::Client::new()
        .post(format!("{}/v1/responses", svc.base))
        .bearer_auth(KEY)
        .json(&json!({"model": "m", "input": "first", "stream": true}))
        .send()
        .await
        .unwrap();
    let sse = common::events(&common::read_all(sse).await);
    let types = |events: &[Value]| -> Vec<String> {
        events
            .iter()
            .map(|e| e["type"].as_str().unwrap().to_owned())
            .filter(|t| t != "response.in_progress")
            .collect()
    };
    assert_eq!(types(&first), types(&sse));

    let metrics = svc.metrics_text().await;
    assert!(
        metrics.contains(
            r#"clawpen_inference_requests_total{client="vm-a",endpoint="responses",status="completed"} 3"#
        ),
        "{metrics}"
    );
    drop(ws);
    svc.shutdown().await;
}

/// A stored response is continued by its id, from another socket too (the
/// store, not the connection, holds it): the model is sent the first
/// turn's input and output, then the new input.
#[tokio::test]
async fn continuation_by_previous_response_id_reads_the_stored_chain() {
    let (_up, svc) = service().await;
    let mut ws = connect(&svc, Some(KEY)).await.unwrap();
    let first = turn(&mut ws, create("hello")).await;
    let id = completed(&first)["id"].clone();

    let mut body = create("and again");
    body["previous_response_id"] = id.clone();
    let second = turn(&mut ws, body.clone()).await;
    let r = completed(&second);
    assert_eq!(answer(r), "You sent 3 messages.");
    assert_eq!(r["previous_response_id"], id);

    let mut other = connect(&svc, Some(KEY)).await.unwrap();
    let third = turn(&mut other, body).await;
    assert_eq!(answer(completed(&third)), "You sent 3 messages.");
    svc.shutdown().await;
}

/// An id nothing holds: the spec's `previous_response_not_found` error
/// message (400, naming the parameter), and the socket still serves.
#[tokio::test]
async fn unknown_previous_response_id_is_previous_response_not_found() {
    let (up, svc) = service().await;
    let mut ws = connect(&svc, Some(KEY)).await.unwrap();
    let mut body = create("hello");
    body["previous_response_id"] = json!("resp_nothing");
    let events = turn(&mut ws, body).await;
    let e = error(&events);
    assert_eq!(e["status"], 400, "{e}");
    assert_eq!(e["error"]["code"], "previous_response_not_found", "{e}");
    assert_eq!(e["error"]["param"], "previous_response_id", "{e}");
    assert!(up.requests().is_empty(), "the model was not asked");

    let events = turn(&mut ws, create("hello")).await;
    assert_eq!(answer(completed(&events)), "You sent 1 messages.");
    let metrics = svc.metrics_text().await;
    assert!(
        metrics.contains(
            r#"clawpen_inference_requests_total{client="vm-a",endpoint="responses",status="rejected"} 1"#
        ),
        "{metrics}"
    );
    svc.shutdown().await;
}

/// `store: false` is never stored, yet continues on its own socket from
/// the connection's memory; after a reconnect the id is
/// `previous_response_not_found`, and the client recovers by sending the
/// whole input again without it.
#[tokio::test]
async fn store_false_continues_on_its_socket_only() {
    let (_up, svc) = service().await;
    let mut ws = connect(&svc, Some(KEY)).await.unwrap();
    let mut body = create("hello");
    body["store"] = json!(false);
    let first = turn(&mut ws, body).await;
    let r = completed(&first);
    let id = r["id"].as_str().unwrap().to_owned();
    let output = r["output"].clone();
    let stored = reqwest::Client::new()
        .get(format!("{}/v1/responses/{id}", svc.base))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 404, "store: false was stored");

    let continue_it = json!({"type": "response.create", "model": "m", "store": false,
                             "previous_response_id": id, "input": "more"});
    let second = turn(&mut ws, continue_it.clone()).await;
    let second_id = completed(&second)["id"].clone();
    assert_eq!(answer(completed(&second)), "You sent 3 messages.");
    drop(ws);

    let mut ws = connect(&svc, Some(KEY)).await.unwrap();
    let mut again = continue_it.clone();
    again["previous_response_id"] = second_id;
    let e = turn(&mut ws, again).await;
    assert_eq!(error(&e)["error"]["code"], "previous_response_not_found");

    let mut input = vec![json!({"type": "message", "role": "user", "content": "hello"})];
    input.extend(output.as_array().unwrap().iter().cloned());
    input.push(json!({"type": "message", "role": "user", "content": "more"}));
    let full = json!({"type": "response.create", "model": "m", "store": false, "input": input});
    let recovered = turn(&mut ws, full).await;
    assert_eq!(answer(completed(&recovered)), "You sent 3 messages.");
    svc.shutdown().await;
}

/// "If a continuation turn fails with a 4xx or 5xx error, the server MUST
/// evict the referenced `previous_response_id`": a `store: false`
/// response continued with a bad input item is forgotten.
#[tokio::test]
async fn a_failed_continuation_forgets_the_kept_response() {
    let (_up, svc) = service().await;
    let mut ws = connect(&svc, Some(KEY)).await.unwrap();
    let mut body = create("hello");
    body["store"] = json!(false);
    let id = completed(&turn(&mut ws, body).await)["id"].clone();

    let bad = json!({"type": "response.create", "model": "m", "store": false,
                     "previous_response_id": id, "input": [{"type": "no_such_item"}]});
    let e = turn(&mut ws, bad).await;
    assert_eq!(error(&e)["status"], 400);

    let retry = json!({"type": "response.create", "model": "m", "store": false,
                       "previous_response_id": id, "input": "more"});
    let e = turn(&mut ws, retry).await;
    assert_eq!(error(&e)["error"]["code"], "previous_response_not_found");
    svc.shutdown().await;
}

/// An upstream that fails a continuation: the spec's `error` message with
/// the 5xx status, the socket still open, and (a 5xx failure too) the
/// continued `store: false` response evicted.
#[tokio::test]
async fn an_engine_failure_is_an_error_and_evicts_the_continued_response() {
    let script = Arc::new(|body: &Value| {
        if last_text(body).contains("fail") {
            Reply {
                status: 500,
                ..Reply::default()
            }
        } else {
            Reply::text("fine", 2)
        }
    });
    let up = FakeUpstream::start(&["m"], script).await;
    let svc = start(config(&up.url)).await;
    let mut ws = connect(&svc, None).await.unwrap();
    let mut body = create("hello");
    body["store"] = json!(false);
    let id = completed(&turn(&mut ws, body).await)["id"].clone();

    let failing = json!({"type": "response.create", "model": "m", "store": false,
                         "previous_response_id": id, "input": "fail now"});
    let e = turn(&mut ws, failing).await;
    let status = error(&e)["status"].as_u64().unwrap();
    assert!((500..600).contains(&status), "{e:?}");

    let retry = json!({"type": "response.create", "model": "m", "store": false,
                       "previous_response_id": id, "input": "more"});
    let e = turn(&mut ws, retry).await;
    assert_eq!(error(&e)["error"]["code"], "previous_response_not_found");
    assert_eq!(
        answer(completed(&turn(&mut ws, create("hi")).await)),
        "fine"
    );
    svc.shutdown().await;
}

/// Not JSON, not an object, an unknown `type`, no `type`, HTTP's `stream`,
/// a field of the wrong type, a binary message: each an `error` message
/// naming what is wrong; the socket stays open and the next good message
/// runs.
#[tokio::test]
async fn bad_messages_get_error_events_and_the_socket_stays_usable() {
    let (up, svc) = service().await;
    let mut ws = connect(&svc, Some(KEY)).await.unwrap();
    let cases: [(Message, &str, Option<&str>); 7] = [
        (Message::text("{nope"), "invalid_json", None),
        (Message::text("[1]"), "invalid_request_error", None),
        (
            Message::text(r#"{"type":"response.cancel"}"#),
            "unknown_event_type",
            Some("type"),
        ),
        (
            Message::text(r#"{"model":"m","input":"x"}"#),
            "invalid_request_error",
            Some("type"),
        ),
        (
            Message::text(create("x").to_string().replace('{', r#"{"stream":true,"#)),
            "invalid_request_error",
            Some("stream"),
        ),
        (
            Message::text(r#"{"type":"response.create","model":"m","input":7}"#),
            "invalid_type",
            Some("input"),
        ),
        (
            Message::binary(b"{}".to_vec()),
            "invalid_request_error",
            None,
        ),
    ];
    for (message, code, param) in cases {
        let shown = format!("{message:?}");
        ws.send(message).await.unwrap();
        let events = read_turn(&mut ws).await;
        let e = error(&events);
        assert_eq!(e["status"], 400, "{shown}: {e}");
        assert_eq!(e["error"]["code"], code, "{shown}: {e}");
        if let Some(param) = param {
            assert_eq!(e["error"]["param"], param, "{shown}: {e}");
        }
    }
    assert!(up.requests().is_empty(), "no bad message reached the model");
    let events = turn(&mut ws, create("now properly")).await;
    assert_eq!(answer(completed(&events)), "You sent 1 messages.");
    svc.shutdown().await;
}

/// With keys configured the upgrade is refused without a valid one (401,
/// as for HTTP); a plain GET (no upgrade) gets an OpenAI-shaped error.
#[tokio::test]
async fn the_upgrade_needs_the_api_key() {
    let (_up, svc) = service().await;
    for key in [None, Some("sk-wrong")] {
        match connect(&svc, key).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 401, "{key:?}");
            }
            Err(e) => panic!("{key:?}: {e}"),
            Ok(_) => panic!("{key:?}: upgraded without a valid key"),
        }
    }
    let plain = reqwest::Client::new()
        .get(format!("{}/v1/responses", svc.base))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    let status = plain.status().as_u16();
    assert!((400..500).contains(&status), "{status}");
    let body: Value = plain.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    assert!(connect(&svc, Some(KEY)).await.is_ok());
    svc.shutdown().await;
}

/// A message over `max_body_bytes` is refused by its frame header and
/// ends the connection; the service serves the next one.
#[tokio::test]
async fn an_oversized_message_ends_the_connection() {
    let up = FakeUpstream::start(&["m"], agent_script(Duration::ZERO)).await;
    let mut cfg = config(&up.url);
    cfg.max_body_bytes = 4096;
    let svc = start(cfg).await;
    let mut ws = connect(&svc, None).await.unwrap();
    let _ = ws
        .send(Message::text(create(&"x".repeat(10_000)).to_string()))
        .await;
    let mut closed = false;
    for _ in 0..3 {
        match next(&mut ws).await {
            None => {
                closed = true;
                break;
            }
            Some(e) => assert_eq!(e["type"], "error", "{e}"),
        }
    }
    assert!(closed, "the connection stayed open");
    assert!(up.requests().is_empty());
    let mut ws = connect(&svc, None).await.unwrap();
    assert_eq!(
        answer(completed(&turn(&mut ws, create("hi")).await)),
        "You sent 1 messages."
    );
    svc.shutdown().await;
}

/// A client that closes its socket mid-response stops the generation: the
/// upstream stream is cut off and nothing is left running.
#[tokio::test]
async fn closing_the_socket_cancels_the_generation() {
    let (up, svc) = service().await;
    let mut ws = connect(&svc, Some(KEY)).await.unwrap();
    send(&mut ws, create("a long one")).await;
    loop {
        let e = next(&mut ws).await.unwrap();
        if e["type"] == "response.output_text.delta" {
            break;
        }
    }
    ws.close(None).await.unwrap();
    drop(ws);
    common::eventually(|| up.cut_off() == 1, "the upstream stream cut off").await;
    assert_eq!(up.finished(), 0);
    svc.idle().await;
    svc.shutdown().await;
}

/// A connection lasts at most its lifetime (the spec's 60 minutes; 2 s
/// here): then an `error` with code `websocket_connection_limit_reached`,
/// and the socket closes. A response finished before it is unaffected.
#[tokio::test]
async fn a_connection_ends_after_its_lifetime_with_the_spec_error() {
    let up = FakeUpstream::start(&["m"], agent_script(Duration::ZERO)).await;
    let mut cfg = config(&up.url);
    cfg.api_keys = [(KEY.to_owned(), "vm-a".to_owned())].into();
    cfg.websocket_lifetime = Duration::from_secs(2);
    let svc = start(cfg).await;
    let mut ws = connect(&svc, Some(KEY)).await.unwrap();
    send(
        &mut ws,
        json!({"type": "response.create", "model": "m", "input": "hi"}),
    )
    .await;
    let turn = read_turn(&mut ws).await;
    assert_eq!(
        turn.last().unwrap()["type"],
        "response.completed",
        "{turn:?}"
    );
    // Nothing more is sent: the lifetime runs out while the server waits.
    let e = next(&mut ws).await.expect("an error before the close");
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(
        e["error"]["code"], "websocket_connection_limit_reached",
        "{e}"
    );
    assert!(next(&mut ws).await.is_none(), "the socket closes");
}

/// A shutdown ends every session: an idle one gets a close frame at once
/// (1001, going away), one in the middle of a long turn is cut off within
/// the shutdown grace, and the service's `serve` returns in time (before,
/// upgraded sockets lived on after it).
#[tokio::test]
async fn a_shutdown_closes_idle_and_running_sessions() {
    // "slow" answers after a long wait: a turn that outlasts the grace.
    let up = FakeUpstream::start(&["m"], agent_script(Duration::from_secs(60))).await;
    let mut cfg = config(&up.url);
    cfg.api_keys = [(KEY.to_owned(), "vm-a".to_owned())].into();
    let svc = start(cfg).await;
    let mut idle = connect(&svc, Some(KEY)).await.unwrap();
    let mut busy = connect(&svc, Some(KEY)).await.unwrap();
    send(
        &mut busy,
        json!({"type": "response.create", "model": "m", "input": "slow"}),
    )
    .await;
    let first = next(&mut busy).await.unwrap();
    assert_eq!(first["type"], "response.created", "{first}");
    let started = std::time::Instant::now();
    svc.shutdown().await;

    let closed = tokio::time::timeout(Duration::from_secs(5), idle.next())
        .await
        .expect("the idle session closes at once");
    match closed {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!(u16::from(frame.code), 1001, "{frame:?}");
        }
        other => panic!("a close frame, got {other:?}"),
    }
    // The running one ends within the grace (a keep-alive or two, then the
    // end of the socket), not after the upstream's minute.
    let ended = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(Ok(m)) = busy.next().await {
            if let Message::Text(t) = m {
                let e: Value = serde_json::from_str(&t).unwrap();
                assert_ne!(e["type"], "response.completed", "{e}");
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the running session ends at shutdown");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}
