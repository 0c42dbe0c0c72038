//! One front door for all of a user's model servers: `inference serve` in
//! front of two real llama.cpp servers (from PyPI's `llama-cpp-python`, each
//! serving its own model) and a local GGUF. A request's `model` picks its
//! engine; `/v1/models` lists every model with the engine serving it; an
//! upstream that dies makes its model a 503 naming it while the others go
//! on, and its model is back once it answers again.

use std::time::{Duration, Instant};

use clawpen_inference::{InferenceConfig, ModelLocations};
use serde_json::{json, Value};

use crate::common;
use crate::common::llama::LlamaServer;
use crate::local_common::TinyModel;

/// Chat with `model`: the status and the body.
async fn ask(base: &str, model: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({
            "model": model,
            "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 2, "temperature": 0,
        }))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The models `/v1/models` lists, each with the engine serving it.
async fn listed(base: &str) -> Vec<(String, String)> {
    let v: Value = reqwest::get(format!("{base}/v1/models"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut out: Vec<(String, String)> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap().to_owned(),
                m["served_by"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Asks `model` until `done` accepts the answer (the health checks run
/// every few seconds), for at most 30 s.
async fn until(base: &str, model: &str, what: &str, done: impl Fn(u16, &Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = ask(base, model).await;
        if done(status, &body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{what}: {status} {body}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_door_routes_by_model_and_a_dead_upstream_is_503_until_it_returns() {
    let (mac, mut colleague) = tokio::task::spawn_blocking(|| {
        (
            LlamaServer::start_as("mac-model"),
            LlamaServer::start_as("colleague-model"),
        )
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let local = TinyModel::new("qwen2").write(dir.path(), "tiny-qwen2");
    let svc = common::start(InferenceConfig {
        locations: ModelLocations::none(),
        upstreams: vec![mac.url.clone(), colleague.url.clone()],
        local_models: vec![local],
        keepalive_interval: Duration::from_millis(300),
        ..InferenceConfig::default()
    })
    .await;
    svc.inference.check_engines().await.unwrap();
    let mut feed = svc.metrics.subscribe();

    assert_eq!(
        listed(&svc.base).await,
        [
            ("colleague-model".to_owned(), colleague.url.clone()),
            ("mac-model".to_owned(), mac.url.clone()),
            ("tiny-qwen2".to_owned(), "local".to_owned()),
        ]
    );
    for (model, engine) in [
        ("mac-model", mac.url.as_str()),
        ("colleague-model", colleague.url.as_str()),
        ("tiny-qwen2", "local"),
    ] {
        let (status, body) = ask(&svc.base, model).await;
        assert_eq!(status, 200, "{model}: {body}");
        assert_eq!(body["model"], model, "{body}");
        let record = feed.recv().await.unwrap();
        assert_eq!(
            (record.model.as_str(), record.engine.as_str()),
            (model, engine)
        );
    }
    let (status, body) = ask(&svc.base, "nobody-serves-this").await;
    assert_eq!(status, 404, "{body}");

    // The colleague's server goes away mid-run.
    colleague.stop();
    let gone = until(
        &svc.base,
        "colleague-model",
        "a 503 for the dead upstream",
        |s, _| s == 503,
    )
    .await;
    let message = gone["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(&colleague.url), "{gone}");
    for model in ["mac-model", "tiny-qwen2"] {
        let (status, body) = ask(&svc.base, model).await;
        assert_eq!(status, 200, "{model} while the other is down: {body}");
    }
    let models: Vec<String> = listed(&svc.base).await.into_iter().map(|m| m.0).collect();
    assert_eq!(models, ["mac-model", "tiny-qwen2"]);

    // Back when it answers again.
    let colleague = tokio::task::spawn_blocking(move || {
        colleague.restart();
        colleague
    })
    .await
    .unwrap();
    until(&svc.base, "colleague-model", "the upstream back", |s, _| {
        s == 200
    })
    .await;
    assert_eq!(listed(&svc.base).await.len(), 3);
    svc.shutdown().await;
    drop((mac, colleague));
}
