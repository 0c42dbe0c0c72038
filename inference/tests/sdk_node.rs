//! The official `openai` Node SDK against clawpen, through an undici Agent
//! whose headers/body timeouts (2 s) are shorter than the upstream's
//! prefill (5 s): the requests succeed only thanks to headers-at-once and
//! keep-alives, while the same request straight to the upstream times out.
//!
//! Needs `node` (≥ 20) and `npm ci` run in `tests/clients/node`; fails
//! with that instruction when missing.

use crate::common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::upstream::{agent_script, FakeUpstream};
use common::{config, start};
use serde_json::{json, Value};

fn node_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/clients/node")
}

fn run_node(script: &str, args: &[&str]) -> Value {
    let dir = node_dir();
    let node_ok = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(node_ok, "this test needs `node` (>= 20) on PATH");
    assert!(
        dir.join("node_modules/openai").is_dir() && dir.join("node_modules/undici").is_dir(),
        "this test needs the Node clients installed: run `npm ci` in {}",
        dir.display()
    );
    let out = Command::new("node")
        .current_dir(&dir)
        .arg(script)
        .args(args)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{script} failed:\n{stderr}\n{stdout}");
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{script} printed no JSON ({e}):\n{stdout}\n{stderr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_openai_sdk_survives_long_prefill_with_short_undici_timeouts() {
    let up = FakeUpstream::start(&["qwen3-test"], agent_script(Duration::from_secs(5))).await;
    let mut cfg = config(&up.url);
    cfg.keepalive_interval = Duration::from_millis(500);
    cfg.api_keys = [("sk-node".to_owned(), "node-client".to_owned())].into();
    let svc = start(cfg).await;
    let (base, upstream) = (svc.base.clone(), up.url.clone());
    let r = tokio::task::spawn_blocking(move || {
        run_node(
            "openai_sdk.mjs",
            &[&base, "sk-node", "qwen3-test", &upstream],
        )
    })
    .await
    .unwrap();

    assert_eq!(r["slow_stream"]["text"], "You sent 1 messages.");
    assert!(r["slow_stream"]["ms"].as_u64().unwrap() >= 5000, "{r}");
    let types = r["slow_stream"]["types"].as_array().unwrap();
    let progress = types
        .iter()
        .filter(|t| *t == "response.in_progress")
        .count();
    assert!(progress >= 5, "keep-alive events: {progress}");
    assert_eq!(types.last().unwrap(), "response.completed");
    assert_eq!(r["slow_chat"], "You sent 1 messages.");
    assert_eq!(r["slow_whole"], "You sent 1 messages.");
    let direct = r["direct"].as_str().unwrap();
    eprintln!("direct upstream call: {direct}");
    assert!(
        direct.contains("UND_ERR") || direct.to_lowercase().contains("timeout"),
        "direct call should time out: {direct}"
    );

    assert_eq!(
        r["tool_call"],
        json!({"name": "get_weather", "arguments": {"city": "Oslo", "days": 2}})
    );
    assert!(r["tool_stream_types"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t == "response.function_call_arguments.done"));
    assert_eq!(r["loop_text"], "It is sunny in Oslo.");
    // user, assistant (tool call), tool, assistant, user.
    assert_eq!(r["chained_text"], "You sent 5 messages.");
    assert_eq!(
        r["chat_call"]["arguments"],
        json!({"city": "Oslo", "days": 2})
    );
    assert_eq!(r["chat_reasoning"], "I need the weather tool.");
    svc.idle().await;
    svc.shutdown().await;
}
