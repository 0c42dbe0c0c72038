//! `cargo bench -p clawpen-inference --bench local`: the local (candle)
//! engine against llama.cpp (`llama-cpp-python`) on the same GGUF, one
//! table per model: prompt tokens/s, decode tokens/s, and the time to first
//! token of a conversation's second turn after a ~4k-token history, with
//! and without the KV prefix cache, and decode tokens/s after that history.
//!
//! Models: random weights shaped like Qwen2.5-0.5B (896 hidden, 24 layers,
//! 14/2 heads, 4864 FFN, 151936 vocabulary), written by the tests' GGUF
//! writer as Q8_0 and as llama.cpp's Q4_K_M mix (see
//! `local_common::Quant`: at 896 columns mostly Q5_0 and Q8_0);
//! `BENCH_SHAPE=1.5b` shapes them like Qwen2.5-1.5B instead (1536 hidden,
//! 28 layers, 12/2 heads, 8960 FFN: whole 256-blocks, so the Q4_K_M mix is
//! Q4_K and Q6_K; writing the two files takes a minute or two),
//! `BENCH_SHAPE=tiny` a small shape for a quick run, `BENCH_GGUF=PATH` a
//! real file (llama, qwen2, qwen3, qwen3moe, gemma3, gpt-oss).
//! `BENCH_HISTORY` sets the history length in tokens (default 4096),
//! `BENCH_DECODE` the tokens decoded per measurement (default 64).
//! `BENCH_DIR=DIR` keeps the written models in `DIR` and reuses them on
//! the next run (the 1.5B pair takes minutes to write).
//! Prompt and decode speeds are measured `BENCH_REPS` times (default 3),
//! candle and llama.cpp taking turns (llama.cpp stays up in one Python
//! process), and each model's last row gives candle's speed over
//! llama.cpp's per repeat, min / median / max: other processes' load
//! moves both alike, so the ratio is steadier than either speed.
//! Threads: `RAYON_NUM_THREADS` (default 2) for both engines. Needs
//! `pip install llama-cpp-python`; the llama.cpp rows are skipped with a
//! note when it is missing.
// A bench is test code: a panic is its failure report.
#![allow(clippy::unwrap_used)]

#[path = "../tests/local_common/mod.rs"]
mod local_common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use clawpen_inference::engine::local::template::ChatTemplate;
use clawpen_inference::engine::local::{model_id, LocalEngine, LocalOptions};
use clawpen_inference::engine::{
    ChatMessage, Content, Engine, EngineEvent, GenerateRequest, Role, Usage,
};
use futures::StreamExt;
use local_common::{Quant, Shape, TinyModel, QWEN2_5_0_5B, QWEN2_5_1_5B};

/// Tokens decoded per decode measurement (`BENCH_DECODE`, default 64).
fn decode_tokens() -> u64 {
    std::env::var("BENCH_DECODE")
        .ok()
        .and_then(|d| d.parse().ok())
        .filter(|d| *d > 0)
        .unwrap_or(64)
}

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
    let reps: usize = std::env::var("BENCH_REPS")
        .ok()
        .and_then(|r| r.parse().ok())
        .filter(|r| *r > 0)
        .unwrap_or(3);
    let temp = tempfile::tempdir().unwrap();
    let dir = std::env::var_os("BENCH_DIR").map_or_else(|| temp.path().to_owned(), PathBuf::from);
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
                Ok("1.5b") => (QWEN2_5_1_5B, "qwen2.5-1.5b-shaped"),
                _ => (QWEN2_5_0_5B, "qwen2.5-0.5b-shaped"),
            };
            [Quant::Q8_0, Quant::Q4KM]
                .into_iter()
                .map(|q| {
                    let t = Instant::now();
                    let name = format!("{label}-{}", q.name());
                    let kept = dir.join(format!("{name}.gguf"));
                    if kept.exists() {
                        eprintln!("reusing {}", kept.display());
                        return (name, kept);
                    }
                    // Renamed when whole: an interrupted write is not reused.
                    let part = TinyModel::shaped(shape, q).write(&dir, &format!("{name}.part"));
                    std::fs::rename(&part, &kept).unwrap();
                    eprintln!("wrote {name} in {:.1} s", t.elapsed().as_secs_f64());
                    (name, kept)
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
        "| model | engine | prompt tok/s (prompt tok) | decode tok/s | turn 2 prompt tok | turn 2 TTFT, no cache | turn 2 TTFT, prefix cache (cached tok) | decode tok/s after turn 2 |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (name, path) in &models {
        let size_mb = std::fs::metadata(path).map(|m| m.len() >> 20).unwrap_or(0);
        let label = format!("{name} ({size_mb} MiB)");
        let (turn1, turn2) = history_turns(path, history);
        let mut llama = LlamaCpp::start(&py, path, &threads);
        rt.block_on(compare(
            &label,
            path,
            llama.as_mut(),
            (&turn1, &turn2),
            reps,
        ));
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
    let (tok, template) = clawpen_inference::engine::local::gguf::chat_parts(path).unwrap();
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

/// One engine's numbers for one model: per repeat, prompt and decode
/// tokens/s; once, turn 2's TTFT without and with a cached prefix.
#[derive(Default)]
struct Side {
    prompt: Vec<f64>,
    decode: Vec<f64>,
    cold: f64,
    warm: f64,
    /// Decode tokens/s after turn 2's history.
    long_decode: f64,
}

/// Tokens per second after the first of `tokens`, over `seconds`: NaN
/// (printed as such) when the model stopped after one token, rather than
/// a rate of nothing.
fn after_first(tokens: u64, seconds: f64) -> f64 {
    if tokens < 2 || seconds <= 0.0 {
        return f64::NAN;
    }
    (tokens - 1) as f64 / seconds
}

/// Measures both engines on one model, interleaved (candle, llama.cpp,
/// candle, ... ) so that load from other processes hits both alike, and
/// prints their rows and the ratios.
async fn compare(
    label: &str,
    path: &Path,
    llama: Option<&mut LlamaCpp>,
    turns: (&[ChatMessage], &[ChatMessage]),
    reps: usize,
) {
    let (turn1, turn2) = turns;
    let t = Instant::now();
    let engine = LocalEngine::start(&[path.to_owned()], LocalOptions::default());
    let failed = engine.wait_loaded().await;
    assert!(failed.is_empty(), "{failed:?}");
    eprintln!("candle: loaded in {:.2} s", t.elapsed().as_secs_f64());
    let model = model_id(path);
    let mut llama = llama;
    let (mut c, mut l) = (Side::default(), Side::default());
    // Each candle measurement from its own client: the prefix cache is per
    // client, so nothing is reused unless meant to be.
    run(&engine, &model, short(), 1, "warm-up").await;
    if let Some(ll) = llama.as_deref_mut() {
        ll.run(&short(), 1, true);
    }
    let mut short_tokens = 0;
    for rep in 0..reps {
        let (_, t1, u1) = run(&engine, &model, short(), 1, &format!("prompt-{rep}")).await;
        short_tokens = u1.prompt_tokens;
        c.prompt.push(u1.prompt_tokens as f64 / t1);
        let (first, tn, un) = run(
            &engine,
            &model,
            short(),
            decode_tokens() + 1,
            &format!("decode-{rep}"),
        )
        .await;
        c.decode.push(after_first(un.completion_tokens, tn - first));
        if let Some(ll) = llama.as_deref_mut() {
            // Token counts are the engine's (same tokenizer and template).
            let (_, t1, _) = ll.run(&short(), 1, true);
            l.prompt.push(short_tokens as f64 / t1);
            let (first, tn, n) = ll.run(&short(), decode_tokens() + 1, true);
            l.decode.push(after_first(n, tn - first));
        }
        eprintln!("repeat {rep} done");
    }
    // Turn 2 from a client that never sent turn 1: everything prefilled.
    let (cold, _, uc) = run(&engine, &model, turn2.to_vec(), 1, "cold").await;
    c.cold = cold;
    let cold_tokens = uc.prompt_tokens;
    // Turn 1 then turn 2 from one client: turn 2 reuses turn 1's prefix.
    run(&engine, &model, turn1.to_vec(), 1, "agent").await;
    let (warm, _, uw) = run(&engine, &model, turn2.to_vec(), 1, "agent").await;
    c.warm = warm;
    let cached_tokens = uw.cached_tokens;
    // Decoding at the end of the long history (its prefix cached again).
    let (first, tn, un) = run(
        &engine,
        &model,
        turn2.to_vec(),
        decode_tokens() + 1,
        "agent",
    )
    .await;
    c.long_decode = after_first(un.completion_tokens, tn - first);
    if let Some(ll) = llama.as_deref_mut() {
        l.cold = ll.run(turn2, 1, true).0;
        ll.run(turn1, 1, true);
        l.warm = ll.run(turn2, 1, false).0;
        let (first, tn, n) = ll.run(turn2, decode_tokens() + 1, false);
        l.long_decode = after_first(n, tn - first);
    }
    println!(
        "| {label} | candle | {:.1} ({short_tokens}) | {:.1} | {cold_tokens} | {:.2} s | {:.3} s ({cached_tokens}) | {:.1} |",
        median(&c.prompt),
        median(&c.decode),
        c.cold,
        c.warm,
        c.long_decode,
    );
    if llama.is_none() {
        println!("| {label} | llama.cpp | skipped: llama-cpp-python did not start |");
        return;
    }
    println!(
        "| {label} | llama.cpp | {:.1} | {:.1} | | {:.2} s | {:.3} s | {:.1} |",
        median(&l.prompt),
        median(&l.decode),
        l.cold,
        l.warm,
        l.long_decode,
    );
    let ratios =
        |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(a, b)| a / b).collect() };
    let spread = |r: Vec<f64>| {
        let mut r = r;
        r.sort_by(f64::total_cmp);
        format!("{:.2}x / {:.2}x / {:.2}x", r[0], median(&r), r[r.len() - 1])
    };
    println!(
        "| {label} | candle ÷ llama.cpp, min / median / max of {reps} | {} | {} | | {:.2}x faster | {:.2}x faster; cached ÷ cold {:.3} | {:.2}x |",
        spread(ratios(&c.prompt, &l.prompt)),
        spread(ratios(&c.decode, &l.decode)),
        l.cold / c.cold,
        l.warm / c.warm,
        c.warm / c.cold,
        c.long_decode / l.long_decode,
    );
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// llama.cpp in a Python process that stays up (the model is loaded
/// once): one JSON request per line on stdin, one answer per line.
/// `reset` empties its KV cache (no reuse); without it, llama-cpp-python
/// reuses the longest prefix of its last prompt (its own prefix cache, one
/// sequence).
const LLAMA_CPP: &str = r#"
import json, sys, time
from llama_cpp import Llama
path, threads = sys.argv[1], int(sys.argv[2])
llm = Llama(model_path=path, n_ctx=8192, n_threads=threads, n_threads_batch=threads, verbose=False)
print("ready", flush=True)
for line in sys.stdin:
    req = json.loads(line)
    if req["reset"]:
        llm.reset()
    # The prompt as the local engine renders it (its template), tokenized
    # by llama.cpp without another BOS.
    tokens = llm.tokenize(req["prompt"].encode(), add_bos=False, special=True)
    t = time.perf_counter()
    first, n = None, 0
    for chunk in llm.create_completion(prompt=tokens, max_tokens=req["max_tokens"], temperature=0.0, stream=True):
        n += 1
        if first is None:
            first = time.perf_counter() - t
    total = time.perf_counter() - t
    print(json.dumps({"first": first or total, "total": total, "tokens": n}), flush=True)
"#;

struct LlamaCpp {
    /// The model's chat template as the local engine renders it: both
    /// engines get the same prompt tokens.
    template: ChatTemplate,
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl LlamaCpp {
    /// `None` (with the reason on stderr) when llama-cpp-python is missing
    /// or cannot load the model.
    fn start(py: &str, path: &Path, threads: &str) -> Option<Self> {
        use std::io::BufRead;
        use std::process::Stdio;
        let mut child = Command::new(py)
            .args(["-c", LLAMA_CPP])
            .arg(path)
            .arg(threads)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| eprintln!("llama.cpp: {py}: {e}"))
            .ok()?;
        let stdin = child.stdin.take()?;
        let mut stdout = std::io::BufReader::new(child.stdout.take()?);
        let mut line = String::new();
        stdout.read_line(&mut line).ok()?;
        if line.trim() != "ready" {
            eprintln!("llama.cpp did not start (pip install llama-cpp-python)");
            let _ = child.wait();
            return None;
        }
        let (_, template) = clawpen_inference::engine::local::gguf::chat_parts(path).ok()?;
        Some(Self {
            template,
            child,
            stdin,
            stdout,
        })
    }

    /// (seconds to the first token, seconds in all, tokens written).
    fn run(&mut self, messages: &[ChatMessage], max_tokens: u64, reset: bool) -> (f64, f64, u64) {
        use std::io::{BufRead, Write};
        let prompt = self.template.render(messages, &[], true).unwrap();
        let req = serde_json::json!({"prompt": prompt, "max_tokens": max_tokens, "reset": reset});
        writeln!(self.stdin, "{req}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("llama.cpp answered {line:?}: {e}"));
        (
            v["first"].as_f64().unwrap(),
            v["total"].as_f64().unwrap(),
            v["tokens"].as_u64().unwrap(),
        )
    }
}

impl Drop for LlamaCpp {
    fn drop(&mut self) {
        // Closing stdin ends its loop.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
