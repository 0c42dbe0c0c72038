//! `cargo bench -p clawpen-inference --bench proxy`: prints two tables.
//!
//! 1. Parser throughput per model family (MB/s), fed in 4-byte pieces as
//!    an engine streams tokens.
//! 2. The proxy's overhead, in one run: the same streamed Chat Completions
//!    requests sent straight to an upstream and through clawpen,
//!    interleaved; median time to first token and decode tokens/s, and
//!    their ratio (target ≤ 1.02×). Against a llama.cpp server on a
//!    random-weight model sized like a small real one (needs
//!    `pip install 'llama-cpp-python[server]' gguf numpy`; skipped with a
//!    note when missing), and against the scripted upstream (no model
//!    time at all: the absolute cost of the proxy).
//!
//! `BENCH_ROUNDS` sets the requests per side (default 12).
// A bench is test code: a panic is its failure report.
#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use clawpen_inference::parse::{Family, ParseEvent, ParserOptions, ToolSpec};
use common::upstream::{FakeUpstream, Reply};
use futures::StreamExt;
use serde_json::{json, Value};

fn main() {
    parser_table();
    proxy_table();
}

/// A runtime of its own, so each party of the comparison (upstream,
/// clawpen, client) schedules its own timers and tasks, as separate
/// processes would.
fn runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

// ---------------------------------------------------------------- parsers

fn filler() -> String {
    "The quick brown fox checks the forecast before it jumps over the lazy dog; \
     it wants to know whether Paris will be dry for three days. "
        .repeat(16)
}

fn sample(family: Family) -> String {
    let f = filler();
    let args = r#"{"city": "Paris", "days": 3}"#;
    match family {
        Family::Hermes => format!(
            "<think>\n{f}\n</think>\n\n{f}\n<tool_call>\n{{\"name\": \"get_weather\", \"arguments\": {args}}}\n</tool_call>"
        ),
        Family::Qwen3Coder => format!(
            "{f}<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>"
        ),
        Family::Glm45 => format!(
            "<think>{f}</think>\n{f}<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n<arg_key>days</arg_key>\n<arg_value>3</arg_value>\n</tool_call>"
        ),
        Family::Harmony => format!(
            "<|channel|>analysis<|message|>{f}<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{args}<|call|>"
        ),
        Family::KimiK2 => format!(
            "<think>{f}</think>{f}<|tool_calls_section_begin|>\n<|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>{args}<|tool_call_end|>\n<|tool_calls_section_end|>"
        ),
        Family::Mistral => format!("[THINK]{f}[/THINK]{f}[TOOL_CALLS]get_weather[ARGS]{args}"),
        Family::Llama3Json => format!(
            "<|python_tag|>{{\"name\": \"get_weather\", \"parameters\": {{\"city\": \"Paris\", \"days\": 3, \"note\": \"{f}\"}}}}"
        ),
        Family::DeepSeek => format!(
            "<think>\n{f}\n</think>\n\n{f}<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{args}<｜tool▁call▁end｜><｜tool▁calls▁end｜>"
        ),
        Family::Plain => format!("<think>{f}</think>{f}"),
    }
}

fn pieces(s: &str, n: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < s.len() {
        let mut end = (start + n).min(s.len());
        while !s.is_char_boundary(end) {
            end += 1;
        }
        out.push(&s[start..end]);
        start = end;
    }
    out
}

fn parser_table() {
    let tools = vec![ToolSpec {
        name: "get_weather".into(),
        parameters: json!({"type": "object", "properties": {
            "city": {"type": "string"}, "days": {"type": "integer"}, "note": {"type": "string"}}}),
    }];
    println!("\nparser throughput (4-byte pieces, schema coercion on)");
    println!(
        "{:<12} {:>10} {:>12} {:>7}",
        "family", "output KB", "MB/s", "calls"
    );
    for family in Family::ALL {
        let text = sample(family);
        let chunks = pieces(&text, 4);
        let run = || {
            let mut p = family.parser(ParserOptions {
                tools: tools.clone(),
                ..ParserOptions::default()
            });
            let mut calls = 0;
            for c in &chunks {
                calls += count_calls(&p.feed(c));
            }
            calls + count_calls(&p.finish())
        };
        let calls = run();
        let target = Duration::from_millis(400);
        let started = Instant::now();
        let mut outputs = 0u64;
        while started.elapsed() < target {
            std::hint::black_box(run());
            outputs += 1;
        }
        let secs = started.elapsed().as_secs_f64();
        let mb = (outputs as f64 * text.len() as f64) / 1e6;
        println!(
            "{:<12} {:>10.1} {:>12.1} {:>7}",
            family.name(),
            text.len() as f64 / 1024.0,
            mb / secs,
            calls
        );
    }
}

fn count_calls(events: &[ParseEvent]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, ParseEvent::ToolCallEnd { .. }))
        .count()
}

// ------------------------------------------------------------------ proxy

/// One streamed request's timing.
struct Sample {
    ttft: Duration,
    total: Duration,
    decode_tps: f64,
    tokens: usize,
}

async fn stream_once(
    http: &reqwest::Client,
    base: &str,
    model: &str,
    prompt: &str,
    max: u32,
) -> Sample {
    let started = Instant::now();
    let resp = http
        .post(format!("{base}/chat/completions"))
        .json(
            &json!({"model": model, "stream": true, "max_tokens": max, "temperature": 0,
                      "messages": [{"role": "user", "content": prompt}]}),
        )
        .send()
        .await
        .expect("request");
    assert!(resp.status().is_success(), "{}", resp.status());
    let mut body = resp.bytes_stream();
    let mut buf = String::new();
    let (mut first, mut last) = (None, None);
    let mut tokens = 0;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.expect("body");
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let Some(data) = frame.trim().strip_prefix("data: ") else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<Value>(data) else {
                continue;
            };
            if v["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
            {
                let now = Instant::now();
                first.get_or_insert(now);
                last = Some(now);
                tokens += 1;
            }
        }
    }
    let first = first.expect("no token streamed");
    let last = last.unwrap_or(first);
    let decode = (last - first).as_secs_f64();
    Sample {
        ttft: first - started,
        total: last - started,
        decode_tps: if decode > 0.0 {
            (tokens - 1) as f64 / decode
        } else {
            0.0
        },
        tokens,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn compare(label: &str, upstream: &str, model: &str, max: u32, rounds: usize) {
    let mut cfg = common::config(upstream);
    cfg.keepalive_interval = Duration::from_secs(15);
    let svc_rt = runtime(2);
    let svc = svc_rt.block_on(common::start(cfg));
    let proxied = format!("{}/v1", svc.base);
    let (direct, through) = runtime(1).block_on(async {
        let http = reqwest::Client::new();
        // Warm both paths (connection pools, the upstream's first load).
        stream_once(&http, upstream, model, "warm up direct", max).await;
        stream_once(&http, &proxied, model, "warm up proxied", max).await;
        let (mut direct, mut through) = (Vec::new(), Vec::new());
        for i in 0..rounds {
            // Both sides get the same prompt (the same generation, so the
            // same tokens); a new one each round. Whichever goes second may
            // reuse the upstream's prefix cache, so the order alternates.
            let prompt = format!("Round {i}: what is the weather in Oslo tomorrow?");
            if i % 2 == 0 {
                direct.push(stream_once(&http, upstream, model, &prompt, max).await);
                through.push(stream_once(&http, &proxied, model, &prompt, max).await);
            } else {
                through.push(stream_once(&http, &proxied, model, &prompt, max).await);
                direct.push(stream_once(&http, upstream, model, &prompt, max).await);
            }
        }
        (direct, through)
    });
    let ttft = |s: &[Sample]| median(s.iter().map(|x| x.ttft.as_secs_f64() * 1000.0).collect());
    let total = |s: &[Sample]| median(s.iter().map(|x| x.total.as_secs_f64() * 1000.0).collect());
    let tps = |s: &[Sample]| median(s.iter().map(|x| x.decode_tps).collect());
    let toks = median(direct.iter().map(|x| x.tokens as f64).collect());
    let (td, tp) = (ttft(&direct), ttft(&through));
    let (rd, rp) = (tps(&direct), tps(&through));
    let (ad, ap) = (total(&direct), total(&through));
    println!(
        "{label:<22} {toks:>6.0} {td:>9.2} {tp:>9.2} {:>6.3}x {rd:>9.1} {rp:>9.1} {:>6.3}x {ad:>9.1} {ap:>9.1} {:>6.3}x",
        tp / td,
        rd / rp.max(f64::MIN_POSITIVE),
        ap / ad,
    );
    svc_rt.block_on(svc.shutdown());
}

fn proxy_table() {
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(12);
    println!("\nproxy overhead: streamed chat, {rounds} requests per side, medians");
    println!(
        "{:<22} {:>6} {:>9} {:>9} {:>7} {:>9} {:>9} {:>7} {:>9} {:>9} {:>7}",
        "upstream",
        "tokens",
        "ttft ms",
        "ttft ms",
        "ratio",
        "tok/s",
        "tok/s",
        "ratio",
        "total ms",
        "total ms",
        "ratio"
    );
    println!(
        "{:<22} {:>6} {:>9} {:>9} {:>7} {:>9} {:>9} {:>7} {:>9} {:>9} {:>7}",
        "", "", "direct", "clawpen", "", "direct", "clawpen", "d/c", "direct", "clawpen", ""
    );

    let llama_ok = std::process::Command::new(common::clients::python())
        .args(["-c", "import llama_cpp.server, gguf, numpy"])
        .output()
        .is_ok_and(|o| o.status.success());
    if llama_ok {
        // About 25M parameters: per-token times of a small real model on a CPU.
        let llama = common::llama::LlamaServer::start_sized(Some((512, 8, 1408)));
        compare("llama.cpp (25M, f32)", &llama.url, &llama.model, 64, rounds);
        drop(llama);
    } else {
        println!("llama.cpp: skipped ({})", common::llama::INSTALL);
    }

    // Tokens lead with their space, as BPE tokens do (the parsers hold a
    // trailing space until the next token, in case a marker follows).
    // No model time: 64 tokens as fast as the fake can send them.
    let up_rt = runtime(1);
    let text = " tok".repeat(64);
    let fake = up_rt.block_on(FakeUpstream::start(
        &["fake"],
        std::sync::Arc::new(move |_: &Value| Reply::text(&text, 4)),
    ));
    compare("scripted (no model)", &fake.url, "fake", 64, rounds);
    // A scripted model at 20 ms per token and a 200 ms prefill.
    let text = " tok".repeat(64);
    let paced = up_rt.block_on(FakeUpstream::start(
        &["paced"],
        std::sync::Arc::new(move |_: &Value| Reply {
            first_delay: Duration::from_millis(200),
            chunk_delay: Duration::from_millis(20),
            ..Reply::text(&text, 4)
        }),
    ));
    compare(
        "scripted (50 tok/s)",
        &paced.url,
        "paced",
        64,
        rounds.min(6),
    );
}
