//! `cargo bench -p clawpen-inference --bench local`: the local (candle)
//! engine against llama.cpp (`llama-cpp-python`) on the same GGUF, one
//! table: prompt tokens/s and decode tokens/s, and the second turn of a
//! conversation with and without the KV prefix cache.
//!
//! The model is random-weight, written by `tests/clients/python/tiny_gguf.py`
//! at `BENCH_SIZES` (`N_EMBD N_LAYER N_FF`, default `512 8 1536`: ~110 MB of
//! F32); `BENCH_GGUF=PATH` benchmarks a real file instead (llama or qwen2,
//! with its own template). Threads: `RAYON_NUM_THREADS` (default 2) for
//! both. Needs `pip install llama-cpp-python gguf numpy`; the llama.cpp
//! column is skipped with a note when it is missing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use clawpen_inference::engine::local::{model_id, LocalEngine, LocalOptions};
use clawpen_inference::engine::{
    ChatMessage, Content, Engine, EngineEvent, GenerateRequest, Role, Usage,
};
use futures::StreamExt;

const DECODE: u64 = 64;

fn main() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", "2");
    }
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap();
    let py = std::env::var("CLAWPEN_PYTHON").unwrap_or_else(|_| "python3".into());
    let dir = tempfile::tempdir().unwrap();
    let path = match std::env::var_os("BENCH_GGUF") {
        Some(p) => PathBuf::from(p),
        None => {
            let p = dir.path().join("bench.gguf");
            let sizes = std::env::var("BENCH_SIZES").unwrap_or_else(|_| "512 8 1536".into());
            let script =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/clients/python/tiny_gguf.py");
            let out = Command::new(&py)
                .arg(script)
                .arg(&p)
                .args(sizes.split_whitespace())
                .output()
                .expect("run tiny_gguf.py");
            assert!(
                out.status.success(),
                "tiny_gguf.py (pip install gguf numpy): {}",
                String::from_utf8_lossy(&out.stderr)
            );
            p
        }
    };
    let size_mb = std::fs::metadata(&path).map(|m| m.len() >> 20).unwrap_or(0);
    println!(
        "model {} ({size_mb} MiB), {threads} threads",
        path.display()
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(candle_side(&path));
    llama_cpp_side(&py, &path, &threads);
}

fn conversation(turns: usize) -> Vec<ChatMessage> {
    let msg = |role, text: &str| ChatMessage {
        role,
        content: Some(Content::Text(text.into())),
        ..Default::default()
    };
    let mut m = vec![msg(
        Role::System,
        &"you are a helpful assistant. the quick brown fox jumps over the lazy dog. ".repeat(6),
    )];
    for i in 0..turns {
        m.push(msg(
            Role::User,
            &format!("what is the weather in oslo on day {i}?"),
        ));
        if i + 1 < turns {
            m.push(msg(Role::Assistant, "it is sunny."));
        }
    }
    m
}

async fn run(
    engine: &LocalEngine,
    model: &str,
    turns: usize,
    max: u64,
    key: Option<&str>,
) -> (f64, Usage) {
    let started = Instant::now();
    let mut usage = Usage::default();
    let mut s = engine
        .generate(GenerateRequest {
            model: model.into(),
            messages: conversation(turns),
            max_tokens: Some(max),
            temperature: Some(0.0),
            prompt_cache_key: key.map(str::to_owned),
            ..Default::default()
        })
        .await
        .unwrap();
    while let Some(e) = s.next().await {
        if let EngineEvent::Finished { usage: Some(u), .. } = e.unwrap() {
            usage = u;
        }
    }
    (started.elapsed().as_secs_f64(), usage)
}

async fn candle_side(path: &Path) {
    let t = Instant::now();
    let engine = LocalEngine::start(&[path.to_owned()], LocalOptions::default());
    let failed = engine.wait_loaded().await;
    assert!(failed.is_empty(), "{failed:?}");
    println!("candle: loaded in {:.2} s", t.elapsed().as_secs_f64());
    let model = model_id(path);
    run(&engine, &model, 1, 1, None).await; // warm-up
    let (t1, u1) = run(&engine, &model, 1, 1, None).await;
    let (tn, un) = run(&engine, &model, 1, DECODE + 1, None).await;
    let decoded = un.completion_tokens.saturating_sub(1).max(1);
    println!(
        "candle:    prompt {:>4} tok  {:>8.1} tok/s   decode {:>8.1} tok/s",
        u1.prompt_tokens,
        u1.prompt_tokens as f64 / t1,
        decoded as f64 / (tn - t1)
    );
    // Second turn: without a cache key (full prefill) and with one, after
    // a first turn under that key ending where the second turn continues.
    let (cold, uc) = run(&engine, &model, 2, 1, None).await;
    run(&engine, &model, 1, 1, Some("bench")).await;
    let (warm, uw) = run(&engine, &model, 2, 1, Some("bench")).await;
    println!(
        "candle:    turn 2, {} prompt tok: {:.3} s full prefill, {:.3} s with {} cached",
        uc.prompt_tokens, cold, warm, uw.cached_tokens
    );
}

const LLAMA_CPP: &str = r#"
import sys, time
from llama_cpp import Llama
path, threads, decode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
llm = Llama(model_path=path, n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False)
msgs = [{"role": "system", "content": "you are a helpful assistant. the quick brown fox jumps over the lazy dog. " * 6},
        {"role": "user", "content": "what is the weather in oslo on day 0?"}]
def run(max_tokens):
    llm.reset()
    t = time.perf_counter()
    out = llm.create_chat_completion(messages=msgs, max_tokens=max_tokens, temperature=0.0)
    return time.perf_counter() - t, out["usage"]
run(1)
t1, u1 = run(1)
tn, un = run(decode + 1)
d = max(un["completion_tokens"] - 1, 1)
print(f"llama.cpp: prompt {u1['prompt_tokens']:>4} tok  {u1['prompt_tokens'] / t1:>8.1f} tok/s   decode {d / (tn - t1):>8.1f} tok/s")
"#;

fn llama_cpp_side(py: &str, path: &Path, threads: &str) {
    let out = Command::new(py)
        .args(["-c", LLAMA_CPP])
        .arg(path)
        .args([threads, &DECODE.to_string()])
        .output();
    match out {
        Ok(o) if o.status.success() => print!("{}", String::from_utf8_lossy(&o.stdout)),
        Ok(o) => println!(
            "llama.cpp: skipped (pip install llama-cpp-python): {}",
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ),
        Err(e) => println!("llama.cpp: skipped ({py}: {e})"),
    }
}
