//! The local (candle) engine end to end: tiny GGUF files written here are
//! loaded by the real loader and generate through the real HTTP API.

use crate::common;
use crate::local_common;

use std::time::Duration;

use candle_core::quantized::gguf_file::{Content as Gguf, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Device;
use clawpen_inference::engine::local::tokenizer::TextTokenizer;
use clawpen_inference::engine::local::{gguf, LocalEngine, LocalOptions, CHANNEL_DEPTH};
use clawpen_inference::engine::{
    ChatMessage, Content, Engine, EngineEvent, EngineStream, FinishReason, GenerateRequest, Role,
};
use clawpen_inference::{Family, InferenceConfig};
use futures::{FutureExt, StreamExt};
use local_common::{config, limit_threads, TinyModel};
use serde_json::{json, Value as Json};

/// A model's facts come from its header: the context length it declares,
/// and reasoning when its template opens the family's reasoning tag.
#[test]
fn facts_of_a_model_come_from_its_header() {
    let dir = tempfile::tempdir().unwrap();
    let plain = TinyModel::new("qwen2").write(dir.path(), "plain");
    let facts = gguf::facts(&plain).unwrap();
    assert_eq!(facts.context_length, local_common::CONTEXT as usize);
    assert!(!facts.reasoning, "a ChatML template without <think>");

    let thinking = TinyModel::new("qwen3")
        .set("qwen3.context_length", Value::U32(4096))
        .set(
            "tokenizer.chat_template",
            Value::String(
                "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n\
                 {% endfor %}<|im_start|>assistant\n<think>\n"
                    .into(),
            ),
        )
        .write(dir.path(), "thinking");
    let facts = gguf::facts(&thinking).unwrap();
    assert_eq!(facts.context_length, 4096);
    assert!(facts.reasoning);

    // Bad headers are errors naming the file, as when loading.
    let bytes = std::fs::read(&plain).unwrap();
    let corrupt = dir.path().join("corrupt.gguf");
    std::fs::write(&corrupt, [b"NOPE", &bytes[4..]].concat()).unwrap();
    let wrong_arch = TinyModel::new("qwen2")
        .set("general.architecture", Value::String("mamba".into()))
        .write(dir.path(), "wrong-arch");
    let zero_align = TinyModel::new("llama")
        .set("general.alignment", Value::U32(0))
        .write(dir.path(), "zero-align");
    for path in [&corrupt, &wrong_arch, &zero_align] {
        let error = gguf::facts(path).map(|_| ()).unwrap_err().to_string();
        assert!(error.contains(&path.display().to_string()), "{error}");
    }
}

/// Bad files next to good ones: corrupt header, truncated weights, an
/// unsupported architecture, and `general.alignment = 0` (which would
/// make a naive reader divide by zero).
fn bad_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let good = TinyModel::new("qwen2").write(dir, "tmp-good");
    let bytes = std::fs::read(&good).unwrap();
    std::fs::remove_file(&good).unwrap();

    let corrupt = dir.join("corrupt.gguf");
    let mut c = bytes.clone();
    c[..4].copy_from_slice(b"NOPE");
    std::fs::write(&corrupt, c).unwrap();

    let truncated = dir.join("truncated.gguf");
    std::fs::write(&truncated, &bytes[..bytes.len() - 1000]).unwrap();

    let wrong_arch = TinyModel::new("qwen2")
        .set("general.architecture", Value::String("mamba".into()))
        .write(dir, "wrong-arch");
    let zero_align = TinyModel::new("llama")
        .set("general.alignment", Value::U32(0))
        .write(dir, "zero-align");
    // A tensor the model loads, with no values: candle would view its empty
    // buffer through a misaligned pointer (an abort in this debug build).
    let mut no_values = TinyModel::new("llama");
    for (name, t) in &mut no_values.tensors {
        if name == "output_norm.weight" {
            let empty = candle_core::Tensor::zeros(0, candle_core::DType::F32, &Device::Cpu);
            *t = QTensor::quantize(&empty.unwrap(), GgmlDType::F32).unwrap();
        }
    }
    let no_values = no_values.write(dir, "no-values");
    // Dimensions whose product does not fit a usize (2^33 × 2^33): the
    // tensor info's two u64 dimensions follow its name and a u32 count.
    let huge_dims = dir.join("huge-dims.gguf");
    let mut h = bytes.clone();
    let name = b"token_embd.weight";
    let at = h.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    assert_eq!(h[at..at + 4], 2u32.to_le_bytes(), "a matrix");
    h[at + 4..at + 12].copy_from_slice(&(1u64 << 33).to_le_bytes());
    h[at + 12..at + 20].copy_from_slice(&(1u64 << 33).to_le_bytes());
    std::fs::write(&huge_dims, h).unwrap();
    vec![
        corrupt, truncated, wrong_arch, zero_align, no_values, huge_dims,
    ]
}

#[test]
fn tokenizer_from_gguf_metadata_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = TinyModel::new("qwen2").write(dir.path(), "tiny");
    let mut f = std::fs::File::open(&path).unwrap();
    let content = Gguf::read(&mut f).unwrap();
    let tok = TextTokenizer::from_metadata(&content.metadata).unwrap();

    let text = "the weather in paris, héllo wörld 42!\n";
    let ids = tok.encode(text).unwrap();
    // Merges were learnt: fewer tokens than bytes.
    assert!(ids.len() < text.len(), "{ids:?}");
    let bytes: Vec<u8> = ids.iter().flat_map(|i| tok.piece(*i).to_vec()).collect();
    assert_eq!(String::from_utf8(bytes).unwrap(), text);

    // Special tokens in a rendered prompt are single tokens.
    let ids = tok.encode("<|im_start|>user\nhi<|im_end|>").unwrap();
    assert_eq!(tok.piece(ids[0]), b"<|im_start|>");
    assert!(tok.ends_generation(*ids.last().unwrap()));
    assert_eq!(tok.eos_token(), "<|im_end|>");
}

#[test]
fn bad_files_are_clear_errors() {
    limit_threads();
    let dir = tempfile::tempdir().unwrap();
    let files = bad_files(dir.path());
    let errors: Vec<String> = files
        .iter()
        .map(|p| gguf::load(p, &Device::Cpu).unwrap_err().to_string())
        .collect();
    for (p, e) in files.iter().zip(&errors) {
        assert!(e.contains(&p.display().to_string()), "names the file: {e}");
    }
    assert!(errors[0].contains("not a readable GGUF"), "{}", errors[0]);
    assert!(errors[1].contains("not a readable GGUF"), "{}", errors[1]);
    assert!(
        errors[2].contains(
            "'mamba' is not supported (supported: llama, qwen2, qwen3, qwen3moe, gemma3, gpt-oss)"
        ),
        "{}",
        errors[2]
    );
    assert!(
        errors[3].contains("metadata general.alignment: 0 (tensor data cannot be aligned"),
        "{}",
        errors[3]
    );
    assert!(
        errors[4].contains("tensor output_norm.weight has 0 values, not whole blocks"),
        "{}",
        errors[4]
    );
    assert!(
        errors[5]
            .contains("tensor token_embd.weight has dimensions [8589934592, 8589934592] too large"),
        "{}",
        errors[5]
    );
    let missing = gguf::load(&dir.path().join("absent.gguf"), &Device::Cpu).unwrap_err();
    assert!(missing.to_string().contains("cannot open"), "{missing}");
}

#[tokio::test]
async fn engine_loads_both_architectures_and_reports_failures() {
    limit_threads();
    let dir = tempfile::tempdir().unwrap();
    let mut paths = vec![
        TinyModel::new("qwen2").write(dir.path(), "tiny-qwen2"),
        TinyModel::new("llama").write(dir.path(), "tiny-llama"),
        TinyModel::with_dtype("qwen2", GgmlDType::Q8_0).write(dir.path(), "tiny-q8"),
        TinyModel::with_dtype("llama", GgmlDType::Q4_0).write(dir.path(), "tiny-q4"),
    ];
    paths.extend(bad_files(dir.path()));
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = events.clone();
    let engine = LocalEngine::start(
        &paths,
        LocalOptions {
            on_load: Some(std::sync::Arc::new(move |e| {
                seen.lock().unwrap().push(e.clone())
            })),
            ..Default::default()
        },
    );
    let failed = engine.wait_loaded().await;
    let names: Vec<&str> = failed.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(
        names,
        [
            "corrupt",
            "truncated",
            "wrong-arch",
            "zero-align",
            "no-values",
            "huge-dims"
        ],
        "{failed:?}"
    );
    assert_eq!(
        engine.models().await.unwrap(),
        ["tiny-qwen2", "tiny-llama", "tiny-q8", "tiny-q4"]
    );
    // Quantized weights generate too.
    for model in ["tiny-q8", "tiny-q4"] {
        let mut r = greedy("hello", 5);
        r.model = model.into();
        let events: Vec<EngineEvent> = engine
            .generate(r)
            .await
            .unwrap()
            .map(|e| e.unwrap())
            .collect()
            .await;
        assert!(
            matches!(events.last(), Some(EngineEvent::Finished { usage: Some(u), .. }) if u.completion_tokens >= 1),
            "{events:?}"
        );
    }
    assert_eq!(engine.default_model().as_deref(), Some("tiny-qwen2"));
    // The family comes from the chat template (`<tool_call>`), not the name.
    assert_eq!(engine.family("tiny-llama"), Family::Hermes);
    assert_eq!(events.lock().unwrap().len(), 2 * paths.len());
}

async fn chat(base: &str, body: Json) -> Json {
    chat_with_key(base, None, body).await
}

/// A chat completion that must succeed, with `key` as the bearer token when
/// given (the service maps keys to clients).
async fn chat_with_key(base: &str, key: Option<&str>, body: Json) -> Json {
    let mut request = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .json(&body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let resp = request.send().await.unwrap();
    let status = resp.status();
    let v: Json = resp.json().await.unwrap();
    assert!(status.is_success(), "{status}: {v}");
    v
}

#[tokio::test]
async fn generates_through_the_http_api_deterministically() {
    limit_threads();
    let dir = tempfile::tempdir().unwrap();
    let mut paths = vec![
        TinyModel::new("qwen2").write(dir.path(), "tiny-qwen2"),
        TinyModel::new("llama").write(dir.path(), "tiny-llama"),
    ];
    paths.extend(bad_files(dir.path()));
    let svc = common::start(config(paths)).await;
    let http = reqwest::Client::new();

    // Only the models that loaded are listed; the broken ones are not.
    let models: Json = http
        .get(format!("{}/v1/models", svc.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["tiny-qwen2", "tiny-llama"]);
    assert_eq!(models["data"][0]["owned_by"], "local");
    // What a client configures itself with, read from the file.
    let qwen = &models["data"][0];
    assert_eq!(qwen["architecture"], "qwen2");
    assert_eq!(qwen["context_length"], local_common::CONTEXT);
    assert_eq!(qwen["tools"], true, "its template renders tools");
    assert_eq!(qwen["reasoning"], false);
    assert_eq!(qwen["vision"], false);
    assert!(qwen.get("note").is_none(), "{qwen}");

    for model in ["tiny-qwen2", "tiny-llama"] {
        let body = json!({
            "model": model,
            "messages": [{"role": "user", "content": "what is the weather in paris?"}],
            "max_tokens": 12, "temperature": 1.0, "seed": 7,
        });
        let a = chat(&svc.base, body.clone()).await;
        let b = chat(&svc.base, body.clone()).await;
        let text = |v: &Json| v["choices"][0]["message"]["content"].clone();
        assert_eq!(text(&a), text(&b), "same seed, same output ({model})");
        let usage = &a["usage"];
        assert!(usage["prompt_tokens"].as_u64().unwrap() > 5, "{usage}");
        let completion = usage["completion_tokens"].as_u64().unwrap();
        assert!((1..=12).contains(&completion), "{usage}");
        if a["choices"][0]["finish_reason"] == "length" {
            assert_eq!(completion, 12, "{a}");
        }

        // The stream carries the same text, piece by piece.
        let mut stream_body = body.clone();
        stream_body["stream"] = json!(true);
        let resp = http
            .post(format!("{}/v1/chat/completions", svc.base))
            .json(&stream_body)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success());
        let events = common::events(&common::read_all(resp).await);
        let streamed: String = events
            .iter()
            .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(
            Json::String(streamed),
            text(&a).as_str().map_or(json!(""), |s| json!(s))
        );

        // Another seed, another sample (checked on greedy vs. sampled too).
        let mut other = body.clone();
        other["temperature"] = json!(0);
        let g1 = chat(&svc.base, other.clone()).await;
        other["seed"] = json!(99);
        let g2 = chat(&svc.base, other).await;
        assert_eq!(text(&g1), text(&g2), "greedy ignores the seed");
    }

    // Responses API on the same engine (greedy: deterministic without a seed).
    let body = json!({
        "model": "tiny-llama",
        "input": "hello there",
        "max_output_tokens": 16,
        "temperature": 0,
    });
    let mut outputs = Vec::new();
    for _ in 0..2 {
        let resp = http
            .post(format!("{}/v1/responses", svc.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let v: Json = resp.json().await.unwrap();
        assert!(status.is_success(), "{status}: {v}");
        assert!(v["usage"]["output_tokens"].as_u64().unwrap() >= 1, "{v}");
        // 16 tokens of random weights: cut short, or ended by <|im_end|>.
        if v["status"] != "completed" {
            assert_eq!(
                v["incomplete_details"]["reason"], "max_output_tokens",
                "{v}"
            );
        }
        outputs.push(v["output"][0]["content"][0]["text"].clone());
    }
    assert_eq!(outputs[0], outputs[1]);

    // A broken file is not a model; the others keep serving.
    let resp = http
        .post(format!("{}/v1/chat/completions", svc.base))
        .json(&json!({"model": "corrupt", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    // A prompt longer than the context is refused with a clear 400.
    let long = "the weather ".repeat(600);
    let resp = http
        .post(format!("{}/v1/chat/completions", svc.base))
        .json(&json!({"model": "tiny-qwen2", "messages": [{"role": "user", "content": long}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Json = resp.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("maximum context length"),
        "{v}"
    );
    svc.idle().await;
    svc.shutdown().await;
}

/// qwen3 (own head size, q/k norms) and qwen3moe (a mixture of experts)
/// from the GGUF metadata, through the real server: both APIs, same seed
/// same text; an architecture the engine does not run is refused with the
/// list of those it does.
#[tokio::test]
async fn qwen3_and_its_mixture_of_experts_generate_through_the_server() {
    limit_threads();
    let dir = tempfile::tempdir().unwrap();
    let paths = vec![
        TinyModel::new("qwen3").write(dir.path(), "tiny-qwen3"),
        TinyModel::new("qwen3moe").write(dir.path(), "tiny-qwen3moe"),
        TinyModel::with_dtype("qwen3moe", GgmlDType::Q8_0).write(dir.path(), "tiny-qwen3moe-q8"),
        TinyModel::new("qwen2")
            .set("general.architecture", Value::String("deepseek2".into()))
            .write(dir.path(), "unsupported"),
    ];
    let failures = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = failures.clone();
    let engine = LocalEngine::start(
        &paths,
        LocalOptions {
            on_load: Some(std::sync::Arc::new(move |e| {
                if let clawpen_inference::engine::local::LoadEvent::Failed { error, .. } = e {
                    seen.lock().unwrap().push(error.clone());
                }
            })),
            ..Default::default()
        },
    );
    engine.wait_loaded().await;
    let failures = failures.lock().unwrap().clone();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(
        failures[0].contains(
            "architecture 'deepseek2' is not supported (supported: llama, qwen2, qwen3, qwen3moe, gemma3, gpt-oss)"
        ),
        "{failures:?}"
    );
    drop(engine);

    let svc = common::start(config(paths)).await;
    let models: Json = reqwest::get(format!("{}/v1/models", svc.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["tiny-qwen3", "tiny-qwen3moe", "tiny-qwen3moe-q8"]);
    for model in ids {
        let body = json!({
            "model": model,
            "messages": [{"role": "user", "content": "what is the weather in paris?"}],
            "max_tokens": 10, "temperature": 1.0, "seed": 3,
        });
        let a = chat(&svc.base, body.clone()).await;
        let b = chat(&svc.base, body).await;
        let text = |v: &Json| v["choices"][0]["message"]["content"].clone();
        assert_eq!(text(&a), text(&b), "{model}: same seed, same text");
        let completion = a["usage"]["completion_tokens"].as_u64().unwrap();
        assert!((1..=10).contains(&completion), "{model}: {a}");

        let resp = reqwest::Client::new()
            .post(format!("{}/v1/responses", svc.base))
            .json(&json!({"model": model, "input": "hello there", "max_output_tokens": 6, "temperature": 0}))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{model}");
        let v: Json = resp.json().await.unwrap();
        assert!(
            v["usage"]["output_tokens"].as_u64().unwrap() >= 1,
            "{model}: {v}"
        );
    }
    svc.idle().await;
    svc.shutdown().await;
}

#[tokio::test]
async fn a_client_that_goes_away_stops_the_generation() {
    limit_threads();
    let dir = tempfile::tempdir().unwrap();
    let path = TinyModel::new("qwen2").write(dir.path(), "tiny-qwen2");
    let svc = common::start(config(vec![path])).await;
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", svc.base))
        .json(&json!({
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 400, "stream": true, "seed": 1,
            // Greedy on random weights could end at once; stop sequences
            // that never match keep it going.
            "temperature": 1.0,
        }))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    drop(resp);
    // The generation ends (gauge back to 0) well before 400 tokens would.
    svc.idle().await;
    svc.shutdown().await;
}

fn greedy(prompt: &str, max_tokens: u64) -> GenerateRequest {
    GenerateRequest {
        model: "tiny-qwen2".into(),
        messages: vec![ChatMessage {
            role: Role::User,
            content: Some(Content::Text(prompt.into())),
            ..Default::default()
        }],
        max_tokens: Some(max_tokens),
        temperature: Some(0.0),
        ..Default::default()
    }
}

/// Waits (up to 10 s) until no generation thread runs (a thread counts
/// itself out just after its stream has ended).
async fn settle(engine: &LocalEngine) {
    for _ in 0..1000 {
        if engine.stats().running == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("generations still running: {:?}", engine.stats());
}

#[tokio::test]
async fn dropping_the_stream_stops_decoding() {
    limit_threads();
    let dir = tempfile::tempdir().unwrap();
    let path = TinyModel::new("qwen2")
        .never_ending()
        .write(dir.path(), "tiny-qwen2");
    let engine = LocalEngine::start(&[path], LocalOptions::default());
    assert!(engine.wait_loaded().await.is_empty());

    // Greedy on this model never ends the turn: it would fill the channel
    // and go on to the token limit.
    let prompt = "hello";
    let events: Vec<EngineEvent> = engine
        .generate(greedy(prompt, 300))
        .await
        .unwrap()
        .map(|e| e.unwrap())
        .collect()
        .await;
    let texts = events
        .iter()
        .filter(|e| matches!(e, EngineEvent::Text(t) if !t.is_empty()))
        .count();
    assert!(texts > CHANNEL_DEPTH + 2, "{texts} pieces");
    assert!(matches!(
        events.last(),
        Some(EngineEvent::Finished {
            reason: FinishReason::Length,
            ..
        })
    ));
    settle(&engine).await;
    let before = engine.stats();

    let mut stream = engine.generate(greedy(prompt, 300)).await.unwrap();
    assert!(matches!(
        stream.next().await,
        Some(Ok(EngineEvent::Admitted { .. }))
    ));
    assert!(matches!(
        stream.next().await,
        Some(Ok(EngineEvent::Text(_)))
    ));
    drop(stream);
    settle(&engine).await;
    let after = engine.stats();
    assert_eq!(after.running, 0, "{after:?}");
    assert_eq!(after.cancelled, before.cancelled + 1, "{after:?}");
    assert_eq!(after.finished, before.finished, "{after:?}");
}

fn from(client: &str, mut r: GenerateRequest) -> GenerateRequest {
    r.client = Some(client.into());
    r
}

/// One VM floods the model; another VM's single request is served next,
/// not after the flood. Order is checked, not time: the first generation
/// holds the model (nobody reads its stream, so its decode thread blocks on
/// the full channel) until everything else is queued.
#[tokio::test]
async fn clients_take_turns_when_one_floods_the_model() {
    limit_threads();
    let dir = tempfile::tempdir().unwrap();
    let path = TinyModel::new("qwen2")
        .never_ending()
        .write(dir.path(), "tiny-qwen2");
    let engine = LocalEngine::start(&[path], LocalOptions::default());
    assert!(engine.wait_loaded().await.is_empty());

    let mut hold = engine
        .generate(from("flood", greedy("hello", 400)))
        .await
        .unwrap();
    assert!(matches!(
        hold.next().await,
        Some(Ok(EngineEvent::Admitted { queue_wait })) if queue_wait.is_zero()
    ));
    assert!(matches!(hold.next().await, Some(Ok(EngineEvent::Text(_)))));
    // Each waiting request says so first (what a Responses stream
    // announces as `response.queued`).
    let queued = |mut stream: EngineStream| async move {
        assert!(matches!(stream.next().await, Some(Ok(EngineEvent::Queued))));
        stream
    };
    let mut waiting = Vec::new();
    for i in 0..6 {
        let r = from("flood", greedy(&format!("flood {i}"), 2));
        let stream = queued(engine.generate(r).await.unwrap()).await;
        waiting.push((format!("flood{i}"), stream));
    }
    let r = from("other", greedy("other", 2));
    let stream = queued(engine.generate(r).await.unwrap()).await;
    waiting.push(("other".to_owned(), stream));
    assert_eq!(engine.stats().queued, 7);

    drop(hold);
    let mut order = Vec::new();
    for _ in 0..2000 {
        if waiting.is_empty() {
            break;
        }
        // Only the request whose turn it is has an event ready.
        let admitted = waiting
            .iter_mut()
            .position(|(_, s)| matches!(s.next().now_or_never(), Some(Some(_))));
        match admitted {
            Some(i) => {
                let (name, stream) = waiting.remove(i);
                let rest: Vec<_> = stream.collect().await;
                assert!(
                    matches!(rest.last(), Some(Ok(EngineEvent::Finished { .. }))),
                    "{name}: {rest:?}"
                );
                order.push(name);
            }
            None => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
    assert_eq!(order.len(), 7, "{order:?}");
    assert_eq!(
        order[0], "other",
        "the other VM goes first after the flood's running request: {order:?}"
    );
    let flood: Vec<&str> = order[1..].iter().map(String::as_str).collect();
    assert_eq!(
        flood,
        ["flood0", "flood1", "flood2", "flood3", "flood4", "flood5"],
        "a client's own requests keep their order"
    );
    assert_eq!(engine.stats().queued, 0);
    settle(&engine).await;
}

/// The service on a model whose greedy turn never ends, with two VMs'
/// keys (`key-a` is vm-a's, `key-b` vm-b's): for tests of who waits for
/// whom. The folder holds the model.
async fn two_vms_sharing_a_model() -> (tempfile::TempDir, common::Svc) {
    limit_threads();
    let dir = tempfile::tempdir().unwrap();
    let path = TinyModel::new("qwen2")
        .never_ending()
        .write(dir.path(), "tiny-qwen2");
    let mut cfg = config(vec![path]);
    cfg.api_keys = [("key-a", "vm-a"), ("key-b", "vm-b")]
        .into_iter()
        .map(|(k, c)| (k.to_owned(), c.to_owned()))
        .collect();
    (dir, common::start(cfg).await)
}

/// Through the HTTP API: each VM's key names its client, a request that
/// waits behind another VM's shows in the queue gauge and reports its
/// wait in the per-request record.
#[tokio::test]
async fn queue_wait_and_depth_are_in_the_metrics() {
    let (_dir, svc) = two_vms_sharing_a_model().await;
    let mut feed = svc.metrics.subscribe();
    let http = reqwest::Client::new();
    let body = |max: u64, stream: bool| {
        json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": max,
               "temperature": 0, "stream": stream})
    };
    // vm-a's long generation runs (its first token arrived) ...
    let resp = http
        .post(format!("{}/v1/chat/completions", svc.base))
        .bearer_auth("key-a")
        .json(&body(480, true))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    let mut a = resp.bytes_stream();
    a.next().await.unwrap().unwrap();
    // ... so vm-b's request waits for its turn.
    let b = tokio::spawn({
        let url = format!("{}/v1/chat/completions", svc.base);
        let b = body(2, false);
        async move {
            let r = reqwest::Client::new()
                .post(url)
                .bearer_auth("key-b")
                .json(&b)
                .send()
                .await
                .unwrap();
            r.json::<Json>().await.unwrap()
        }
    });
    common::eventually(|| svc.metrics.queued_requests() == 1, "vm-b queued").await;
    let text = svc.metrics_text().await;
    assert!(
        text.contains(r#"clawpen_inference_queued_requests{model="tiny-qwen2",client="vm-b"} 1"#),
        "{text}"
    );
    drop(a);
    let answer = b.await.unwrap();
    assert!(answer["choices"][0]["message"].is_object(), "{answer}");
    let mut records = Vec::new();
    while records.len() < 2 {
        records.push(feed.recv().await.unwrap());
    }
    let rec = |c: &str| records.iter().find(|r| r.client == c).unwrap().clone();
    // vm-a was cut off (cancelled: its record has no timings); vm-b waited.
    let rb = rec("vm-b");
    assert!(rb.queue_wait_ms.unwrap() > 0.0, "{rb:?}");
    assert!(
        rb.time_to_first_token_ms.unwrap() >= rb.queue_wait_ms.unwrap(),
        "{rb:?}"
    );
    assert_eq!(svc.metrics.queued_requests(), 0);
    let text = svc.metrics_text().await;
    assert!(
        text.contains(r#"clawpen_inference_queue_wait_seconds_count{client="vm-b"} 1"#),
        "{text}"
    );
    svc.idle().await;
    svc.shutdown().await;
}

/// Open Responses' state machine on the local engine's fair queue: a
/// streamed response that waits behind another VM's generation is
/// `queued` from `response.created` on, `response.in_progress` when its
/// turn comes, then its output; one that does not wait is `in_progress`
/// at once. The SSE framing is asserted on both.
#[tokio::test]
async fn a_response_waiting_its_turn_is_queued_then_in_progress() {
    let (_dir, svc) = two_vms_sharing_a_model().await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/responses", svc.base);
    let body = |max: u64| json!({"input": "hi", "max_output_tokens": max, "stream": true});
    // vm-a's long generation runs (its first event arrived) ...
    let a = http
        .post(&url)
        .bearer_auth("key-a")
        .json(&body(480))
        .send()
        .await
        .unwrap();
    let mut a = a.bytes_stream();
    a.next().await.unwrap().unwrap();
    // ... so vm-b's waits for its turn, which comes when vm-a goes away.
    let b = tokio::spawn({
        let (http, url) = (http.clone(), url.clone());
        async move {
            let r = http
                .post(&url)
                .bearer_auth("key-b")
                .json(&body(2))
                .send()
                .await
                .unwrap();
            common::responses_sse(r).await
        }
    });
    common::eventually(|| svc.metrics.queued_requests() == 1, "vm-b queued").await;
    drop(a);
    let events = b.await.unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds[..2],
        ["response.created", "response.queued"],
        "{kinds:?}"
    );
    assert_eq!(events[0]["response"]["status"], "queued");
    let started = kinds
        .iter()
        .position(|k| *k == "response.in_progress")
        .unwrap();
    // Keep-alives while it waits (if vm-a ran that long) repeat
    // `response.queued` (the builder's unit test shows them).
    assert!(
        kinds[1..started].iter().all(|k| *k == "response.queued"),
        "{kinds:?}"
    );
    let first_item = kinds
        .iter()
        .position(|k| *k == "response.output_item.added")
        .unwrap();
    assert!(started < first_item, "{kinds:?}");
    assert_eq!(events[started]["response"]["status"], "in_progress");
    assert_eq!(kinds.last(), Some(&"response.incomplete"), "{kinds:?}");

    // Nobody ahead: in_progress at once.
    let r = http
        .post(&url)
        .bearer_auth("key-a")
        .json(&body(2))
        .send()
        .await
        .unwrap();
    let events = common::responses_sse(r).await;
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds[..2],
        ["response.created", "response.in_progress"],
        "{kinds:?}"
    );
    assert!(!kinds.contains(&"response.queued"), "{kinds:?}");
    assert_eq!(events[0]["response"]["status"], "in_progress");
    svc.idle().await;
    svc.shutdown().await;
}

async fn chat_as(base: &str, key: &str, body: Json) -> Json {
    chat_with_key(base, Some(key), body).await
}

#[tokio::test]
async fn the_next_turn_prefills_only_its_new_tokens() {
    limit_threads();
    let dir = tempfile::tempdir().unwrap();
    let path = TinyModel::new("qwen2").write(dir.path(), "tiny-qwen2");
    let keys = |mut c: InferenceConfig| {
        c.api_keys = [("key-a", "vm-a"), ("key-b", "vm-b")]
            .into_iter()
            .map(|(k, c)| (k.to_owned(), c.to_owned()))
            .collect();
        c
    };
    let svc = common::start(keys(config(vec![path.clone()]))).await;
    let mut uncached = keys(config(vec![path]));
    uncached.prefix_cache_bytes = Some(0);
    let plain = common::start(uncached).await;
    let cached = |v: &Json| {
        v["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap()
    };
    let prompt = |v: &Json| v["usage"]["prompt_tokens"].as_u64().unwrap();
    let text = |v: &Json| v["choices"][0]["message"]["content"].clone();

    let first = json!([{"role": "user", "content": "what is the weather in paris?"}]);
    let a = chat_as(
        &svc.base,
        "key-a",
        json!({"messages": first, "max_tokens": 1, "seed": 1, "prompt_cache_key": "s1"}),
    )
    .await;
    assert_eq!(cached(&a), 0);

    // The agent replays the conversation plus its answer and a new message:
    // only the tokens after the first turn's prompt are prefilled.
    let second = json!([
        {"role": "user", "content": "what is the weather in paris?"},
        {"role": "assistant", "content": "sunny"},
        {"role": "user", "content": "and in london?"},
    ]);
    let turn = |key: &str| json!({"messages": second, "max_tokens": 8, "temperature": 0, "prompt_cache_key": key});
    let b = chat_as(&svc.base, "key-a", turn("s1")).await;
    assert_eq!(cached(&b), prompt(&a), "{b}");
    assert!(prompt(&b) > prompt(&a));

    // Same output as a service without the cache, which prefills it all.
    let fresh = chat_as(&plain.base, "key-a", turn("s1")).await;
    assert_eq!(cached(&fresh), 0, "{fresh}");
    assert_eq!(text(&fresh), text(&b));

    // Another session of the same VM reuses the longest shared prefix
    // (here all but the last token, which must be fed) ...
    let c = chat_as(&svc.base, "key-a", turn("s2")).await;
    assert_eq!(cached(&c), prompt(&b) - 1, "{c}");
    assert_eq!(text(&c), text(&b));
    // ... another VM reuses nothing: a hit would tell it by timing what
    // vm-a sent.
    let d = chat_as(&svc.base, "key-b", turn("s1")).await;
    assert_eq!(cached(&d), 0, "{d}");
    assert_eq!(text(&d), text(&b));

    // Responses reports it too.
    let resp: Json = reqwest::Client::new()
        .post(format!("{}/v1/responses", svc.base))
        .bearer_auth("key-b")
        .json(&json!({"input": second, "max_output_tokens": 2, "temperature": 0}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        resp["usage"]["input_tokens_details"]["cached_tokens"],
        json!(prompt(&b) - 1),
        "{resp}"
    );
    let metrics = svc.metrics_text().await;
    assert!(
        metrics.contains(r#"clawpen_inference_prefix_cache_hits_total{model="tiny-qwen2"} 3"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"clawpen_inference_prefix_cache_lookups_total{model="tiny-qwen2"} 5"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"clawpen_inference_cache_hit_requests_total{client="vm-a"} 2"#),
        "{metrics}"
    );
    svc.idle().await;
    svc.shutdown().await;
    plain.shutdown().await;
}

/// The cache holds at most its bound; the least recently used sequence
/// goes first.
#[tokio::test]
async fn the_prefix_cache_evicts_least_recently_used_at_its_bound() {
    limit_threads();
    let dir = tempfile::tempdir().unwrap();
    let path = TinyModel::new("qwen2").write(dir.path(), "tiny-qwen2");
    let tokenizer = {
        let mut f = std::fs::File::open(&path).unwrap();
        TextTokenizer::from_metadata(&Gguf::read(&mut f).unwrap().metadata).unwrap()
    };
    const BOUND: usize = 120;
    // 2 layers x (keys + values) x 2 KV heads x 8 dims x 4 bytes.
    let per_token =
        2 * 2 * local_common::KV_HEADS * (local_common::HIDDEN / local_common::HEADS) * 4;
    let engine = LocalEngine::start(
        &[path],
        LocalOptions {
            prefix_cache_bytes: Some((BOUND * per_token) as u64),
            ..Default::default()
        },
    );
    assert!(engine.wait_loaded().await.is_empty());
    let usage = |events: Vec<EngineEvent>| match events.last() {
        Some(EngineEvent::Finished { usage: Some(u), .. }) => *u,
        other => panic!("{other:?}"),
    };
    let run = |text: &'static str| {
        let engine = &engine;
        async move {
            let events: Vec<EngineEvent> = engine
                .generate(greedy(text, 1))
                .await
                .unwrap()
                .map(|e| e.unwrap())
                .collect()
                .await;
            usage(events)
        }
    };
    // Each conversation's sequence: its prompt (max_tokens 1 feeds nothing
    // back). The template's opening is shared by all of them.
    let head = tokenizer.encode("<|im_start|>user\n").unwrap().len() as u64;
    let a = run("the quick brown fox jumps over the lazy dog").await;
    let b = run("hello world, hello there, the answer").await;
    assert_eq!(b.cached_tokens, head);
    assert!(
        a.prompt_tokens + b.prompt_tokens <= BOUND as u64,
        "{a:?} {b:?}"
    );
    assert_eq!(
        run("the quick brown fox jumps over the lazy dog")
            .await
            .cached_tokens,
        a.prompt_tokens - 1
    );
    let stats = engine.prefix_cache_stats("tiny-qwen2").unwrap();
    assert_eq!(
        (stats.entries, stats.evictions, stats.max_tokens),
        (2, 0, BOUND as u64)
    );
    // A third pushes it over the bound: b, the least recently used, goes.
    let c = run("call the weather tool with the city name in paris").await;
    assert!(a.prompt_tokens + b.prompt_tokens + c.prompt_tokens > BOUND as u64);
    let stats = engine.prefix_cache_stats("tiny-qwen2").unwrap();
    assert_eq!(stats.evictions, 1, "{stats:?}");
    assert!(stats.tokens <= BOUND as u64, "{stats:?}");
    assert_eq!(
        run("the quick brown fox jumps over the lazy dog")
            .await
            .cached_tokens,
        a.prompt_tokens - 1
    );
    assert_eq!(
        run("hello world, hello there, the answer")
            .await
            .cached_tokens,
        head,
        "b was evicted"
    );
}

/// What the scripted model says after the prompt: a Hermes tool call.
const TOOL_CALL_SCRIPT: &[&str] = &[
    "<tool_call>",
    "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 2}}",
    "</tool_call>",
    "<|im_end|>",
];

#[tokio::test]
async fn tool_calls_parse_with_the_family_of_the_chat_template() {
    limit_threads();
    let dir = tempfile::tempdir().unwrap();
    // The file name says nothing of the family: the template decides.
    let path = TinyModel::scripted("llama", TOOL_CALL_SCRIPT).write(dir.path(), "scripted");
    let svc = common::start(config(vec![path])).await;
    let tools = json!([{"type": "function", "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string"}, "days": {"type": "integer"}}}}}]);
    let v = chat(
        &svc.base,
        json!({
            "messages": [{"role": "user", "content": "weather in paris?"}],
            "tools": tools, "temperature": 0, "max_tokens": 20,
        }),
    )
    .await;
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{v}");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather", "{v}");
    let args: Json = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"city": "Paris", "days": 2}));

    // The same through Responses: a function_call item.
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/responses", svc.base))
        .json(&json!({
            "input": "weather in paris?", "temperature": 0,
            "tools": [{"type": "function", "name": "get_weather",
                       "parameters": tools[0]["function"]["parameters"]}],
        }))
        .send()
        .await
        .unwrap();
    let r: Json = resp.json().await.unwrap();
    let item = &r["output"][0];
    assert_eq!(item["type"], "function_call", "{r}");
    assert_eq!(item["name"], "get_weather");
    // Both calls were in the model's own syntax: made, not repaired.
    let metrics = svc.metrics_text().await;
    assert!(
        metrics.contains(r#"clawpen_inference_tool_calls_total{client="anonymous"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"clawpen_inference_repaired_tool_calls_total{client="anonymous"} 0"#),
        "{metrics}"
    );
    svc.shutdown().await;
}

/// A tool schema the grammar engine cannot compile: a 400 naming the tool,
/// the path inside its schema and why; the server goes on serving.
#[tokio::test]
async fn a_tool_schema_that_cannot_be_enforced_is_a_400_naming_where() {
    limit_threads();
    let dir = tempfile::tempdir().unwrap();
    let path = TinyModel::scripted("llama", TOOL_CALL_SCRIPT).write(dir.path(), "scripted");
    let svc = common::start(config(vec![path])).await;
    let http = reqwest::Client::new();
    let tools = json!([{"type": "function", "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string"},
            "when": {"type": "object", "properties": {
                "at": {"type": "string", "pattern": "(?<=a)b"}}}}}}}]);
    let resp = http
        .post(format!("{}/v1/chat/completions", svc.base))
        .json(&json!({
            "messages": [{"role": "user", "content": "weather in paris?"}],
            "tools": tools, "tool_choice": "required", "max_tokens": 20,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Json = resp.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap_or_default();
    for part in [
        "tools[0] 'get_weather'",
        "at /properties/when/properties/at",
        "look-around",
    ] {
        assert!(message.contains(part), "{part:?} missing: {message}");
    }
    assert!(!message.contains("%json"), "the grammar echo: {message}");
    // the next request is served
    let v = chat(
        &svc.base,
        json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}),
    )
    .await;
    assert!(v["choices"][0]["message"].is_object(), "{v}");
    svc.shutdown().await;
}

/// What OpenClaw replays on a later turn (its `openai-responses`
/// transport, 2026.9.6): a developer message, function calls with item ids,
/// `async` and no `status`, call ids clawpen never issued, reasoning with
/// `encrypted_content` and an empty summary, assistant text with
/// annotations. All of it is read; an image for a text-only model is a 400
/// that says so, never an answer that pretends to have seen it.
#[tokio::test]
async fn what_openclaw_replays_is_accepted_and_an_image_for_a_text_model_is_a_clear_400() {
    limit_threads();
    let dir = tempfile::tempdir().unwrap();
    let path = TinyModel::scripted("llama", &["done", "<|im_end|>"]).write(dir.path(), "scripted");
    let svc = common::start(config(vec![path])).await;
    let http = reqwest::Client::new();
    let replay = json!([
        {"type": "message", "role": "developer",
         "content": [{"type": "input_text", "text": "You are an agent."}]},
        {"type": "message", "role": "user",
         "content": [{"type": "input_text", "text": "[Mon 2026-12-07 10:29 UTC] write it"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAAB-opaque"},
        {"type": "function_call", "id": "fc_1", "call_id": "call_9f|fc_1_sanitised-id",
         "name": "write", "async": true, "arguments": "{\"path\":\"a.txt\",\"content\":\"x\"}"},
        {"type": "function_call_output", "call_id": "call_9f|fc_1_sanitised-id",
         "output": "Successfully wrote 1 bytes to a.txt"},
        {"type": "message", "role": "assistant", "id": "msg_0",
         "content": [{"type": "output_text", "text": "Wrote it.", "annotations": []}]},
        {"type": "reasoning", "summary": []},
        {"type": "message", "role": "user",
         "content": [{"type": "input_text", "text": "thanks"}]},
    ]);
    let resp = http
        .post(format!("{}/v1/responses", svc.base))
        .json(
            &json!({"input": replay, "store": true, "max_output_tokens": 8,
                      "prompt_cache_key": "S1:0"}),
        )
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body: Json = resp.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "completed", "{body}");

    let with_image = json!([{"type": "message", "role": "user", "content": [
        {"type": "input_text", "text": "what is in this picture?"},
        {"type": "input_image", "detail": "auto",
         "image_url": "data:image/png;base64,iVBORw0KGgo="}]}]);
    let resp = http
        .post(format!("{}/v1/responses", svc.base))
        .json(&json!({"input": with_image, "max_output_tokens": 8}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Json = resp.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert_eq!(body["error"]["param"], "input[0].content[1]", "{body}");
    assert!(
        message.contains("input_image") && message.contains("reads text only"),
        "{body}"
    );
    svc.shutdown().await;
}

/// Damaged copies of a good file (bytes overwritten all over the header
/// and metadata, the file cut at many lengths) load or fail with an error;
/// none takes the process down.
#[test]
fn damaged_files_never_take_the_process_down() {
    limit_threads();
    let dir = tempfile::tempdir().unwrap();
    let good = TinyModel::new("llama").write(dir.path(), "good");
    let bytes = std::fs::read(&good).unwrap();
    let header_end = bytes.len() / 8;
    let path = dir.path().join("damaged.gguf");
    let mut failures = 0;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..200 {
        let mut b = bytes.clone();
        if round % 4 == 3 {
            b.truncate(next() as usize % bytes.len());
        } else {
            for _ in 0..(1 + round % 3) {
                let at = next() as usize % header_end;
                b[at] = [0x00, 0xff, 0x7f, 0x80][round % 4] ^ (next() as u8 & 0x0f);
            }
        }
        std::fs::write(&path, &b).unwrap();
        if let Err(e) = gguf::load(&path, &Device::Cpu) {
            failures += 1;
            assert!(e.to_string().contains("damaged.gguf"), "{e}");
        }
    }
    assert!(failures > 50, "only {failures} of 200 damaged files failed");
}

/// A client that replays its history and sends no `prompt_cache_key` or
/// `previous_response_id` (a plain chat client): each turn's record names
/// the conversation it continues, through either API; a new question starts
/// its own.
#[tokio::test]
async fn a_replayed_history_is_one_conversation_in_the_records() {
    limit_threads();
    let dir = tempfile::tempdir().unwrap();
    let path = TinyModel::new("qwen2").write(dir.path(), "tiny-qwen2");
    let svc = common::start(config(vec![path])).await;
    let mut feed = svc.metrics.subscribe();
    let http = reqwest::Client::new();
    let ask = |url: &'static str, body: Json| {
        let http = http.clone();
        let base = svc.base.clone();
        async move {
            let resp = http
                .post(format!("{base}{url}"))
                .json(&body)
                .send()
                .await
                .unwrap();
            assert!(resp.status().is_success(), "{}", resp.status());
            resp.json::<Json>().await.unwrap()
        }
    };
    let system = json!({"role": "system", "content": "You are terse."});
    let first_user = json!({"role": "user", "content": "name a colour"});
    let first = ask(
        "/v1/chat/completions",
        json!({"messages": [system, first_user], "max_tokens": 4, "temperature": 0}),
    )
    .await;
    let answer = first["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    ask(
        "/v1/chat/completions",
        json!({"messages": [system, first_user,
                            {"role": "assistant", "content": answer},
                            {"role": "user", "content": "another"}],
               "max_tokens": 4, "temperature": 0}),
    )
    .await;
    // The same history replayed through the Responses API, one turn on.
    ask(
        "/v1/responses",
        json!({"instructions": "You are terse.",
               "input": [first_user,
                         {"role": "assistant", "content": answer},
                         {"role": "user", "content": "another"},
                         {"role": "assistant", "content": "blue"},
                         {"role": "user", "content": "and one more"}],
               "max_output_tokens": 4, "temperature": 0, "store": false}),
    )
    .await;
    // A new question with the same system prompt: its own conversation.
    ask(
        "/v1/chat/completions",
        json!({"messages": [system, {"role": "user", "content": "name a fruit"}],
               "max_tokens": 4, "temperature": 0}),
    )
    .await;

    let mut records = Vec::new();
    while records.len() < 4 {
        let r = tokio::time::timeout(Duration::from_secs(30), feed.recv())
            .await
            .expect("a record for each request")
            .unwrap();
        records.push(r);
    }
    records.sort_by_key(|r| r.started_at_ms);
    let conversations: Vec<&str> = records
        .iter()
        .map(|r| r.conversation.as_deref().unwrap())
        .collect();
    let first_id = records[0].request_id.as_str();
    assert_eq!(
        conversations[..3],
        [first_id, first_id, first_id],
        "{records:#?}"
    );
    assert_eq!(conversations[3], records[3].request_id, "{records:#?}");
}

/// One turn of an agent's tool loop on the local engine, as OpenClaw makes
/// it (Responses, its tool, the whole history replayed with the call's
/// output): the model's Hermes call comes out as a `function_call` under the
/// tool grammar, the next request carries the tool's answer, the model
/// answers in text, and that request reuses the first one's prefix.
#[tokio::test]
async fn a_tool_loop_turn_calls_then_answers_from_the_prefix_cache() {
    limit_threads();
    let dir = tempfile::tempdir().unwrap();
    let path = TinyModel::tool_loop(
        "llama",
        "read",
        r#"{"path": "proof.txt"}"#,
        "The file says it.",
    )
    .write(dir.path(), "loop");
    let svc = common::start(config(vec![path])).await;
    let http = reqwest::Client::new();
    let read_tool = json!({"type": "function", "name": "read",
        "description": "Read a file of the workspace.",
        "parameters": {"type": "object", "properties": {"path": {"type": "string"},
                       "offset": {"type": "integer"}},
                       "required": ["path"], "additionalProperties": false}});
    let ask = |input: Json| {
        let http = http.clone();
        let url = format!("{}/v1/responses", svc.base);
        let read_tool = read_tool.clone();
        async move {
            let resp = http
                .post(url)
                .json(
                    &json!({"model": "loop", "instructions": "You are an agent.",
                              "input": input, "tools": [read_tool], "store": false}),
                )
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            resp.json::<Json>().await.unwrap()
        }
    };
    let task = json!({"role": "user", "content": "What does proof.txt say?"});
    let first = ask(json!([task])).await;
    let call = first["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["type"] == "function_call")
        .unwrap_or_else(|| panic!("no call: {first}"))
        .clone();
    assert_eq!(call["name"], "read", "{first}");
    let args: Json = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"path": "proof.txt"}));

    let second = ask(json!([task, call,
        {"type": "function_call_output", "call_id": call["call_id"], "output": "marker-41"}]))
    .await;
    let text = second["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["type"] == "message")
        .and_then(|m| m["content"][0]["text"].as_str())
        .unwrap_or_else(|| panic!("no answer: {second}"))
        .to_owned();
    assert_eq!(text, "The file says it.");
    let cached = second["usage"]["input_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    let prompt = second["usage"]["input_tokens"].as_u64().unwrap();
    assert!(
        cached * 2 > prompt,
        "the second request reused {cached} of {prompt} tokens"
    );
}

/// The prefix cache's disk tier: a long prompt's blocks are written after
/// its generation; a new engine on the same folder (a restarted service)
/// reads them back instead of computing them, and answers exactly as the
/// engine that computed everything did. A corrupted block is refused,
/// removed and recomputed: the answer stays the same, only the blocks
/// before it are reused.
#[tokio::test]
async fn the_prefix_cache_survives_a_restart_on_disk_and_refuses_a_corrupt_block() {
    use clawpen_inference::engine::local::disk_cache::{DiskTierConfig, BLOCK_TOKENS};
    limit_threads();
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = tempfile::tempdir().unwrap();
    let path = TinyModel::new("qwen2")
        .set(
            "qwen2.context_length",
            candle_core::quantized::gguf_file::Value::U32(4096),
        )
        .write(dir.path(), "tiny-qwen2");
    let prompt = "the quick brown fox jumps over the lazy dog ".repeat(40);
    let engine = |disk: bool| {
        LocalEngine::start(
            std::slice::from_ref(&path),
            LocalOptions {
                prefix_cache_disk: disk.then(|| DiskTierConfig {
                    dir: cache_dir.path().to_owned(),
                    bytes: 64 << 20,
                }),
                ..Default::default()
            },
        )
    };
    let answer = |engine: LocalEngine| {
        let prompt = prompt.clone();
        async move {
            assert!(engine.wait_loaded().await.is_empty());
            let events: Vec<EngineEvent> = engine
                .generate(greedy(&prompt, 8))
                .await
                .unwrap()
                .map(|e| e.unwrap())
                .collect()
                .await;
            let text: String = events
                .iter()
                .filter_map(|e| match e {
                    EngineEvent::Text(t) => Some(t.as_str()),
                    _ => None,
                })
                .collect();
            let usage = match events.last() {
                Some(EngineEvent::Finished { usage: Some(u), .. }) => *u,
                other => panic!("{other:?}"),
            };
            let stats = engine.prefix_cache_stats("tiny-qwen2").unwrap();
            (text, usage, stats, engine)
        }
    };
    let blocks = |dir: &std::path::Path| -> Vec<std::path::PathBuf> {
        let mut files: Vec<_> = walk(dir)
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "kv"))
            .collect();
        files.sort();
        files
    };

    let (plain, computed, _, _) = answer(engine(false)).await;
    assert_eq!(computed.cached_tokens, 0);
    let full = (computed.prompt_tokens as usize - 1) / BLOCK_TOKENS;
    assert!(
        full >= 2,
        "the prompt spans {} tokens",
        computed.prompt_tokens
    );

    // The first engine with a disk tier computes and writes.
    let (first, usage, _, first_engine) = answer(engine(true)).await;
    assert_eq!(first, plain);
    assert_eq!(usage.cached_tokens, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while blocks(cache_dir.path()).len() < full {
        assert!(
            std::time::Instant::now() < deadline,
            "blocks on disk: {:?}",
            blocks(cache_dir.path())
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(first_engine);

    // Restarted: the blocks are read back, the answer is the same.
    let (again, usage, stats, restarted) = answer(engine(true)).await;
    assert_eq!(again, plain);
    assert_eq!(
        usage.cached_tokens as usize,
        full * BLOCK_TOKENS,
        "{usage:?}"
    );
    assert_eq!(stats.disk.hits, 1, "{stats:?}");
    assert_eq!(stats.disk.loaded_tokens as usize, full * BLOCK_TOKENS);
    drop(restarted);

    // A flipped byte in the last block of the prompt's run: refused and
    // removed; the blocks before it still count.
    let files = blocks(cache_dir.path());
    assert_eq!(files.len(), full, "{files:?}");
    let (text, usage, stats, _) = {
        // Which file is the last block: the one a restart reads last is
        // not known by name, so corrupt each in turn until one shortens
        // the reuse (every file is one block of the prompt).
        let victim = &files[0];
        let mut bytes = std::fs::read(victim).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x40;
        std::fs::write(victim, bytes).unwrap();
        answer(engine(true)).await
    };
    assert_eq!(text, plain, "a corrupt block changes nothing of the answer");
    assert_eq!(stats.disk.refused_blocks, 1, "{stats:?}");
    assert!(
        (usage.cached_tokens as usize) < full * BLOCK_TOKENS,
        "{usage:?}"
    );
    assert_eq!(usage.cached_tokens as usize % BLOCK_TOKENS, 0, "{usage:?}");
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Log probabilities the local engine cannot give are refused with a 400
/// naming them, not silently left out; `logprobs: false` is no request.
#[tokio::test]
async fn logprobs_are_refused_not_ignored() {
    limit_threads();
    let dir = tempfile::tempdir().unwrap();
    let path = TinyModel::new("qwen2").write(dir.path(), "tiny-qwen2");
    let svc = common::start(config(vec![path])).await;
    for (extra, status) in [
        (json!({"logprobs": true}), 400),
        (json!({"logprobs": true, "top_logprobs": 2}), 400),
        (json!({"logprobs": false}), 200),
    ] {
        let mut body = json!({
            "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 2, "temperature": 0,
        });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let resp = reqwest::Client::new()
            .post(format!("{}/v1/chat/completions", svc.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), status, "{extra}");
        let v: Json = resp.json().await.unwrap();
        if status == 400 {
            let message = v["error"]["message"].as_str().unwrap_or_default();
            assert!(message.contains("logprobs"), "{v}");
        }
    }
    svc.shutdown().await;
}
