//! Starts the real server on 127.0.0.1:0 and talks HTTP to it.

use std::path::Path;
use std::time::Duration;

use clawpen_inference::{serve, InferenceConfig, ModelLocations};
use serde_json::{json, Value};

fn gguf(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, b"GGUF\x03\x00\x00\x00").unwrap();
}

struct Server {
    base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), clawpen_inference::InferenceError>>,
}

async fn start(config: InferenceConfig) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, config, async move {
        let _ = stopped.await;
    }));
    Server {
        base,
        stop: Some(stop),
        task,
    }
}

impl Server {
    async fn shutdown(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("graceful shutdown")
            .unwrap()
            .unwrap();
    }
}

#[tokio::test]
async fn healthz_models_and_404() {
    let home = tempfile::tempdir().unwrap();
    gguf(&home.path().join(".lmstudio/models/pub/repo/m-Q4_K_M.gguf"));
    let extra = tempfile::tempdir().unwrap();
    gguf(&extra.path().join("mine.gguf"));
    std::fs::write(extra.path().join("fake.gguf"), b"nope").unwrap();
    let server = start(InferenceConfig {
        model_dirs: vec![extra.path().to_path_buf()],
        locations: ModelLocations::under_home(home.path()),
        ..InferenceConfig::default()
    })
    .await;
    let http = reqwest::Client::new();

    let r = http
        .get(format!("{}/healthz", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"status": "ok"}));

    let r = http
        .get(format!("{}/v1/models", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["object"], "list");
    let data = body["data"].as_array().unwrap();
    let ids: Vec<&str> = data.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["pub/repo/m-Q4_K_M.gguf", "mine.gguf"]);
    assert_eq!(data[0]["object"], "model");
    assert_eq!(data[0]["owned_by"], "lmstudio");
    assert_eq!(data[1]["owned_by"], "local");
    assert!(data[0]["created"].as_u64().unwrap() > 0);

    let r = http
        .get(format!("{}/v1/nope", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(body["error"]["param"], Value::Null);
    assert_eq!(body["error"]["code"], "unknown_url");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("/v1/nope"));

    let r = http
        .post(format!("{}/healthz", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");

    server.shutdown().await;
}

#[tokio::test]
async fn empty_locations_list_no_models() {
    let server = start(InferenceConfig {
        model_dirs: vec![],
        locations: ModelLocations::none(),
        ..InferenceConfig::default()
    })
    .await;
    let body: Value = reqwest::get(format!("{}/v1/models", server.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body, json!({"object": "list", "data": []}));
    server.shutdown().await;
}

/// One HTTP/1.1 exchange on a fresh connection to the guests' listener,
/// after `first_line` (the gateway's VM line, or a guest's forgery):
/// the status code, or `None` when the listener closed the connection.
async fn guest_exchange(
    addr: std::net::SocketAddr,
    first_line: &str,
    request: &str,
) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("{first_line}{request}").as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("an answer or a close")
        .ok()?;
    let text = String::from_utf8_lossy(&answer);
    text.split(' ').nth(1)?.parse().ok()
}

#[tokio::test]
async fn the_guests_listener_holds_each_vm_to_its_own_key_and_has_no_metrics() {
    use clawpen_inference::guest_link::preamble;
    let home = tempfile::tempdir().unwrap();
    let service = clawpen_inference::Inference::new(InferenceConfig {
        locations: ModelLocations::under_home(home.path()),
        ..InferenceConfig::default()
    })
    .unwrap();
    let keys = service.keys();
    keys.insert("key-of-vm-a", "vm-a");
    keys.insert("key-of-vm-b", "vm-b");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(service.for_guests().serve(listener, async move {
        let _ = stopped.await;
    }));
    let models = |key: &str| {
        format!(
            "GET /v1/models HTTP/1.1\r\nHost: inference\r\nAuthorization: Bearer {key}\r\n\
             Connection: close\r\n\r\n"
        )
    };
    // its own key, on its own VM's connection
    assert_eq!(
        guest_exchange(addr, &preamble("vm-a"), &models("key-of-vm-a")).await,
        Some(200)
    );
    // another VM's key
    assert_eq!(
        guest_exchange(addr, &preamble("vm-a"), &models("key-of-vm-b")).await,
        Some(401)
    );
    // no metrics for guests (they name every VM)
    let metrics = "GET /metrics HTTP/1.1\r\nHost: inference\r\nConnection: close\r\n\r\n";
    assert_eq!(
        guest_exchange(addr, &preamble("vm-a"), metrics).await,
        Some(404)
    );
    // no VM line (a local process, or a guest's own forgery after it): closed
    assert_eq!(guest_exchange(addr, "", &models("key-of-vm-a")).await, None);
    assert_eq!(
        guest_exchange(
            addr,
            &format!("{}{}", preamble("vm-b"), preamble("vm-a")),
            &models("key-of-vm-a")
        )
        .await,
        Some(400),
        "a second VM line is no header: the request is malformed"
    );
    stop.send(()).unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
}
