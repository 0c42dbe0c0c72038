//! The local engine against llama.cpp (`llama-cpp-python`) on the same
//! GGUF, written by the official `gguf` Python library (not by candle):
//! same prompt tokens, same greedy text. This pins down the parts a
//! self-written GGUF cannot: the file format as real tools write it, the
//! tokenizer rebuilt from metadata, the rotary convention of `llama`.
//!
//! Needs `pip install 'llama-cpp-python[server]' gguf numpy`; fails with
//! that instruction when missing.

mod common;
mod local_common;

use std::process::Command;

use candle_core::Device;
use clawpen_inference::engine::local::{gguf, LocalEngine, LocalOptions};
use clawpen_inference::engine::{ChatMessage, Content, Engine, EngineEvent, GenerateRequest, Role};
use common::clients::{clients_dir, python, require_python};
use common::llama::INSTALL;
use futures::StreamExt;
use local_common::limit_threads;
use serde_json::Value;

const LLAMA_CPP: &str = r#"
import json, sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=512, n_threads=2, verbose=False)
prompt = sys.argv[2]
tokens = llm.tokenize(prompt.encode(), add_bos=False, special=True)
out = llm.create_completion(prompt, max_tokens=12, temperature=0.0, top_k=1)
print(json.dumps({"tokens": tokens, "text": out["choices"][0]["text"]}))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn candle_and_llama_cpp_agree_on_the_same_gguf() {
    limit_threads();
    require_python(&["llama_cpp", "gguf", "numpy"], INSTALL);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    let out = Command::new(python())
        .arg(clients_dir().join("python/tiny_gguf.py"))
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let messages = vec![ChatMessage {
        role: Role::User,
        content: Some(Content::Text("what is the weather in oslo?".into())),
        ..Default::default()
    }];
    let loaded = gguf::load(&path, &Device::Cpu).unwrap();
    let prompt = loaded.template.render(&messages, &[], true).unwrap();
    let ours = loaded.tokenizer.encode(&prompt).unwrap();
    drop(loaded);

    let engine = LocalEngine::start(std::slice::from_ref(&path), LocalOptions::default());
    assert!(engine.wait_loaded().await.is_empty());
    let text: String = engine
        .generate(GenerateRequest {
            model: "tiny".into(),
            messages,
            max_tokens: Some(12),
            temperature: Some(0.0),
            ..Default::default()
        })
        .await
        .unwrap()
        .filter_map(|e| async move {
            match e.unwrap() {
                EngineEvent::Text(t) => Some(t),
                _ => None,
            }
        })
        .collect()
        .await;

    let path_arg = path.display().to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .args(["-c", LLAMA_CPP, &path_arg, &prompt])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: Value = serde_json::from_str(stdout.trim()).unwrap();
    let their_tokens: Vec<u32> = serde_json::from_value(theirs["tokens"].clone()).unwrap();
    assert_eq!(ours, their_tokens, "prompt tokens");
    assert!(!text.is_empty());
    // Random weights write broken UTF-8: clawpen shows each bad byte as
    // U+FFFD, llama-cpp-python drops it (`errors="ignore"`).
    let ours_text = text.replace('\u{FFFD}', "");
    assert_eq!(ours_text, theirs["text"].as_str().unwrap(), "greedy text");
}

/// [`LLAMA_CPP`] with llama.cpp's KV cache in f32 (its default is f16):
/// with f16 keys and values the logits differ by ~1e-3, enough to flip a
/// mixture of experts' routing on random weights.
const LLAMA_CPP_F32: &str = r#"
import json, sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=512, n_threads=2, verbose=False, type_k=0, type_v=0)
prompt = sys.argv[2]
tokens = llm.tokenize(prompt.encode(), add_bos=False, special=True)
out = llm.create_completion(prompt, max_tokens=12, temperature=0.0, top_k=1)
print(json.dumps({"tokens": tokens, "text": out["choices"][0]["text"]}))
"#;

/// The Qwen family and its mixture of experts, on GGUFs written by the
/// tests' own writer (random weights, real metadata): llama.cpp reads the
/// same architecture from the metadata and writes the same greedy text.
/// This is the check of expert routing against an independent
/// implementation (candle's own Qwen3-MoE runs on CUDA only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "flaky: on fresh random weights the greedy text differs from llama.cpp's in about \
            1 run of 3 (seen for qwen3); unexplained yet (near-tie vs a real divergence), see \
            ARCHITECTURE.md; run with --ignored"]
async fn candle_and_llama_cpp_agree_on_qwen2_qwen3_and_qwen3moe() {
    limit_threads();
    require_python(&["llama_cpp"], INSTALL);
    let dir = tempfile::tempdir().unwrap();
    for arch in ["qwen2", "qwen3", "qwen3moe"] {
        let path = local_common::TinyModel::new(arch).write(dir.path(), arch);
        let messages = vec![ChatMessage {
            role: Role::User,
            content: Some(Content::Text("what is the weather in oslo?".into())),
            ..Default::default()
        }];
        let loaded = gguf::load(&path, &Device::Cpu).unwrap();
        let prompt = loaded.template.render(&messages, &[], true).unwrap();
        let ours = loaded.tokenizer.encode(&prompt).unwrap();
        drop(loaded);
        let engine = LocalEngine::start(std::slice::from_ref(&path), LocalOptions::default());
        assert!(engine.wait_loaded().await.is_empty());
        let text: String = engine
            .generate(GenerateRequest {
                model: arch.into(),
                messages,
                max_tokens: Some(12),
                temperature: Some(0.0),
                ..Default::default()
            })
            .await
            .unwrap()
            .filter_map(|e| async move {
                match e.unwrap() {
                    EngineEvent::Text(t) => Some(t),
                    _ => None,
                }
            })
            .collect()
            .await;
        let path_arg = path.display().to_string();
        let out = tokio::task::spawn_blocking(move || {
            Command::new(python())
                .args(["-c", LLAMA_CPP_F32, &path_arg, &prompt])
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{arch}: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        let theirs: Value = serde_json::from_str(stdout.trim()).unwrap();
        let their_tokens: Vec<u32> = serde_json::from_value(theirs["tokens"].clone()).unwrap();
        assert_eq!(ours, their_tokens, "{arch}: prompt tokens");
        let ours_text = text.replace('\u{FFFD}', "");
        assert_eq!(
            ours_text,
            theirs["text"].as_str().unwrap(),
            "{arch}: greedy text"
        );
    }
}
