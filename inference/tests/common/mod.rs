//! Shared by the integration tests: the service on 127.0.0.1:0 and SSE reading.

#![allow(dead_code)]

pub mod clients;
pub mod llama;
pub mod upstream;

use std::sync::Arc;
use std::time::Duration;

use clawpen_inference::{Inference, InferenceConfig, Metrics, ModelLocations};
use futures::StreamExt;
use serde_json::Value;

/// A running inference service.
pub struct Svc {
    /// `http://127.0.0.1:PORT`
    pub base: String,
    pub metrics: Arc<Metrics>,
    pub inference: Inference,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), clawpen_inference::InferenceError>>,
}

/// A config proxying `upstream`, fast keep-alives, no model folders.
pub fn config(upstream: &str) -> InferenceConfig {
    InferenceConfig {
        locations: ModelLocations::none(),
        upstreams: vec![upstream.to_owned()],
        keepalive_interval: Duration::from_millis(300),
        ..InferenceConfig::default()
    }
}

pub async fn start(config: InferenceConfig) -> Svc {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let inference = Inference::new(config).unwrap();
    let metrics = inference.metrics();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(inference.clone().serve(listener, async move {
        let _ = stopped.await;
    }));
    Svc {
        base,
        metrics,
        inference,
        stop: Some(stop),
        task,
    }
}

impl Svc {
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(15), &mut self.task)
            .await
            .expect("shutdown in time")
            .unwrap()
            .unwrap();
    }

    /// The `/metrics` page, as a scraper reads it.
    pub async fn metrics_text(&self) -> String {
        reqwest::get(format!("{}/metrics", self.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Waits (up to 5 s) for the live-generations gauge to reach 0.
    pub async fn idle(&self) {
        for _ in 0..500 {
            if self.metrics.live_generations() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "live generations stuck at {}",
            self.metrics.live_generations()
        );
    }
}

/// One SSE frame: its `event:` name (if any), its data, or a comment.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Comment(String),
    Data { event: Option<String>, data: String },
}

impl Frame {
    pub fn json(&self) -> Option<Value> {
        match self {
            Frame::Data { data, .. } => serde_json::from_str(data).ok(),
            Frame::Comment(_) => None,
        }
    }
}

/// Waits (up to 10 s) until `cond` holds; fails the test naming `what`
/// otherwise.
pub async fn eventually(cond: impl Fn() -> bool, what: &str) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting: {what}");
}

/// Splits a whole SSE body into frames.
pub fn frames(body: &str) -> Vec<Frame> {
    let mut out = Vec::new();
    for block in body.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let mut event = None;
        let mut data = Vec::new();
        for line in block.lines() {
            if let Some(c) = line.strip_prefix(':') {
                out.push(Frame::Comment(c.trim().to_owned()));
            } else if let Some(e) = line.strip_prefix("event: ") {
                event = Some(e.to_owned());
            } else if let Some(d) = line.strip_prefix("data: ") {
                data.push(d.to_owned());
            }
        }
        if !data.is_empty() {
            out.push(Frame::Data {
                event,
                data: data.join("\n"),
            });
        }
    }
    out
}

/// Reads a streamed body to its end.
pub async fn read_all(resp: reqwest::Response) -> String {
    let mut body = Vec::new();
    let mut s = resp.bytes_stream();
    while let Some(chunk) = s.next().await {
        body.extend_from_slice(&chunk.unwrap());
    }
    String::from_utf8(body).unwrap()
}

/// Asserts a stream's last frame is the literal `[DONE]` (Chat
/// Completions' sentinel, Open Responses' terminal event).
pub fn assert_ends_with_done(frames: &[Frame]) {
    assert_eq!(
        frames.last(),
        Some(&Frame::Data {
            event: None,
            data: "[DONE]".into()
        }),
        "the terminal event is [DONE]"
    );
}

/// Reads a streamed Responses answer to its end, asserting Open Responses'
/// streaming framing: `Content-Type: text/event-stream`; `\n` line ends;
/// every event one `event:` line naming the `type` of its one `data:` line
/// of JSON; numbered in turn; the literal `[DONE]` last. The events, in
/// order.
pub async fn responses_sse(r: reqwest::Response) -> Vec<Value> {
    let content_type = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = read_all(r).await;
    assert_eq!(content_type.as_deref(), Some("text/event-stream"), "{body}");
    assert!(!body.contains('\r'), "line ends are \\n only: {body:?}");
    let fr = frames(&body);
    assert_ends_with_done(&fr);
    let mut events = Vec::new();
    for f in &fr[..fr.len() - 1] {
        let Frame::Data { event, data } = f else {
            panic!("only events before [DONE] on a Responses stream: {f:?}");
        };
        assert!(!data.contains('\n'), "one data line per event: {data}");
        let v: Value = serde_json::from_str(data).unwrap();
        assert_eq!(event.as_deref(), v["type"].as_str(), "{data}");
        events.push(v);
    }
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["sequence_number"], i as u64, "{e}");
    }
    events
}

/// The JSON data of every frame.
pub fn events(body: &str) -> Vec<Value> {
    frames(body).iter().filter_map(Frame::json).collect()
}
