//! The local engine against llama.cpp (`llama-cpp-python`) on the same
//! GGUF, written by the official `gguf` Python library (not by candle):
//! same prompt tokens, same greedy text. This pins down the parts a
//! self-written GGUF cannot: the file format as real tools write it, the
//! tokenizer rebuilt from metadata, the rotary convention of `llama`.
//!
//! Needs `pip install 'llama-cpp-python[server]' gguf numpy`; fails with
//! that instruction when missing.

use crate::common;
use crate::local_common;

use std::process::Command;

use candle_core::Device;
use clawpen_inference::engine::local::{gguf, LocalEngine, LocalOptions};
use clawpen_inference::engine::{ChatMessage, Content, Engine, GenerateRequest, Role};
use common::clients::{clients_dir, python, require_python};
use common::llama::INSTALL;
use local_common::limit_threads;
use serde_json::Value;

/// llama.cpp's prompt tokens and greedy text: 12 tokens or up to an end of
/// generation, by hand rather than with `create_completion`, which goes on
/// past `max_tokens` while its text ends in what may be the start of a
/// multi-byte character (its `multibyte_fix`; random weights write such
/// bytes often, and that was the 1-in-3 "divergence" this test once
/// showed). Control tokens are written out (`special=True`), as the engine
/// does for the tool-call and reasoning parsers. `argv[3] == "f32"` keeps
/// the KV cache in f32.
const LLAMA_CPP: &str = r#"
import json, sys
import llama_cpp
from llama_cpp import Llama
kv = {"type_k": 0, "type_v": 0} if sys.argv[3] == "f32" else {}
llm = Llama(model_path=sys.argv[1], n_ctx=512, n_threads=2, verbose=False, **kv)
prompt = sys.argv[2]
tokens = llm.tokenize(prompt.encode(), add_bos=False, special=True)
out = []
for t in llm.generate(tokens, top_k=1, temp=0.0, repeat_penalty=1.0):
    if llama_cpp.llama_vocab_is_eog(llm._model.vocab, t):
        break
    out.append(t)
    if len(out) == 12:
        break
text = llm.detokenize(out, prev_tokens=tokens, special=True).decode("utf-8", errors="ignore")
print(json.dumps({"tokens": tokens, "text": text}))
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
    let text = greedy_text(&engine, "tiny".into(), messages).await;

    let path_arg = path.display().to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .args(["-c", LLAMA_CPP, &path_arg, &prompt, "f16"])
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

/// The Qwen family and its mixture of experts, on GGUFs written by the
/// tests' own writer (random weights, real metadata): llama.cpp reads the
/// same architecture from the metadata and writes the same greedy text.
/// This is the check of expert routing against an independent
/// implementation (candle's own Qwen3-MoE runs on CUDA only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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
        let text = greedy_text(&engine, arch.into(), messages).await;
        let path_arg = path.display().to_string();
        let out = tokio::task::spawn_blocking(move || {
            Command::new(python())
                // f16 keys and values move the logits by ~1e-3, enough
                // to flip a mixture of experts' routing on random weights.
                .args(["-c", LLAMA_CPP, &path_arg, &prompt, "f32"])
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

/// Twelve greedy tokens of `model` on `messages`, as text.
async fn greedy_text(engine: &LocalEngine, model: String, messages: Vec<ChatMessage>) -> String {
    let stream = engine
        .generate(GenerateRequest {
            model,
            messages,
            max_tokens: Some(12),
            temperature: Some(0.0),
            ..Default::default()
        })
        .await
        .unwrap();
    local_common::generated_text(stream).await
}
