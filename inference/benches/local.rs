//! `cargo bench -p clawpen-inference --bench local`: the local (candle)
//! engine against llama.cpp (`llama-cpp-python`) on the same GGUF, one
//! table per model: prompt tokens/s, decode tokens/s, and the time to first
//! token of a conversation's second turn after a ~4k-token history, with
//! and without the KV prefix cache.
//!
//! Models: random weights shaped like Qwen2.5-0.5B (896 hidden, 24 layers,
//! 14/2 heads, 4864 FFN, 151936 vocabulary), written by the tests' GGUF
//! writer as Q8_0 and as llama.cpp's Q4_K_M mix (see
//! `local_common::Quant`); `BENCH_SHAPE=tiny` uses a small shape for a
//! quick run, `BENCH_GGUF=PATH` a real file (llama, qwen2, qwen3, qwen3moe).
//! `BENCH_HISTORY` sets the history length in tokens (default 4096).
//! Threads: `RAYON_NUM_THREADS` (default 2) for both engines. Needs
//! `pip install llama-cpp-python`; the llama.cpp rows are skipped with a
//! note when it is missing.

#[path = "../tests/local_common/mod.rs"]
mod local_common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use candle_core::quantized::gguf_file::Content as Gguf;
use clawpen_inference::engine::local::template::ChatTemplate;
use clawpen_inference::engine::local::tokenizer::TextTokenizer;
use clawpen_inference::engine::local::{model_id, LocalEngine, LocalOptions};
use clawpen_inference::engine::{
    ChatMessage, Content, Engine, EngineEvent, GenerateRequest, Role, Usage,
};
use futures::StreamExt;
use local_common::{Quant, Shape, TinyModel, QWEN2_5_0_5B};

const DECODE: u64 = 64;

fn main() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", "2");
    }
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap();
    let py = std::env::var("CLAWPEN_PYTHON").unwrap_or_else(|_| "python3".into());
    let history: usize = std::env::var("BENCH_HISTORY")
        .ok()
        .and_then(|h| h.parse().ok())
        .unwrap_or(4096);
    let dir = tempfile::tempdir().unwrap();
    let models: Vec<(String, PathBuf)> = match std::env::var_os("BENCH_GGUF") {
        Some(p) => vec![(model_id(Path::new(&p)), PathBuf::from(p))],
        None => {
            let (shape, label) = match std::env::var("BENCH_SHAPE").as_deref() {
                Ok("tiny") => (
                    Shape {
                        hidden: 256,
                        layers: 4,
                        heads: 4,
                        kv_heads: 2,
                        ffn: 768,
                        vocab: 4096,
                        context: 8192,
                    },
                    "tiny",
                ),
                _ => (QWEN2_5_0_5B, "qwen2.5-0.5b-shaped"),
            };
            [Quant::Q8_0, Quant::Q4KM]
                .into_iter()
                .map(|q| {
                    let t = Instant::now();
                    let name = format!("{label}-{}", q.name());
                    let path = TinyModel::shaped(shape, q).write(dir.path(), &name);
                    eprintln!("wrote {name} in {:.1} s", t.elapsed().as_secs_f64());
                    (name, path)
                })
                .collect()
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!("{threads} threads for both engines; TTFT = time to first token of turn 2");
    println!();
    println!(
        "| model | engine | prompt tok/s (prompt tok) | decode tok/s | turn 2 prompt tok | turn 2 TTFT, no cache | turn 2 TTFT, prefix cache (cached tok) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (name, path) in &models {
        let size_mb = std::fs::metadata(path).map(|m| m.len() >> 20).unwrap_or(0);
        let label = format!("{name} ({size_mb} MiB)");
        let (turn1, turn2) = history_turns(path, history);
        let short_tokens = rt.block_on(candle_side(&label, path, &turn1, &turn2));
        llama_cpp_side(&label, &py, path, &threads, &turn1, &turn2, short_tokens);
    }
}

fn msg(role: Role, text: &str) -> ChatMessage {
    ChatMessage {
        role,
        content: Some(Content::Text(text.into())),
        ..Default::default()
    }
}

fn short() -> Vec<ChatMessage> {
    vec![
        msg(
            Role::System,
            &"you are a helpful assistant. the quick brown fox jumps over the lazy dog. ".repeat(6),
        ),
        msg(Role::User, "what is the weather in oslo on day 0?"),
    ]
}

/// An agent's conversation of about `tokens` tokens (turn 1: ending in a
/// user message) and its next turn (turn 1 + the answer + a new message),
/// measured with the model's own tokenizer and template.
fn history_turns(path: &Path, tokens: usize) -> (Vec<ChatMessage>, Vec<ChatMessage>) {
    let mut f = std::fs::File::open(path).unwrap();
    let md = Gguf::read(&mut f).unwrap().metadata;
    let tok = TextTokenizer::from_metadata(&md).unwrap();
    let src = md
        .get("tokenizer.chat_template")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_else(|| clawpen_inference::engine::local::gguf::DEFAULT_TEMPLATE.into());
    let template = ChatTemplate::new(&src, tok.bos_token(), tok.eos_token()).unwrap();
    let count = |m: &[ChatMessage]| {
        let text = template.render(m, &[], true).unwrap();
        tok.encode(&text).unwrap().len()
    };
    let mut turn1 = vec![msg(
        Role::System,
        "you are an agent. call tools to answer; tool results follow.",
    )];
    let mut i = 0;
    loop {
        turn1.push(msg(
            Role::User,
            &format!(
                "step {i}: read the file notes/{i}.txt and tell me what the weather in oslo is."
            ),
        ));
        if count(&turn1) >= tokens {
            break;
        }
        turn1.push(msg(
            Role::Assistant,
            &format!("the file notes/{i}.txt says: the quick brown fox jumps over the lazy dog; it is sunny in oslo, 21 degrees, wind from the west."),
        ));
        i += 1;
    }
    let mut turn2 = turn1.clone();
    turn2.push(msg(Role::Assistant, "it is sunny."));
    turn2.push(msg(Role::User, "and tomorrow?"));
    (turn1, turn2)
}

/// Runs one request; returns (seconds to the first token, seconds in all,
/// usage).
async fn run(
    engine: &LocalEngine,
    model: &str,
    messages: Vec<ChatMessage>,
    max: u64,
    client: &str,
) -> (f64, f64, Usage) {
    let started = Instant::now();
    let mut first = None;
    let mut usage = Usage::default();
    let mut s = engine
        .generate(GenerateRequest {
            model: model.into(),
            messages,
            max_tokens: Some(max),
            temperature: Some(0.0),
            client: Some(client.into()),
            ..Default::default()
        })
        .await
        .unwrap();
    while let Some(e) = s.next().await {
        match e.unwrap() {
            EngineEvent::Text(_) if first.is_none() => first = Some(started.elapsed()),
            EngineEvent::Finished { usage: Some(u), .. } => usage = u,
            _ => {}
        }
    }
    let total = started.elapsed().as_secs_f64();
    (first.map_or(total, |d| d.as_secs_f64()), total, usage)
}

/// Prints candle's row; returns the short prompt's token count.
async fn candle_side(
    label: &str,
    path: &Path,
    turn1: &[ChatMessage],
    turn2: &[ChatMessage],
) -> u64 {
    let t = Instant::now();
    let engine = LocalEngine::start(&[path.to_owned()], LocalOptions::default());
    let failed = engine.wait_loaded().await;
    assert!(failed.is_empty(), "{failed:?}");
    eprintln!("candle: loaded in {:.2} s", t.elapsed().as_secs_f64());
    let model = model_id(path);
    // Each measurement from its own client: the prefix cache is per
    // client, so nothing is reused unless meant to be.
    run(&engine, &model, short(), 1, "warm-up").await;
    let (_, t1, u1) = run(&engine, &model, short(), 1, "prompt").await;
    let (first, tn, un) = run(&engine, &model, short(), DECODE + 1, "decode").await;
    let decoded = un.completion_tokens.saturating_sub(1).max(1);
    // Turn 2 from a client that never sent turn 1: everything prefilled.
    let (cold, _, uc) = run(&engine, &model, turn2.to_vec(), 1, "cold").await;
    // Turn 1 then turn 2 from one client: turn 2 reuses turn 1's prefix.
    run(&engine, &model, turn1.to_vec(), 1, "agent").await;
    let (warm, _, uw) = run(&engine, &model, turn2.to_vec(), 1, "agent").await;
    println!(
        "| {label} | candle | {:.1} ({}) | {:.1} | {} | {:.2} s | {:.3} s ({}) |",
        u1.prompt_tokens as f64 / t1,
        u1.prompt_tokens,
        decoded as f64 / (tn - first),
        uc.prompt_tokens,
        cold,
        warm,
        uw.cached_tokens
    );
    u1.prompt_tokens
}

/// The same measurements in llama.cpp: `reset()` empties its KV cache
/// (no reuse); without it, llama-cpp-python reuses the longest prefix of
/// its last prompt (its own prefix cache, one sequence).
const LLAMA_CPP: &str = r#"
import json, sys, time
from llama_cpp import Llama
path, threads, decode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
short, turn1, turn2 = (json.loads(a) for a in sys.argv[4:7])
llm = Llama(model_path=path, n_ctx=8192, n_threads=threads, n_threads_batch=threads, verbose=False)
def run(msgs, max_tokens, reset=True):
    if reset:
        llm.reset()
    t = time.perf_counter()
    first = None
    for chunk in llm.create_chat_completion(messages=msgs, max_tokens=max_tokens, temperature=0.0, stream=True):
        if first is None and chunk["choices"][0]["delta"].get("content"):
            first = time.perf_counter() - t
    total = time.perf_counter() - t
    return first or total, total
run(short, 1)
_, t1 = run(short, 1)
first, tn = run(short, decode + 1)
cold, _ = run(turn2, 1)
run(turn1, 1)
warm, _ = run(turn2, 1, reset=False)
print(json.dumps({"t1": t1, "first": first, "tn": tn, "cold": cold, "warm": warm}))
"#;

fn llama_cpp_side(
    label: &str,
    py: &str,
    path: &Path,
    threads: &str,
    turn1: &[ChatMessage],
    turn2: &[ChatMessage],
    short_tokens: u64,
) {
    let js = |m: &[ChatMessage]| serde_json::to_string(m).unwrap();
    let out = Command::new(py)
        .args(["-c", LLAMA_CPP])
        .arg(path)
        .args([threads, &DECODE.to_string()])
        .args([js(&short()), js(turn1), js(turn2)])
        .output();
    let o = match out {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            println!(
                "| {label} | llama.cpp | skipped: {} |",
                err.lines().last().unwrap_or("")
            );
            return;
        }
        Err(e) => {
            println!("| {label} | llama.cpp | skipped ({py}: {e}) |");
            return;
        }
    };
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let f = |k: &str| v[k].as_f64().unwrap();
    // Token counts are the engine's (same tokenizer and template).
    println!(
        "| {label} | llama.cpp | {:.1} | {:.1} | | {:.2} s | {:.3} s |",
        short_tokens as f64 / f("t1"),
        DECODE as f64 / (f("tn") - f("first")),
        f("cold"),
        f("warm")
    );
}
