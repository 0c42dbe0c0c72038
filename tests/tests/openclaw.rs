//! The OpenClaw guest end to end, through the supervisor: `clawpen image
//! build openclaw`, a VM made from it with `clawpen up` serving a tiny local
//! model, and then what a user relies on:
//! - its gateway answers `/health` on the host only through the supervisor's
//!   forward;
//! - OpenClaw inside the VM (its own CLI, one `agent exec` turn) reaches the
//!   host's inference service with this VM's key (the record names the VM),
//!   and runs a tool loop: the model's Hermes call to `read` comes out as a
//!   call, OpenClaw reads the file in the guest, the next request of the
//!   same session carries its content and reuses the first one's prefix,
//!   and the agent's reply is the model's answer; the console (in
//!   Chromium) shows both requests as one session with the call and the
//!   tool's result;
//! - a name not in the VM's rules is denied and logged;
//! - trashing the OpenClaw install, then a reset, gives a working gateway.
//!
//! Slow by nature (the image build downloads Debian and npm packages; the
//! gateway's first start under TCG takes minutes): the image is cached in
//! `target/clawpen-test-images` and the limits are generous.

use crate::local_common;

use std::process::Command;
use std::time::{Duration, Instant};

use clawpen_api::{Event, ForwardInfo};
use clawpen_tests::browser::{build_console_assets, Browser};
use clawpen_tests::events::EventStream;
use clawpen_tests::serial::Serial;
use clawpen_tests::{clawpen_bin, temp_home, test_images_dir, Up};
use serde_json::json;

const BOOT: Duration = Duration::from_secs(25 * 60);
const AGENT_TURN: Duration = Duration::from_secs(15 * 60);
const GATEWAY_PORT: u16 = 18789;
/// What the scripted model asks OpenClaw's `read` tool for (relative to
/// the agent's directory, `/root` here), and what it answers once it has
/// the file.
const READ_ARGS: &str = r#"{"path": "proof.txt"}"#;
const ANSWER: &str = "The file says what the guest wrote.";
/// The file's content: only the guest's disk has it.
const MARKER: &str = "written-in-the-guest-5e1c";

async fn health(addr: &str) -> Option<String> {
    let resp = reqwest::Client::new()
        .get(format!("http://{addr}/health"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()?;
    resp.status().is_success().then_some(())?;
    resp.text().await.ok()
}

async fn wait_healthy(addr: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(body) = health(addr).await {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "no /health from {addr} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The next inference record of the VM `agent` that `pred` accepts.
async fn agent_record(
    events: &mut EventStream,
    what: &str,
    turn: &str,
    pred: impl Fn(&clawpen_api::InferenceRecord) -> bool,
) -> clawpen_api::InferenceRecord {
    let event = events
        .wait_for(
            what,
            Duration::from_secs(60),
            |e| matches!(e, Event::Inference(r) if r.client == "agent" && pred(r)),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}; the agent printed: {turn}"));
    let Event::Inference(record) = event else {
        unreachable!()
    };
    *record
}

#[tokio::test(flavor = "multi_thread")]
async fn openclaw_thinks_with_the_host_model_and_a_reset_brings_it_back() {
    build_console_assets();
    let build = Command::new(clawpen_bin())
        .args(["image", "build", "openclaw", "--images"])
        .arg(test_images_dir())
        .status()
        .unwrap();
    assert!(build.success(), "image build: {build:?}");

    let models = tempfile::tempdir().unwrap();
    // A scripted model for one tool loop (see `TinyModel::tool_loop`). The
    // guest's OpenClaw learns the context window from the GGUF, and refuses
    // models under 4,000 tokens: declare an agent-sized one (the scripted
    // model has no layers, so any length costs nothing).
    let model = local_common::TinyModel::tool_loop("llama", "read", READ_ARGS, ANSWER)
        .set(
            "llama.context_length",
            candle_core::quantized::gguf_file::Value::U32(32_768),
        )
        .write(models.path(), "tiny");
    let home = temp_home();
    let up = Up::start(
        home.path(),
        // Greedy: OpenClaw sends no temperature, and the script is the
        // model's most likely path, not a sure one at 0.8.
        &[
            "--no-demo",
            "--model",
            model.to_str().unwrap(),
            "--temperature",
            "0",
        ],
    )
    .unwrap();
    let (status, body) = up
        .post(
            "/vms",
            json!({"name": "agent", "image": "openclaw", "cpus": 2, "memory_mib": 2048}),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    let started = Instant::now();
    let start = up.request(reqwest::Method::POST, "/vms/agent/start");
    tokio::spawn(async move {
        let _ = start.send().await;
    });
    up.wait_state("agent", "Running", BOOT).await.unwrap();
    eprintln!(
        "boot to gateway-healthy: {:.0} s",
        started.elapsed().as_secs_f64()
    );

    // The gateway, from the host, only through the supervisor's forward.
    let forwards: Vec<ForwardInfo> = up.get_json("/vms/agent/forwards").await.unwrap();
    let gateway = forwards
        .iter()
        .find(|f| f.guest_port == GATEWAY_PORT)
        .unwrap_or_else(|| panic!("no forward to the gateway: {forwards:?}"))
        .host_addr
        .clone();
    assert!(gateway.starts_with("127.0.0.2:"), "{gateway}");
    let body = wait_healthy(&gateway, Duration::from_secs(60)).await;
    assert!(body.contains("\"ok\":true"), "{body}");

    // Default egress: only the inference service. Anything else is denied
    // (NXDOMAIN) and logged.
    let mut serial = Serial::connect(&up.vm_dir("agent")).unwrap();
    serial
        .run(
            "timeout 20 bash -c 'exec 3<>/dev/tcp/example.com/443' 2>/dev/null; echo net=$?",
            Duration::from_secs(60),
        )
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log: Vec<clawpen_api::EgressLogEntry> =
            up.get_json("/vms/agent/egress/log").await.unwrap();
        if let Some(e) = log
            .iter()
            .find(|e| e.name.as_deref() == Some("example.com"))
        {
            assert_eq!(e.decision.as_str(), "deny", "{e:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "example.com not logged: {log:#?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // One agent turn with OpenClaw's own CLI, a tool loop: the requests
    // reach the host's inference service with this VM's key.
    serial
        .run(
            &format!("echo {MARKER} > /root/proof.txt; echo written"),
            Duration::from_secs(60),
        )
        .unwrap();
    let mut events = EventStream::open(&up).await.unwrap();
    let turn = serial
        .run(
            "cd /root && timeout 840 openclaw agent exec 'What does proof.txt say?' --json \
             > /tmp/turn.json 2>&1; echo turn=$?; tail -c 1500 /tmp/turn.json",
            AGENT_TURN,
        )
        .unwrap();
    let call = agent_record(&mut events, "the request that called read", &turn, |r| {
        r.calls.iter().any(|c| c.name == "read")
    })
    .await;
    assert_eq!(call.endpoint, "responses", "{call:?}");
    assert_eq!(call.model, "tiny", "{call:?}");
    let answered = agent_record(&mut events, "the request with read's output", &turn, |r| {
        r.tool_results.iter().any(|t| t.output.contains(MARKER))
    })
    .await;
    assert!(answered.output_text.contains(ANSWER), "{answered:?}");
    assert!(
        call.session.is_some() && answered.session == call.session,
        "one session: {:?} then {:?}",
        call.session,
        answered.session
    );
    assert!(
        answered.cached_tokens * 2 > answered.prompt_tokens,
        "the second request reused {} of {} prompt tokens",
        answered.cached_tokens,
        answered.prompt_tokens
    );
    assert!(turn.contains(ANSWER), "the agent's reply: {turn}");

    // The console shows the turn as one session of the VM, with the call
    // and what the tool gave back (in Chromium, as a user sees it).
    let session = format!(
        "section.sessions[data-vm=agent] .session[data-session=\"{}\"]",
        call.session.as_deref().unwrap_or_default()
    );
    let browser = Browser::launch().await.unwrap();
    browser.client.goto(&up.login_url()).await.unwrap();
    browser
        .wait_for(
            &format!("{session} .tool-call[data-name=read]"),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let turns: usize = browser
        .attr(&session, "data-turns")
        .await
        .and_then(|n| n.parse().ok())
        .unwrap_or_default();
    assert!(turns >= 2, "{turns} turns in the console's session");
    let result = browser
        .text(&format!("{session} .tool-result"))
        .await
        .unwrap_or_default();
    assert!(result.contains(MARKER), "the tool result shown: {result}");
    browser.close().await;

    // Trash the install: the gateway is gone for good.
    serial
        .run(
            "rm -rf /usr/local/lib/node_modules/openclaw /usr/local/bin/openclaw; \
             pidof node | xargs -r kill -9; sleep 5; echo trashed",
            Duration::from_secs(120),
        )
        .unwrap();
    assert!(
        health(&gateway).await.is_none(),
        "the gateway survived its removal"
    );
    // A reset brings back the clean snapshot: a working gateway.
    let reset = Instant::now();
    let (status, body) = up.post("/vms/agent/reset", json!({})).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let body = wait_healthy(&gateway, Duration::from_secs(300)).await;
    assert!(body.contains("\"ok\":true"), "{body}");
    eprintln!(
        "warm reset to gateway-healthy: {:.1} s",
        reset.elapsed().as_secs_f64()
    );
}
