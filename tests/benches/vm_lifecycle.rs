//! `cargo bench -p clawpen-tests --bench vm_lifecycle`: the test guest's
//! lifecycle through the real supervisor API, at 256 MiB and 1 GiB:
//! plain boot to "guest answers" (its ready marker), cold reset, warm reset,
//! named snapshot take; min/median/max of 5, and warm/cold in the same run.
//! Prints a table.

use std::time::{Duration, Instant};

use clawpen_tests::{temp_home, Up};
use reqwest::Method;
use serde_json::{json, Value};

const RUNS: usize = 5;

async fn call(up: &Up, method: Method, path: &str, body: Value) -> Duration {
    let started = Instant::now();
    let resp = up
        .request(method, path)
        .json(&body)
        .send()
        .await
        .expect("request");
    let elapsed = started.elapsed();
    let status = resp.status();
    assert!(
        status.is_success(),
        "{path}: {status}: {}",
        resp.text().await.unwrap_or_default()
    );
    elapsed
}

#[derive(Clone, Copy)]
struct Stats {
    min: f64,
    median: f64,
    max: f64,
}

fn stats(samples: &mut [Duration]) -> Stats {
    samples.sort();
    Stats {
        min: samples[0].as_secs_f64(),
        median: samples[samples.len() / 2].as_secs_f64(),
        max: samples[samples.len() - 1].as_secs_f64(),
    }
}

async fn measure(up: &Up, memory_mib: u32) -> Vec<(&'static str, Stats)> {
    let name = format!("bench-{memory_mib}");
    let vm = |verb: &str| format!("/vms/{name}/{verb}");
    call(
        up,
        Method::POST,
        "/vms",
        json!({"name": name, "image": "test-guest", "memory_mib": memory_mib}),
    )
    .await;
    // The first boot also takes the clean snapshot; not a plain boot.
    call(up, Method::POST, &vm("start"), json!({})).await;
    let mut boot = Vec::new();
    for _ in 0..RUNS {
        call(up, Method::POST, &vm("stop"), json!({})).await;
        boot.push(call(up, Method::POST, &vm("start"), json!({})).await);
    }
    let mut cold = Vec::new();
    for _ in 0..RUNS {
        cold.push(call(up, Method::POST, &vm("reset"), json!({"cold": true})).await);
    }
    let mut warm = Vec::new();
    for _ in 0..RUNS {
        warm.push(call(up, Method::POST, &vm("reset"), json!({})).await);
    }
    let mut take = Vec::new();
    for _ in 0..RUNS {
        take.push(call(up, Method::POST, &vm("snapshots"), json!({"name": "bench"})).await);
    }
    let cold = stats(&mut cold);
    let warm = stats(&mut warm);
    call(up, Method::DELETE, &format!("/vms/{name}"), json!({})).await;
    vec![
        ("plain boot", stats(&mut boot)),
        ("cold reset", cold),
        ("warm reset", warm),
        ("snapshot take", stats(&mut take)),
        (
            "warm / cold",
            Stats {
                min: warm.min / cold.min,
                median: warm.median / cold.median,
                max: warm.max / cold.max,
            },
        ),
    ]
}

#[tokio::main]
async fn main() {
    std::env::set_var("CLAWPEN_TEST_LOG", "warn");
    let home = temp_home();
    let up = Up::start(home.path(), &["--no-demo"]).expect("clawpen up");
    let mut rows = Vec::new();
    for memory in [256, 1024] {
        for (op, s) in measure(&up, memory).await {
            rows.push((memory, op, s));
        }
    }
    println!();
    println!("test guest, 1 vCPU, TCG; API call until the guest answers; {RUNS} runs each; seconds (ratio for warm / cold)");
    println!(
        "| {:>6} | {:<14} | {:>8} | {:>8} | {:>8} |",
        "memory", "operation", "min", "median", "max"
    );
    println!(
        "|{:->8}|{:-<16}|{:->10}|{:->10}|{:->10}|",
        "", "", "", "", ""
    );
    for (memory, op, s) in rows {
        println!(
            "| {:>6} | {op:<14} | {:>8.3} | {:>8.3} | {:>8.3} |",
            format!("{memory}M"),
            s.min,
            s.median,
            s.max
        );
    }
}
