//! A scripted OpenAI-compatible upstream: the test double for the server
//! clawpen proxies (llama.cpp, Ollama, ...). It streams chosen Chat
//! Completions chunks, records every request, and counts streams that
//! were cut off by the client (clawpen), so cancellation is observable.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

/// What the upstream answers to one request.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// Sent with a non-200 status.
    pub error: Option<Value>,
    /// Wait before the first chunk (a long prefill).
    pub first_delay: Duration,
    /// Wait between chunks.
    pub chunk_delay: Duration,
    /// Each one becomes one chunk's `delta`.
    pub deltas: Vec<Value>,
    pub finish_reason: &'static str,
    /// Sent in a last chunk with empty `choices` (when the client asked).
    pub usage: Option<Value>,
    /// Answer a JSON `chat.completion` instead of SSE.
    pub whole: bool,
    /// End the stream after the deltas, with no finish nor `[DONE]` (an
    /// upstream that fails mid-stream).
    pub cut: bool,
}

impl Default for Reply {
    fn default() -> Self {
        Self {
            status: 200,
            error: None,
            first_delay: Duration::ZERO,
            chunk_delay: Duration::ZERO,
            deltas: Vec::new(),
            finish_reason: "stop",
            usage: Some(
                json!({"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15,
                                "prompt_tokens_details": {"cached_tokens": 8}}),
            ),
            whole: false,
            cut: false,
        }
    }
}

impl Reply {
    /// Text streamed in pieces of `piece` bytes (on char boundaries).
    pub fn text(text: &str, piece: usize) -> Self {
        Self {
            deltas: pieces(text, piece)
                .into_iter()
                .map(|p| json!({"content": p}))
                .collect(),
            ..Self::default()
        }
    }
}

/// Splits `text` into pieces of about `n` bytes.
pub fn pieces(text: &str, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in text.chars() {
        cur.push(c);
        if cur.len() >= n {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

pub type Script = Arc<dyn Fn(&Value) -> Reply + Send + Sync>;

#[derive(Clone)]
struct Shared {
    script: Script,
    models: Vec<String>,
    requests: Arc<Mutex<Vec<Value>>>,
    live: Arc<AtomicUsize>,
    cut_off: Arc<AtomicUsize>,
    finished: Arc<AtomicUsize>,
}

/// A running fake upstream.
pub struct FakeUpstream {
    /// Base URL with `/v1`.
    pub url: String,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl FakeUpstream {
    pub async fn start(models: &[&str], script: Script) -> Self {
        let shared = Shared {
            script,
            models: models.iter().map(|m| m.to_string()).collect(),
            requests: Arc::default(),
            live: Arc::default(),
            cut_off: Arc::default(),
            finished: Arc::default(),
        };
        let app = Router::new()
            .route("/v1/models", get(models_list))
            .route("/v1/chat/completions", post(chat))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        // As real servers do: frames leave at once (no Nagle delay).
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { url, shared, task }
    }

    /// Every request body received, in order.
    pub fn requests(&self) -> Vec<Value> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Streams being sent right now.
    pub fn live(&self) -> usize {
        self.shared.live.load(Ordering::SeqCst)
    }

    /// Streams the client dropped before their end.
    pub fn cut_off(&self) -> usize {
        self.shared.cut_off.load(Ordering::SeqCst)
    }

    /// Streams sent to their end.
    pub fn finished(&self) -> usize {
        self.shared.finished.load(Ordering::SeqCst)
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn models_list(State(s): State<Shared>) -> Response {
    if s.models.is_empty() {
        return StatusCode::NOT_FOUND.into_response();
    }
    let data: Vec<Value> = s
        .models
        .iter()
        .map(|m| json!({"id": m, "object": "model", "owned_by": "fake"}))
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

/// Counts a stream as live; on drop, as cut off unless it finished.
struct StreamGuard {
    shared: Shared,
    done: bool,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.shared.live.fetch_sub(1, Ordering::SeqCst);
        if self.done {
            self.shared.finished.fetch_add(1, Ordering::SeqCst);
        } else {
            self.shared.cut_off.fetch_add(1, Ordering::SeqCst);
        }
    }
}

async fn chat(State(s): State<Shared>, Json(body): Json<Value>) -> Response {
    s.requests.lock().unwrap().push(body.clone());
    let reply = (s.script)(&body);
    if reply.status != 200 {
        let status = StatusCode::from_u16(reply.status).unwrap();
        let err = reply
            .error
            .unwrap_or_else(|| json!({"error": {"message": "scripted failure"}}));
        return (status, Json(err)).into_response();
    }
    let model = body["model"].as_str().unwrap_or("").to_owned();
    if reply.whole {
        tokio::time::sleep(reply.first_delay).await;
        let mut message = json!({"role": "assistant", "content": null});
        for d in &reply.deltas {
            if let Some(c) = d["content"].as_str() {
                let prev = message["content"].as_str().unwrap_or("").to_owned();
                message["content"] = json!(prev + c);
            }
        }
        return Json(json!({
            "id": "chatcmpl-fake", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": reply.finish_reason}],
            "usage": reply.usage,
        }))
        .into_response();
    }
    let include_usage = body["stream_options"]["include_usage"] == true;
    let mut chunks: VecDeque<Value> = reply
        .deltas
        .iter()
        .map(|d| chunk(&model, d.clone(), None))
        .collect();
    if !reply.cut {
        chunks.push_back(chunk(&model, json!({}), Some(reply.finish_reason)));
    }
    if include_usage && !reply.cut {
        if let Some(u) = &reply.usage {
            chunks.push_back(
                json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                                    "created": 1, "model": model, "choices": [], "usage": u}),
            );
        }
    }
    s.live.fetch_add(1, Ordering::SeqCst);
    let guard = StreamGuard {
        shared: s.clone(),
        done: false,
    };
    let cut = reply.cut;
    let state = (chunks, guard, reply.first_delay, reply.chunk_delay, true);
    let stream = futures::stream::unfold(
        state,
        move |(mut chunks, mut guard, first, every, is_first)| async move {
            if is_first {
                tokio::time::sleep(first).await;
            } else if !every.is_zero() {
                tokio::time::sleep(every).await;
            }
            let bytes = match chunks.pop_front() {
                Some(c) => Bytes::from(format!("data: {c}\n\n")),
                None if !guard.done && !cut => {
                    guard.done = true;
                    Bytes::from_static(b"data: [DONE]\n\n")
                }
                None => return None,
            };
            Some((
                Ok::<_, Infallible>(bytes),
                (chunks, guard, first, every, false),
            ))
        },
    );
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap()
}

fn chunk(model: &str, delta: Value, finish: Option<&str>) -> Value {
    json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1,
           "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
}

/// The text of the last message of a request.
pub fn last_text(body: &Value) -> String {
    let m = body["messages"].as_array().and_then(|m| m.last());
    match m.map(|m| &m["content"]) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// The script the SDK tests use, keyed on the conversation:
/// - last message from a tool → a final answer with `<think>` reasoning;
/// - tools offered and "weather" asked → a Hermes `<tool_call>` inside
///   `content` (as an upstream without a tool parser sends it);
/// - "native" asked with tools → a real `tool_calls` delta;
/// - "slow" → the first token only after `slow` (a long prefill);
/// - otherwise → text naming how many messages arrived.
pub fn agent_script(slow: Duration) -> Script {
    Arc::new(move |body: &Value| {
        let messages = body["messages"].as_array().map_or(0, Vec::len);
        let last_role = body["messages"]
            .as_array()
            .and_then(|m| m.last())
            .and_then(|m| m["role"].as_str())
            .unwrap_or("")
            .to_owned();
        let text = last_text(body);
        let has_tools = body["tools"].as_array().is_some_and(|t| !t.is_empty());
        if last_role == "tool" {
            return Reply::text(
                &format!("<think>The tool answered: {text}.</think>It is sunny in Oslo."),
                4,
            );
        }
        if has_tools && text.contains("native") {
            return Reply {
                deltas: vec![
                    json!({"tool_calls": [{"index": 0, "id": "call_native", "type": "function",
                                           "function": {"name": "get_weather", "arguments": ""}}]}),
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\": \"Oslo\","}}]}),
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": " \"days\": 2}"}}]}),
                ],
                finish_reason: "tool_calls",
                ..Reply::default()
            };
        }
        if has_tools && text.contains("twice") {
            return Reply::text(
                "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\", \"days\": 1}}\n</tool_call>\n\
                 <tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Bergen\", \"days\": 1}}\n</tool_call>",
                3,
            );
        }
        if has_tools && text.contains("weather") {
            return Reply::text(
                "<think>I need the weather tool.</think><tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\", \"days\": \"2\"}}\n</tool_call>",
                3,
            );
        }
        let mut reply = Reply::text(&format!("You sent {messages} messages."), 5);
        if text.contains("slow") {
            reply.first_delay = slow;
        }
        if text.contains("long") {
            reply = Reply::text(&"token ".repeat(200), 6);
            reply.chunk_delay = Duration::from_millis(5);
        }
        reply
    })
}
