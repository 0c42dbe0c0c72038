//! `cargo bench -p clawpen-inference --bench constrained`: what grammar
//! constraints cost the local engine's decoding, on a real model.
//!
//! The same tool question is decoded, greedily, three ways, taking turns
//! per repeat: `tool_choice: "none"` (tools in the prompt, nothing
//! constrained: the baseline), `"auto"` (the lazy grammar: free until the
//! model starts a call, then constrained) and `"required"` (constrained
//! from the first token). Decode tokens/s is output tokens after the first
//! over the time after the first token; the prompt is the same every time,
//! so after the first run the prefix cache serves it and decoding
//! dominates. The table gives min / median / max tokens/s per mode and each
//! constrained mode's ratio to the baseline of the same repeat.
//!
//! Model: `BENCH_GGUF=PATH`, else the real Qwen2.5-Coder-0.5B-Instruct
//! (`scripts/test-models.sh`). `BENCH_REPS` repeats (default 5),
//! `RAYON_NUM_THREADS` threads (default 2).

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use clawpen_inference::engine::local::{model_id, LocalEngine, LocalOptions};
use clawpen_inference::engine::{
    ChatMessage, ChatTool, Content, Engine, EngineEvent, FunctionDef, GenerateRequest, Role, Usage,
};
use futures::StreamExt;
use serde_json::json;

const MODES: [&str; 3] = ["none", "auto", "required"];

fn model_path() -> PathBuf {
    if let Some(p) = std::env::var_os("BENCH_GGUF") {
        return PathBuf::from(p);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("bash")
        .arg(root.join("scripts/test-models.sh"))
        .arg("qwen2.5-coder-0.5b-instruct")
        .current_dir(&root)
        .output()
        .expect("run scripts/test-models.sh");
    assert!(out.status.success(), "scripts/test-models.sh failed");
    let line = String::from_utf8_lossy(&out.stdout).to_string();
    let path = line.split_whitespace().nth(1).expect("a model path");
    root.join(path)
}

fn tools() -> Vec<ChatTool> {
    let def = |name: &str, parameters| ChatTool {
        kind: "function".into(),
        function: FunctionDef {
            name: name.into(),
            description: Some(format!("The {name} tool.")),
            parameters: Some(parameters),
            strict: None,
        },
    };
    vec![
        def(
            "get_weather",
            json!({"type": "object", "properties": {
                "city": {"type": "string"}, "days": {"type": "integer"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                "required": ["city", "days"]}),
        ),
        def(
            "send_email",
            json!({"type": "object", "properties": {
                "to": {"type": "array", "items": {"type": "string"}},
                "subject": {"type": "string"}, "body": {"type": "string"}},
                "required": ["to", "subject", "body"]}),
        ),
    ]
}

/// One generation; (decode tokens/s, usage).
async fn run(engine: &LocalEngine, model: &str, mode: &str) -> (f64, Usage) {
    let question = "Email alice@example.com and bob@example.com with the subject \
                    'Weather' and a three-sentence summary of the weather in Paris for \
                    the next 3 days. Use a tool.";
    let started = Instant::now();
    let mut first = None;
    let mut usage = Usage::default();
    let mut s = engine
        .generate(GenerateRequest {
            model: model.into(),
            messages: vec![ChatMessage {
                role: Role::User,
                content: Some(Content::Text(question.into())),
                ..Default::default()
            }],
            tools: tools(),
            tool_choice: Some(json!(mode)),
            max_tokens: Some(96),
            temperature: Some(0.0),
            ..Default::default()
        })
        .await
        .expect("generate");
    while let Some(e) = s.next().await {
        match e.expect("event") {
            EngineEvent::Text(_) if first.is_none() => first = Some(started.elapsed()),
            EngineEvent::Finished { usage: Some(u), .. } => usage = u,
            _ => {}
        }
    }
    let decode = started.elapsed() - first.unwrap_or_default();
    let tokens = usage.completion_tokens.saturating_sub(1) as f64;
    (tokens / decode.as_secs_f64().max(1e-9), usage)
}

fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let median = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    (v[0], median, v[v.len() - 1])
}

fn main() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", "2");
    }
    let reps: usize = std::env::var("BENCH_REPS")
        .ok()
        .and_then(|r| r.parse().ok())
        .filter(|r| *r > 0)
        .unwrap_or(5);
    let path = model_path();
    let model = model_id(&path);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let engine = LocalEngine::start(std::slice::from_ref(&path), LocalOptions::default());
        // Warm-up: loads the model, fills the prefix cache, builds the
        // grammar vocabulary (once per model).
        for mode in MODES {
            run(&engine, &model, mode).await;
        }
        let mut speeds = vec![Vec::new(); MODES.len()];
        let mut tokens = vec![Vec::new(); MODES.len()];
        for _ in 0..reps {
            for (i, mode) in MODES.iter().enumerate() {
                let (tps, usage) = run(&engine, &model, mode).await;
                speeds[i].push(tps);
                tokens[i].push(usage.completion_tokens as f64);
            }
        }
        println!(
            "model {} ({} threads, {reps} repeats)",
            path.display(),
            std::env::var("RAYON_NUM_THREADS").unwrap_or_default()
        );
        println!(
            "{:<10} {:>22} {:>12} {:>26}",
            "tool_choice", "decode tok/s min/med/max", "out tokens", "÷ none (same repeat)"
        );
        for (i, mode) in MODES.iter().enumerate() {
            let (lo, med, hi) = stats(&speeds[i]);
            let (_, out, _) = stats(&tokens[i]);
            let ratio = if i == 0 {
                "baseline".to_owned()
            } else {
                let r: Vec<f64> = speeds[i]
                    .iter()
                    .zip(&speeds[0])
                    .map(|(c, b)| c / b)
                    .collect();
                let (a, b, c) = stats(&r);
                format!("{a:.3} / {b:.3} / {c:.3}")
            };
            println!(
                "{mode:<10} {:>22} {out:>12} {ratio:>26}",
                format!("{lo:.1} / {med:.1} / {hi:.1}")
            );
        }
    });
}
