//! The two machines of the design, as two real processes on loopback: an
//! inference host (`clawpen inference serve --model tiny.gguf --api-key`)
//! and a VM host (`clawpen up --inference-url --inference-key`) whose demo
//! guest asks the remote model through its gateway with its own key.

use crate::local_common;

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use clawpen_api::{Event, InferenceAccess};
use clawpen_tests::events::EventStream;
use clawpen_tests::serial::Serial;
use clawpen_tests::{clawpen_bin, temp_home, test_images_dir, Serve, Up};

const BOOT: Duration = Duration::from_secs(180);
const ANSWER: Duration = Duration::from_secs(120);
const REMOTE_KEY: &str = "sk-inference-host-test";
/// What the remote's scripted model says; never typed into the guest, so
/// finding it in the serial log means the remote answered.
const REMOTE_TEXT: &str = "Greetings from the inference host.";

/// `clawpen inference serve` with a scripted tiny model and [`REMOTE_KEY`].
struct InferenceHost {
    _serve: Serve,
    /// `http://127.0.0.1:PORT` (no `/v1`: what a user would type).
    url: String,
    _models: tempfile::TempDir,
}

impl InferenceHost {
    fn start() -> Self {
        let models = tempfile::tempdir().unwrap();
        let model = local_common::TinyModel::scripted("llama", &[REMOTE_TEXT, "<|im_end|>"])
            .write(models.path(), "tiny");
        let serve = Serve::start([
            OsStr::new("--model"),
            model.as_os_str(),
            OsStr::new("--api-key"),
            OsStr::new(REMOTE_KEY),
        ])
        .unwrap();
        let url = serve.base.strip_suffix("/v1").unwrap().to_owned();
        Self {
            _serve: serve,
            url,
            _models: models,
        }
    }

    async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

fn up_with(home: &Path, url: &str, key: &str) -> std::process::Output {
    Command::new(clawpen_bin())
        .args([
            "up",
            "--listen",
            "127.0.0.1:0",
            "--inference-listen",
            "127.0.0.1:0",
            "--no-demo",
            "--inference-url",
            url,
            "--inference-key",
            key,
        ])
        .env("CLAWPEN_HOME", home)
        .env("CLAWPEN_IMAGES", test_images_dir())
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_is_answered_by_the_remote_and_recorded_under_its_vm() {
    let host = InferenceHost::start();
    let home = temp_home();
    let up = Up::start(
        home.path(),
        &["--inference-url", &host.url, "--inference-key", REMOTE_KEY],
    )
    .unwrap();
    assert!(
        up.startup
            .iter()
            .any(|l| l.contains(&format!("{}/v1 (remote)", host.url))),
        "{:?}",
        up.startup
    );
    up.wait_state("demo", "Running", BOOT).await.unwrap();
    let access: InferenceAccess = up.get_json("/vms/demo/inference").await.unwrap();
    assert_eq!(access.base_url, "http://10.200.0.1/v1");
    let base = &access.base_url;
    let mut serial = Serial::connect(&up.vm_dir("demo")).unwrap();

    // The guest listener still wants this VM's key: another one, or the
    // remote's own, is refused.
    for key in ["sk-clawpen-wrong", REMOTE_KEY] {
        let status = serial
            .exit_status(
                &format!(
                    "timeout 20 wget -q -O - --header 'Authorization: Bearer {key}' {base}/models"
                ),
                ANSWER,
            )
            .unwrap();
        assert_eq!(status, 1, "a guest with key {key} was not refused");
    }

    // With its key, the remote model answers, and the record names the VM.
    let mut events = EventStream::open(&up).await.unwrap();
    let auth = format!("--header 'Authorization: Bearer {}'", access.api_key);
    let body = r#"{"model":"tiny","max_tokens":200,"temperature":0,"prompt_cache_key":"remote-session","messages":[{"role":"user","content":"hi"}]}"#;
    let out = serial
        .run(
            &format!(
                "timeout 90 wget -q -O - {auth} --header 'Content-Type: application/json' \
                 --post-data '{body}' {base}/chat/completions; echo posted=$?"
            ),
            ANSWER,
        )
        .unwrap();
    assert!(out.contains(REMOTE_TEXT), "{out}");
    assert!(out.contains("posted=0"), "{out}");
    let event = events
        .wait_for(
            "the guest's request",
            ANSWER,
            |e| matches!(e, Event::Inference(r) if r.session.as_deref() == Some("remote-session")),
        )
        .await
        .unwrap();
    let Event::Inference(record) = event else {
        unreachable!()
    };
    assert_eq!(record.client, "demo");
    assert_eq!(record.status, "completed");
    assert!(
        record.output_text.contains(REMOTE_TEXT),
        "{}",
        record.output_text
    );
    // The remote saw it as the VM host relaying for `demo`, so it queues
    // and caches per VM as well.
    let metrics = host.metrics().await;
    assert!(
        metrics.contains(r#"clawpen_inference_requests_total{client="vm-host/demo",endpoint="chat_completions",status="completed"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_or_refusing_remote_stops_up_at_start() {
    let home = temp_home();
    // a port nothing listens on
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = up_with(home.path(), &format!("http://127.0.0.1:{port}"), "k");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "cannot reach the inference service at http://127.0.0.1:{port}/v1"
        )),
        "{stderr}"
    );
    assert!(
        !home.path().join("supervisor.url").exists(),
        "a supervisor was started"
    );

    let host = InferenceHost::start();
    let out = up_with(home.path(), &host.url, "sk-not-the-key");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("answered 401"), "{stderr}");

    let out = up_with(home.path(), "mac.local:7080", "k");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--inference-url"));
}
