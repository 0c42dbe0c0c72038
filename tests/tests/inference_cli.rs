//! `clawpen inference serve` wires its flags into the service.

use crate::local_common;

use std::process::Command;
use std::time::Duration;

use clawpen_api::Event;
use clawpen_tests::events::EventStream;
use clawpen_tests::{clawpen_bin, temp_home, Serve};

#[tokio::test(flavor = "multi_thread")]
async fn serve_takes_its_upstream_model_and_tool_format() {
    let mut serve = Serve::start([
        "--upstream",
        "http://127.0.0.1:9/v1",
        "--model",
        "tiny-model",
        "--tool-format",
        "hermes",
    ])
    .unwrap();
    let base = serve.base.clone();
    let models: serde_json::Value = reqwest::get(format!("{base}/models"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert!(ids.contains(&"tiny-model"), "{models}");
    // The upstream is down: a generation is a clean OpenAI-shaped 5xx, and
    // the service keeps serving.
    let resp = reqwest::Client::new()
        .post(format!("{base}/chat/completions"))
        .json(&serde_json::json!({"messages": [{"role": "user", "content": "hi"}]}))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_server_error(), "{}", resp.status());
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(body["error"]["message"].is_string(), "{body}");
    let health = reqwest::get(format!("{}/healthz", base.trim_end_matches("/v1")))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    serve.stop();
    assert!(
        serve.home.path().join("inference.db").exists(),
        "responses store not in the state dir"
    );
}

#[test]
fn unknown_tool_format_is_refused_with_exit_2() {
    let out = Command::new(clawpen_bin())
        .args(["inference", "serve", "--tool-format", "klingon"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("klingon"));
}

/// `clawpen up` relays every finished inference request onto its event
/// stream, for the console.
#[tokio::test(flavor = "multi_thread")]
async fn finished_requests_appear_on_the_supervisor_event_stream() {
    let home = temp_home();
    let up = clawpen_tests::Up::start(
        home.path(),
        &[
            "--no-demo",
            "--upstream",
            "http://127.0.0.1:9/v1",
            "--model",
            "relay-model",
        ],
    )
    .unwrap();
    let mut events = EventStream::open(&up).await.unwrap();
    // The upstream is down: the request fails, and is still recorded.
    let resp = reqwest::Client::new()
        .post(format!("{}/chat/completions", up.inference_url))
        .json(&serde_json::json!({
            "model": "relay-model",
            "prompt_cache_key": "session-1",
            "messages": [{"role": "user", "content": "hi"}]
        }))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_server_error());
    let event = events
        .wait_for("the inference record", Duration::from_secs(30), |e| {
            matches!(e, Event::Inference(_))
        })
        .await
        .unwrap();
    let Event::Inference(record) = event else {
        unreachable!()
    };
    assert_eq!(record.model, "relay-model");
    assert_eq!(record.session.as_deref(), Some("session-1"));
    assert_eq!(record.status, "failed");
    assert_eq!(record.client, "anonymous");
}

#[test]
fn a_route_to_an_engine_not_served_is_refused() {
    let home = temp_home();
    let out = Command::new(clawpen_bin())
        .args([
            "inference",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "http://127.0.0.1:9/v1",
            "--model",
            "/nowhere/m.gguf",
            "--route",
            "m=http://127.0.0.1:10/v1",
        ])
        .env("CLAWPEN_HOME", home.path())
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no such engine") && stderr.contains("http://127.0.0.1:9/v1"),
        "{stderr}"
    );
}

/// A conversation's second turn, after a first one, on a `serve` started with
/// `args`: the cached prompt tokens it reports.
async fn second_turn_cached_tokens(model: &std::path::Path, args: &[&str]) -> u64 {
    let serve = Serve::start(
        [std::ffi::OsStr::new("--model"), model.as_os_str()]
            .into_iter()
            .chain(args.iter().map(std::ffi::OsStr::new)),
    )
    .unwrap();
    let http = reqwest::Client::new();
    let chat = |messages: serde_json::Value| {
        let http = http.clone();
        let url = format!("{}/chat/completions", serve.base);
        async move {
            let resp = http
                .post(url)
                .json(&serde_json::json!({
                    "messages": messages,
                    "max_tokens": 4,
                    "temperature": 0,
                }))
                .timeout(Duration::from_secs(120))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            resp.json::<serde_json::Value>().await.unwrap()
        }
    };
    let first_user = serde_json::json!({"role": "user", "content": "the quick brown fox jumps over the lazy dog"});
    let first = chat(serde_json::json!([first_user])).await;
    let answer = first["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let second = chat(serde_json::json!([
        first_user,
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "and again"},
    ]))
    .await;
    second["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap_or_else(|| panic!("no cached_tokens in {second}"))
}

/// `--prefix-cache-mib` reaches each local model's prefix cache: by default a
/// second turn reuses the first turn's KV, with 0 it prefills everything.
#[tokio::test(flavor = "multi_thread")]
async fn prefix_cache_size_is_a_flag_and_zero_turns_it_off() {
    let models = tempfile::tempdir().unwrap();
    let model = local_common::TinyModel::new("llama").write(models.path(), "tiny");
    let cached = second_turn_cached_tokens(&model, &[]).await;
    assert!(cached > 0, "the default cache reused nothing");
    assert_eq!(
        second_turn_cached_tokens(&model, &["--prefix-cache-mib", "0"]).await,
        0,
        "a 0 MiB cache still reused tokens"
    );
    let out = Command::new(clawpen_bin())
        .args(["inference", "serve", "--prefix-cache-mib", "lots"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// `--temperature` and `--seed` set the local engine's sampling for requests
/// that leave it unset: with a seed, the same request gets the same answer;
/// with temperature 0, the greedy answer; a request's own setting wins.
#[tokio::test(flavor = "multi_thread")]
async fn sampling_defaults_are_flags() {
    let models = tempfile::tempdir().unwrap();
    let model = local_common::TinyModel::new("llama").write(models.path(), "tiny");
    let answer = |base: String, extra: serde_json::Value| async move {
        let mut body = serde_json::json!({
            "messages": [{"role": "user", "content": "tell me a story"}],
            "max_tokens": 24,
        });
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let resp = reqwest::Client::new()
            .post(format!("{base}/chat/completions"))
            .json(&body)
            .timeout(Duration::from_secs(120))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let v: serde_json::Value = resp.json().await.unwrap();
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let with = |flags: &[&str]| {
        Serve::start(
            [std::ffi::OsStr::new("--model"), model.as_os_str()]
                .into_iter()
                .chain(flags.iter().map(std::ffi::OsStr::new)),
        )
        .unwrap()
    };

    let seeded = with(&["--seed", "42"]);
    let first = answer(seeded.base.clone(), serde_json::json!({})).await;
    let again = answer(seeded.base.clone(), serde_json::json!({})).await;
    assert_eq!(first, again, "--seed 42 gave two answers to one request");
    drop(seeded);

    let greedy = with(&["--temperature", "0"]);
    let default = answer(greedy.base.clone(), serde_json::json!({})).await;
    let asked = answer(greedy.base.clone(), serde_json::json!({"temperature": 0})).await;
    assert_eq!(default, asked, "--temperature 0 is not greedy");
    let hot: Vec<String> = {
        let mut hot = Vec::new();
        for seed in 0..4 {
            let extra = serde_json::json!({"temperature": 1.5, "seed": seed});
            hot.push(answer(greedy.base.clone(), extra).await);
        }
        hot
    };
    assert!(
        hot.iter().any(|h| *h != default),
        "a request's own temperature did not win over --temperature 0"
    );
    drop(greedy);

    for bad in [
        &["--temperature", "hot"][..],
        &["--temperature", "-1"],
        &["--temperature", "NaN"],
        &["--seed", "-3"],
        &["--route", "no-engine-named"],
    ] {
        let out = Command::new(clawpen_bin())
            .args(["inference", "serve"])
            .args(bad)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?} was accepted");
    }
}
